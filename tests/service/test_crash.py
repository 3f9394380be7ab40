"""Crash safety: kill -9 in the middle of writes, restart, and check that nothing is half done.

Real processes on a real SQLite file, killed with SIGKILL: gunicorn (master, workers, all of its process group)
during a bulk write, the batch-job worker during a job, a digest run during its mailing, and a snapshot save
before and after its rename. Where the kill must land at one exact point it is made to wait there (a hook
in a test gunicorn config, the SMTP server's handler, a patched fsync/rename) instead of guessing a delay.
"""
from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from aiosmtpd.controller import Controller

from matcher.encoder import from_bytes
from matcher.engine import KINDS, Engine
from matcher.index import VectorIndex
from matcher.jobs import submit
from matcher.settings import Settings
from models.enums import EntityKind
from models.jobs import JobStore
from models.store import Store
from tests.conftest import ORGS, ROOT
from tests.service.test_gunicorn import free_port, service_env, start_gunicorn, stop_gunicorn

ORG = EntityKind.organisations
CRASH_CONF = "tests/service/crash_gunicorn_conf.py"
THINGS = ["leak sensors", "heat pumps", "street lights", "battery packs", "bike sharing", "air quality monitors",
          "school meals", "flood barriers", "bus timetables", "solar roofs", "hospital beds", "waste sorting robots"]


def bulk_of(n: int, tag: str) -> list[dict]:
    """n small, distinct organisation profiles."""
    return [{"id": f"{tag}-{i:03d}", "name": f"{tag.title()} Works {i}", "type": "sme", "country": "DE",
             "description": f"Workshop {i} of {tag} builds {THINGS[i % len(THINGS)]} for district {i} "
                            f"and runs pilot {i * 7 + 3} with the city."} for i in range(n)]


def wait_for(predicate, timeout: float, what: str, step: float = 0.05):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def kill_service(proc, log) -> None:
    """kill -9 the gunicorn master and every process it started (one process group: its own session)."""
    assert len(group_members(proc.pid)) >= 2, "the master and its worker(s) should be running"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(lambda: not group_members(proc.pid), 10, "every gunicorn process to die")
    log.close()


def snapshot_seq(path: Path) -> int:
    with np.load(path, allow_pickle=False) as npz:
        return json.loads(npz["header"].tobytes().decode())["seq"]


def ready(base) -> dict:
    status = requests.get(f"{base}/readyz", timeout=60).json()
    assert status["ready"] is True and status["store_seq"] == status["index_seq"], status
    return status


# --- 1. the service, killed during a bulk write ------------------------------------------------------


