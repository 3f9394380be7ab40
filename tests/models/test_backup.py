"""Backups: a consistent copy taken while a writer writes, restored into a new data dir by the command line,
serves the same matches; a damaged or incomplete backup, or a store in the way, is refused."""
from __future__ import annotations

import threading

import pytest

from matcher import cli
from matcher.engine import Engine
from matcher.settings import Settings
from matcher.tokens import secret_key
from models.backup import BackupError, backup, read_manifest
from models.enums import EntityKind
from models.schemas import MatchRequest
from models.store import Store
from tests.conftest import ORGS

ORG = EntityKind.organisations
QUERIES = ["battery storage for a municipal microgrid", "leak detection in water pipes", "remote monitoring of patients"]


def _pairs(n: int) -> list[list[dict]]:
    """n writes of two organisations each (one transaction per write)."""
    return [[{**o, "id": f"w{i}-{o['id']}", "name": f"{o['name']} {i}"} for o in (ORGS[i % 7], ORGS[(i + 3) % 7])]
            for i in range(n)]


def _matches(engine: Engine) -> list[list[tuple[str, float]]]:
    return [[(m["id"], round(m["score"], 5)) for m in engine.match(MatchRequest(query={"text": q}, k=10))["matches"]]
            for q in QUERIES]


def test_a_backup_taken_while_a_writer_writes_restores_to_the_same_matches(settings, encoder, tmp_path, monkeypatch, capsys):
    if not settings.db_url.startswith("sqlite"):
        pytest.skip("restores into a second SQLite data dir; PostgreSQL: the test below")
    source = Engine(settings, encoder=encoder).open()
    source.upsert_many(ORG, ORGS)
    source.for_tenant("other").upsert_many(ORG, ORGS[:2])
    key = secret_key(settings)
    writes, started = _pairs(30), threading.Event()

    def writer():
        for i, pair in enumerate(writes):
            source.upsert_many(ORG, pair)
            if i == 2:
                started.set()

    thread = threading.Thread(target=writer)
    thread.start()
    assert started.wait(120)
    manifest = backup(settings.db_url, tmp_path / "backup", {"secret_key": settings.data_dir / "secret_key"})
    writing = thread.is_alive()
    thread.join()
    assert writing, "the writer finished before the backup: nothing concurrent was tested"
    assert manifest["database"] == "sqlite" and set(manifest["sha256"]) == {"matcher.db", "secret_key"}

    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path / "restored"))
    monkeypatch.delenv("MATCHER_DB_URL", raising=False)
    monkeypatch.setenv("MATCHER_LOAD_DEMO", "0")
    monkeypatch.setenv("MATCHER_DEFAULT_TENANT", settings.default_tenant)
    assert cli.main(["-q", "restore", str(tmp_path / "backup")]) == 0
    assert "index snapshots rebuilt" in capsys.readouterr().out
    restored_settings = Settings.from_env(load_demo=False, auth=False)
    assert (restored_settings.index_dir / settings.default_tenant / "organisations.snapshot.npz").is_file()
    assert secret_key(restored_settings) == key
    restored = Engine(restored_settings, encoder=encoder).open()
    assert restored.store.store_uid() != source.store.store_uid()  # no snapshot of the source is taken for its own

    # The copy is the store as of one commit: whole writes, in order, and nothing torn.
    ids = {d["id"] for d in restored.store.list(ORG, limit=1000)}
    done = [all(o["id"] in ids for o in pair) for pair in writes]
    assert all(o["id"] in ids for o in ORGS) and 3 <= sum(done) < len(writes)
    assert done == sorted(done, reverse=True) and not any(o["id"] in ids for p, d in zip(writes, done) if not d for o in p)
    assert {d["id"] for d in restored.for_tenant("other").store.list(ORG)} == {o["id"] for o in ORGS[:2]}

    for pair, kept in zip(writes, done):  # the source as it was when the backup was taken
        if not kept:
            for o in pair:
                source.delete(ORG, o["id"])
    assert _matches(restored) == _matches(source)
    assert _matches(restored)[0] and restored.store.get(ORG, "voltgrid") == source.store.get(ORG, "voltgrid")


def test_a_postgresql_backup_restores_over_later_writes(settings, encoder, tmp_path, monkeypatch, capsys):
    if not settings.db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only (tests/postgres.sh): pg_dump and pg_restore")
    engine = Engine(settings, encoder=encoder).open()
    engine.upsert_many(ORG, ORGS)
    before = _matches(engine)
    assert backup(settings.db_url, tmp_path / "b")["database"] == "postgresql"
    engine.upsert_many(ORG, [p for pair in _pairs(3) for p in pair])
    engine.delete(ORG, "voltgrid")
    monkeypatch.setenv("MATCHER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MATCHER_DB_URL", settings.db_url)
    assert cli.main(["-q", "restore", str(tmp_path / "b")]) == 2  # the store is there: only with --force
    assert cli.main(["-q", "restore", "--force", str(tmp_path / "b")]) == 0
    restored = Engine(settings, encoder=encoder).open()
    assert {d["id"] for d in restored.store.list(ORG)} == {o["id"] for o in ORGS} and _matches(restored) == before


def test_a_backup_goes_to_a_new_folder_and_a_damaged_one_is_refused(settings, tmp_path, monkeypatch, capsys):
    if not settings.db_url.startswith("sqlite"):
        pytest.skip("a SQLite file to damage")
    store = Store(settings.db_url)
    store.create_all()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("something")
    with pytest.raises(BackupError, match="not an empty folder"):
        backup(settings.db_url, tmp_path / "full")
    backup(settings.db_url, tmp_path / "b")
    monkeypatch.setenv("MATCHER_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MATCHER_DB_URL", settings.db_url)
    assert cli.main(["restore", str(tmp_path / "b")]) == 2  # a store is there: only with --force
    assert "--force" in capsys.readouterr().err
    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path / "new"))
    monkeypatch.delenv("MATCHER_DB_URL")
    db = tmp_path / "b" / "matcher.db"
    db.write_bytes(db.read_bytes()[:-1] + b"\x01")
    assert cli.main(["restore", str(tmp_path / "b")]) == 2 and "checksum" in capsys.readouterr().err
    (tmp_path / "b" / "manifest.json").unlink()
    with pytest.raises(BackupError, match="not a complete backup"):
        read_manifest(tmp_path / "b")
    assert not (tmp_path / "new" / "matcher.db").exists()
    assert cli.main(["backup", str(tmp_path / "c")]) == 2 and "no store" in capsys.readouterr().err
