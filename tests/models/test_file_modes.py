"""The data dir is 0700 and every file in it 0600 whatever the umask: the SQLite file, its -wal and -shm, index
snapshots, the secret key, the demo key."""
from __future__ import annotations

import os
import stat

import pytest

from matcher.engine import Engine
from matcher.settings import Settings
from matcher.tokens import secret_key
from models.enums import EntityKind
from tests.conftest import ORGS


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(root) -> dict[str, int]:
    found = {}
    for folder, _, files in os.walk(root):
        for path in [folder, *(os.path.join(folder, f) for f in files)]:
            found[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def test_every_file_under_the_data_dir_is_private(tmp_path, encoder, loose_umask):
    data = tmp_path / "var" / "data"  # neither folder exists yet
    settings = Settings.from_env(data_dir=data, load_demo=False, auth=False, secret_key="")
    engine = Engine(settings, encoder=encoder).open()
    engine.upsert_many(EntityKind.organisations, ORGS[:3])
    engine.for_tenant("other").upsert_many(EntityKind.organisations, ORGS[3:5])
    engine.save_snapshots()
    engine.for_tenant("other").save_snapshots()
    secret_key(settings)
    found = modes(data)
    for name in ("matcher.db", "matcher.db-wal", "matcher.db-shm", "secret_key", "index/demo/organisations.snapshot.npz",
                 "index/other/challenges.snapshot.npz"):
        assert name in found, sorted(found)
    assert {p: m for p, m in found.items() if m != (0o700 if os.path.isdir(data / p) else 0o600)} == {}
    assert stat.S_IMODE(os.stat(data.parent).st_mode) == 0o700  # made by the engine too


def test_a_data_dir_left_readable_is_tightened_when_the_engine_opens(tmp_path, encoder, loose_umask):
    data = tmp_path / "data"
    settings = Settings.from_env(data_dir=data, load_demo=False, auth=False)
    Engine(settings, encoder=encoder).open().upsert_many(EntityKind.organisations, ORGS[:2])
    for path in [data, *data.rglob("*")]:  # as an older version left it
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    (data / "notes.txt").write_text("anything else kept here")
    Engine(settings, encoder=encoder).open()
    assert set(modes(data).values()) == {0o700, 0o600}