@pytest.mark.slow
def test_service_killed_during_a_bulk_write_keeps_all_or_nothing_and_catches_up(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pause, marker = data / "pause-in-transaction", data / "in-transaction"
    env = {**service_env(data, free_port(), workers=1, job_runner=0),
           "CRASH_TEST_PAUSE_FILE": str(pause), "CRASH_TEST_MARKER_FILE": str(marker)}
    store = Store(f"sqlite:///{data / 'matcher.db'}")
    bulk = bulk_of(120, "bulk")
    ids = {o["id"] for o in bulk}

    def bulk_ids_stored() -> set[str]:
        return store.existing_ids(ORG, ids)

    # Run 1: the bulk is embedded, written, and killed inside its transaction, before the commit.
    proc, base, log = start_gunicorn(env, data / "gunicorn-1.log", conf=CRASH_CONF)
    assert requests.post(f"{base}/v1/organisations/bulk", json={"items": ORGS}, timeout=120).status_code == 200
    seq_before = store.current_seq()
    pause.touch()
    answers = []
    thread = threading.Thread(target=lambda: answers.append(_post_bulk(base, bulk)), daemon=True)
    thread.start()
    wait_for(marker.exists, 120, "the bulk to reach its transaction")
    assert marker.read_text().split()[1:] == ["organisations", "120"]  # every row written, not committed
    kill_service(proc, log)
    assert "building the indexes from the store (no snapshot" in Path(log.name).read_text()
    thread.join(30)
    assert answers and isinstance(answers[0], requests.ConnectionError), answers
    assert bulk_ids_stored() == set() and store.count(ORG) == len(ORGS) and store.current_seq() == seq_before
    pause.unlink()

    # Run 2: nothing of the bulk anywhere; this time it commits, and the service is killed right after
    # answering, long before a snapshot is rewritten (MATCHER_SNAPSHOT_EVERY=500 changes).
    proc, base, log = start_gunicorn(env, data / "gunicorn-2.log", conf=CRASH_CONF)
    status = ready(base)
    assert status["indexed"]["organisations"] == store.count(ORG) == len(ORGS)
    answer = _post_bulk(base, bulk)
    assert answer.status_code == 200 and answer.json()["count"] == len(bulk)
    kill_service(proc, log)
    assert bulk_ids_stored() == ids and store.count(ORG) == len(ORGS) + len(bulk)
    snapshot = data / "index" / store.tenant / "organisations.snapshot.npz"
    assert snapshot_seq(snapshot) < store.current_seq()  # the restart must catch up from the change log

    # Run 3: the whole bulk is stored and indexed, matched, and nothing else is.
    proc, base, log = start_gunicorn(env, data / "gunicorn-3.log", conf=CRASH_CONF)
    try:
        status = ready(base)
        assert status["indexed"] == {"organisations": store.count(ORG), "challenges": store.count(EntityKind.challenges)}
        stored = {o["id"] for o in store.list(ORG, limit=10_000)}
        target = bulk[101]
        r = requests.post(f"{base}/v1/match", json={"query": {"text": target["description"]}, "k": 50, "explain": False},
                          timeout=60)
        found = [m["id"] for m in r.json()["matches"]]
        assert found[0] == target["id"] and len(found) == 50 and set(found) <= stored
        assert "building the indexes from the store" not in Path(log.name).read_text()  # snapshot + change log
    finally:
        stop_gunicorn(proc, log)
    assert not list((data / "index").glob("*.tmp"))
    store.engine.dispose()


def _post_bulk(base, items):
    try:
        return requests.post(f"{base}/v1/organisations/bulk", json={"items": items}, timeout=300)
    except requests.RequestException as exc:
        return exc


# --- 2. index snapshots: corrupt, stale, from another store, and a save killed half-way ---------------


def _engine(data: Path, encoder, **overrides) -> Engine:
    settings = Settings.from_env(data_dir=data, load_demo=False, snapshot_every=500, **overrides)
    return Engine(settings, encoder=encoder).open()


def assert_agrees_with_store(engine: Engine) -> None:
    """Every stored entity is in its index with its stored vector, and nothing else is."""
    for kind in KINDS:
        rows = list(engine.store.vectors(kind))
        index = engine.indexes[kind]
        assert set(index.num_of) == {r.id for r in rows}
        for r in rows:
            assert index.num_of[r.id] == r.num
            np.testing.assert_allclose(index.vector(r.num), from_bytes(r.vector), atol=1e-6)
    assert engine.status()["ready"] is True


@pytest.fixture
def snapshotted(tmp_path, encoder):
    engine = _engine(tmp_path / "data", encoder)
    engine.upsert_many(ORG, ORGS)
    engine.create(EntityKind.challenges, {"id": "ch-1", "title": "Leaks", "description": "Find leaks in water pipes.",
                                          "owner_id": "aquasense"})
    engine.save_snapshots()
    return engine


def _rebuilt(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "building the indexes from the store" in r.getMessage()]


@pytest.mark.parametrize("damage", ["truncated", "bytes_flipped"])
def test_a_corrupt_snapshot_is_detected_and_rebuilt(snapshotted, encoder, caplog, damage):
    path = snapshotted.live.snapshot_path(ORG)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3] if damage == "truncated" else
                     raw[:-4096] + bytes(b ^ 0x5A for b in raw[-4096:-4000]) + raw[-4000:])
    caplog.set_level(logging.INFO, logger="matcher.live_index")
    fresh = _engine(snapshotted.settings.data_dir, encoder)
    fresh.load_indexes()
    assert _rebuilt(caplog), "the corrupt snapshot should have been reported"
    assert_agrees_with_store(fresh)
    rebuilt, seq = VectorIndex.load(path, model=fresh.live.snapshot_key(), dim=encoder.dim)  # rewritten whole
    assert seq == fresh.store.current_seq() and rebuilt.meta == fresh.indexes[ORG].meta


