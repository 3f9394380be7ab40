"""Backups of the store, taken while the service serves, and their restore.

SQLite: the online backup API copies the whole database in one step, inside one read transaction, so the copy is
the store as of one commit while writers go on (WAL readers never block them); the copy is checked
(``PRAGMA integrity_check``) and kept as one file. PostgreSQL: ``pg_dump`` (one snapshot, its custom format),
restored by ``pg_restore`` in one transaction. The connection's password goes to them in ``PGPASSWORD``, never
on a command line.

A backup is a folder (0700, files 0600): the database copy, the extra files it was given (the secret key that
signs unsubscribe links) and ``manifest.json``, written last, with every file's SHA-256: a folder without it
is not a backup, and a restore checks every file first. Index snapshots are not copied; they are rebuilt
from the restored store. A restored store gets a new ``store_uid``, so no snapshot made before (on any host)
is ever taken for its own.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from contextlib import closing
from pathlib import Path

from sqlalchemy import create_engine, inspect, update
from sqlalchemy.engine import make_url

from models.files import open_private, private_dir, private_sqlite, sqlite_file, write_private
from models.tables import sync_state
from models.times import iso, utcnow

FORMAT = 1
MANIFEST = "manifest.json"


class BackupError(ValueError):
    """A backup that cannot be made, or a folder that cannot be restored."""


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database."""
    if make_url(url).get_backend_name() != "sqlite":
        return None
    path = sqlite_file(url)
    if path is None:
        raise BackupError("an in-memory SQLite store has nothing to back up")
    return path


def backup(url: str, out_dir: str | Path, files: dict[str, Path] | None = None) -> dict:
    """Copy the store at ``url`` (and the ``files`` that exist, by name) into a new folder; returns its manifest."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out} exists and is not an empty folder: a backup goes to a new one")
    source = _sqlite_path(url)
    if source is not None and not source.is_file():
        raise BackupError(f"no store at {source}")
    private_dir(out)
    if source is not None:
        database, name = "sqlite", "matcher.db"
        _sqlite_copy(source, out / name, check=True)
    else:
        database, name = "postgresql", "matcher.dump"
        _pg("pg_dump", url, "--format=custom", "--no-owner", "--no-privileges", f"--file={out / name}")
        os.chmod(out / name, 0o600)
    for extra, path in (files or {}).items():
        if Path(path).is_file():
            write_private(out / extra, Path(path).read_bytes())
    copied = sorted(p.name for p in out.iterdir())
    manifest = {"format": FORMAT, "created_at": iso(utcnow()), "database": database, "database_file": name,
                "sha256": {f: _sha256(out / f) for f in copied}}
    write_private(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(backup_dir: str | Path) -> dict:
    """The manifest of a complete, intact backup folder (every file's checksum checked)."""
    folder = Path(backup_dir)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder} is not a complete backup: {MANIFEST} is missing or unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{folder}: backup format {manifest.get('format')!r}, this version reads {FORMAT}")
    for name, digest in manifest["sha256"].items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            raise BackupError(f"{folder / name} is missing or does not match its checksum: the backup is damaged")
    return manifest


def restore(url: str, backup_dir: str | Path, files: dict[str, Path] | None = None, *, force: bool = False) -> dict:
    """Replace the store at ``url`` with a backup (and write back the ``files`` it holds, by name); returns its
    manifest. A store that exists is replaced only with ``force``. Stop the service first: processes that hold
    indexes of the store being replaced would keep serving them."""
    folder = Path(backup_dir)
    manifest = read_manifest(folder)
    target = _sqlite_path(url)
    if (target is None) != (manifest["database"] == "postgresql"):
        raise BackupError(f"{folder} holds a {manifest['database']} backup; MATCHER_DB_URL names another kind of database")
    if not force and _has_store(url, target):
        raise BackupError("a store exists already; restoring replaces it (pass --force to do so)")
    source = folder / manifest["database_file"]
    if target is not None:
        private_dir(target.parent)
        private_sqlite(url)
        _sqlite_copy(source, target)
    else:
        _pg("pg_restore", url, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
            "--exit-on-error", str(source))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(update(sync_state).where(sync_state.c.id == 1).values(store_uid=uuid.uuid4().hex))
    finally:
        engine.dispose()
    for name, path in (files or {}).items():
        if name in manifest["sha256"]:
            private_dir(Path(path).parent)
            write_private(path, (folder / name).read_bytes())
    return manifest


def _has_store(url: str, target: Path | None) -> bool:
    if target is not None and (not target.is_file() or target.stat().st_size == 0):
        return False
    engine = create_engine(url)
    try:
        return inspect(engine).has_table(sync_state.name)
    finally:
        engine.dispose()


def _sqlite_copy(source: Path, target: Path, check: bool = False) -> None:
    """Copy a SQLite database with the backup API: one step, one read transaction on ``source`` (a consistent copy
    while others write), one write transaction on ``target`` (its readers see the old or the new database)."""
    if check:  # a new file, 0600 before SQLite opens it
        os.close(open_private(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    with closing(sqlite3.connect(source, timeout=60)) as src, closing(sqlite3.connect(target, timeout=60)) as dst:
        src.backup(dst)
        if check:
            dst.execute("PRAGMA journal_mode=DELETE")  # one file, with no -wal beside it
            result = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if result != "ok":
                raise BackupError(f"the copy fails SQLite's integrity check: {result}")


def _pg(tool: str, url: str, *args: str) -> None:
    """Run pg_dump or pg_restore on the database of a SQLAlchemy URL."""
    if shutil.which(tool) is None:
        raise BackupError(f"{tool} is not installed (Debian: apt-get install postgresql-client)")
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    dsn = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    done = subprocess.run([tool, *args, f"--dbname={dsn}"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{tool} failed: {done.stderr.strip()[-2000:]}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