@pytest.mark.parametrize("staleness", ["older", "ahead_of_the_store", "another_store"])
def test_a_stale_snapshot_is_caught_up_or_rebuilt(snapshotted, encoder, tmp_path, caplog, staleness):
    data, index_dir = snapshotted.settings.data_dir, snapshotted.settings.index_dir
    old = tmp_path / "old-snapshots"
    shutil.copytree(index_dir, old)
    backup = tmp_path / "backup.db"
    with sqlite3.connect(data / "matcher.db") as src, sqlite3.connect(backup) as dst:
        src.backup(dst)
    snapshotted.create(ORG, {"id": "late", "name": "Late Co", "type": "sme", "description": "Hydrogen buses for cities."})
    snapshotted.delete(ORG, "lumen")  # a deleted entity must not come back from the old snapshot
    snapshotted.save_snapshots()

    if staleness == "older":  # the snapshot of two writes ago, put back
        shutil.rmtree(index_dir)
        shutil.copytree(old, index_dir)
    elif staleness == "ahead_of_the_store":  # the database restored from a backup older than the snapshot
        snapshotted.store.engine.dispose()
        with sqlite3.connect(backup) as src, sqlite3.connect(data / "matcher.db") as dst:
            src.backup(dst)
    else:  # another store's snapshot: same ids and sequence, other profiles, another store uid
        other = _engine(tmp_path / "other", encoder)
        other.upsert_many(ORG, [{**o, "description": f"Bakery number {i} sells bread."} for i, o in enumerate(ORGS)])
        other.create(EntityKind.challenges, {"id": "ch-1", "title": "Bread", "description": "We need flour."})
        other.create(ORG, {"id": "late", "name": "Late Co", "type": "sme", "description": "Croissants."})
        other.delete(ORG, "lumen")
        assert other.store.current_seq() == snapshotted.store.current_seq()
        other.save_snapshots()
        shutil.rmtree(index_dir)
        shutil.copytree(other.settings.index_dir, index_dir)

    caplog.set_level(logging.INFO, logger="matcher.live_index")
    fresh = _engine(data, encoder)
    fresh.load_indexes()
    assert_agrees_with_store(fresh)
    if staleness == "older":
        assert not _rebuilt(caplog)  # used, then caught up from the change log
        assert "late" in fresh.indexes[ORG].num_of and "lumen" not in fresh.indexes[ORG].num_of
    else:
        reason = "ahead of the store" if staleness == "ahead_of_the_store" else "another model or format"
        assert any(reason in m for m in _rebuilt(caplog)), caplog.text
        assert snapshot_seq(snapshotted.live.snapshot_path(ORG)) == fresh.store.current_seq()
    if staleness == "ahead_of_the_store":
        assert "lumen" in fresh.indexes[ORG].num_of and "late" not in fresh.indexes[ORG].num_of


_SAVE_AND_STOP = """
import os, sys, time
from pathlib import Path
from matcher import index
src, dst, key, dim, marker, where = sys.argv[1:]
idx, seq = index.VectorIndex.load(Path(src), model=key, dim=int(dim))
def stop():
    Path(marker).touch()
    time.sleep(600)
real_fsync, real_replace = os.fsync, os.replace
if where == "before_rename":
    os.fsync = lambda fd: (real_fsync(fd), stop())
else:
    os.replace = lambda a, b: (real_replace(a, b), stop())
idx.save(Path(dst), seq=seq, model=key)
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before_rename", "after_rename"])
def test_a_save_killed_half_way_leaves_the_old_or_the_new_snapshot(snapshotted, encoder, tmp_path, caplog, where):
    path = snapshotted.live.snapshot_path(ORG)
    old_seq = snapshot_seq(path)
    snapshotted.create(ORG, {"id": "late", "name": "Late Co", "type": "sme", "description": "Hydrogen buses for cities."})
    newer = tmp_path / "newer.npz"
    snapshotted.indexes[ORG].save(newer, seq=snapshotted.live.synced_seq, model=snapshotted.live.snapshot_key())
    marker = tmp_path / "saving"
    proc = subprocess.Popen([sys.executable, "-c", _SAVE_AND_STOP, str(newer), str(path), snapshotted.live.snapshot_key(),
                             str(encoder.dim), str(marker), where], cwd=ROOT)
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, 60, "the save to stop")
        assert marker.exists(), "the save should have stopped at the planned point"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    leftovers = list(path.parent.glob(f".{path.name}.*.tmp"))
    if where == "before_rename":
        assert snapshot_seq(path) == old_seq and [p.name for p in leftovers] == [f".{path.name}.{proc.pid}.tmp"]
        os.utime(leftovers[0], (time.time() - 120, time.time() - 120))  # a crash a while ago
    else:
        assert snapshot_seq(path) == snapshotted.live.synced_seq and leftovers == []
    caplog.set_level(logging.INFO, logger="matcher.live_index")
    fresh = _engine(snapshotted.settings.data_dir, encoder)
    fresh.load_indexes()
    assert not _rebuilt(caplog)  # whichever file it found, it was whole
    assert_agrees_with_store(fresh)
    assert not list(path.parent.glob("*.tmp"))  # the killed save's temporary file is gone


# --- 3. the batch-job worker, killed during a job ---------------------------------------------------


def _worker(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "matcher", "worker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_batch_job_whose_worker_is_killed_is_finished_by_another_exactly_once(tmp_path, encoder):
    data = tmp_path / "data"
    engine = _engine(data, encoder)
    engine.upsert_many(ORG, ORGS)
    jobs = JobStore(engine.store)
    queries = [{"text": f"{o['description']} Variant {i} for {THINGS[i % len(THINGS)]}."} for i in range(8) for o in ORGS]
    body = {"queries": queries, "k": 3, "explain": False}
    job_id = submit(engine, body)["id"]
    total = len(queries)
    env = service_env(data, free_port(), job_lease_s=2, job_poll_s=0.2)

    first = _worker(env)
    try:
        wait_for(lambda: 0 < jobs.get(job_id)["progress"]["done"] or first.poll() is not None, 180,
                 "the job to start", step=0.02)
        assert first.poll() is None, "the first worker should still be running"  # else it finished or failed
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    killed = jobs.get(job_id)
    assert killed["status"] == "running" and 0 < killed["progress"]["done"] < total, killed
    done_before = jobs.done_lines(job_id)

    reference = submit(engine, body)["id"]  # the same job, run uninterrupted by the next worker
    second = _worker(env)  # takes the killed job over once its lease (2 s) has run out
    try:
        wait_for(lambda: all(jobs.get(j)["status"] not in ("queued", "running") for j in (job_id, reference))
                 or second.poll() is not None, 300, "the second worker to finish both jobs", step=0.2)
    finally:
        second.terminate()
        second.wait(timeout=60)
    for jid in (job_id, reference):
        job = jobs.get(jid)
        assert job["status"] == "done" and job["progress"] == {"done": total, "total": total, "fraction": 1.0}, job
    results = jobs.results(job_id)
    assert [line for line, _ in results] == list(range(1, total + 1))  # each query once, none missing
    assert done_before < {line for line, _ in results}  # kept: a line done twice would break the (job, line) key
    expected = jobs.results(reference)
    assert [[(r[2], r[3]) for r in rows] for _, rows in results] == [[(r[2], r[3]) for r in rows] for _, rows in expected]
    np.testing.assert_allclose([r[7] for _, rows in results for r in rows], [r[7] for _, rows in expected for r in rows],
                               atol=2e-4)


# --- 4. a digest run, killed during its mailing -------------------------------------------------------


class KillingMailbox:
    """An SMTP server's handler that keeps what it accepts, and kill -9s the client at a planned point:
    ``kill_at_rcpt=n``: when the (n+1)th message is offered (before it is accepted);
    ``kill_at_data=n``: once the nth message is accepted, before the client hears so."""

    def __init__(self):
        self.messages: list[bytes] = []
        self.pid: int | None = None
        self.kill_at_rcpt: int | None = None
        self.kill_at_data: int | None = None
        self.lock = threading.Lock()

    def _kill(self):
        os.kill(self.pid, signal.SIGKILL)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            if self.kill_at_rcpt is not None and len(self.messages) == self.kill_at_rcpt:
                self.kill_at_rcpt = None
                self._kill()
                return "421 4.3.0 gone"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append(envelope.original_content)
            if self.kill_at_data is not None and len(self.messages) == self.kill_at_data:
                self.kill_at_data = None
                self._kill()
        return "250 Message accepted for delivery"


@pytest.mark.slow
def test_a_digest_run_killed_mid_mailing_sends_each_digest_once_when_run_again(tmp_path, encoder):
    data = tmp_path / "data"
    engine = _engine(data, encoder)
    orgs = [{**o, "email_opt_in": True, "contact_email": f"team@org-{i:02d}.example.org"}
            for i, o in enumerate(bulk_of(8, "mail"))]
    engine.upsert_many(ORG, orgs)
    recipients = {o["contact_email"]: o["id"] for o in orgs}
    mailbox, port = KillingMailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    env = service_env(data, free_port(), smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", smtp_timeout=10,
                      secret_key="test-secret", digest_min_score=0, digest_rate=20, digest_retries=0, digest_batch=5)

    def run(kill_at_rcpt=None, kill_at_data=None) -> tuple[int, str]:
        mailbox.kill_at_rcpt, mailbox.kill_at_data = kill_at_rcpt, kill_at_data
        proc = subprocess.Popen([sys.executable, "-m", "matcher", "digest"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        mailbox.pid = proc.pid
        out, _ = proc.communicate(timeout=300)
        return proc.returncode, out

    try:
        # Killed while offering the 3rd message: composed and stored as pending, never accepted.
        assert run(kill_at_rcpt=2)[0] == -signal.SIGKILL and len(mailbox.messages) == 2
        # Killed after the server accepted the 5th message, before the run could mark it sent.
        assert run(kill_at_data=5)[0] == -signal.SIGKILL and len(mailbox.messages) == 5
        rc, out = run()
        assert rc == 0, out
    finally:
        controller.stop()

    received: dict[str, list[str]] = {}
    for raw in mailbox.messages:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        received.setdefault(recipients[msg["To"].addresses[0].addr_spec], []).append(msg["Message-ID"])
    assert set(received) == set(recipients.values())  # everybody got a digest
    # Exactly one message each, except the one the server accepted as the run died: sent again, unchanged.
    doubled = {org_id: ids for org_id, ids in received.items() if len(ids) > 1}
    fifth = email.message_from_bytes(mailbox.messages[4], policy=email.policy.default)
    assert list(doubled) == [recipients[fifth["To"].addresses[0].addr_spec]] and len(mailbox.messages) == len(orgs) + 1
    assert all(len(ids) == 2 and ids[0] == ids[1] for ids in doubled.values()), doubled
    log = engine.store.digest_log()
    assert sorted(r["organisation_id"] for r in log) == sorted(recipients.values())  # one message per organisation
    assert all(r["status"] == "sent" for r in log)
    assert {r["organisation_id"]: r["message_id"] for r in log} == {o: ids[0] for o, ids in received.items()}
    assert engine.store.pending_digests() == []
