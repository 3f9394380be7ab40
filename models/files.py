"""Private files: the data dir holds contact e-mails, key hashes and the secret key, so its folders are 0700 and
its files 0600 whatever the process's umask (modes are set with chmod, which the umask does not touch).

SQLite gives its -wal and -shm files the mode of the database file, so a database file made private here keeps
them private too.
"""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

DIR_MODE, FILE_MODE = 0o700, 0o600


def private_dir(path: str | Path) -> Path:
    """Make the folder if needed, and leave it 0700 (and any parent this made)."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for made in {path, *missing}:
        os.chmod(made, DIR_MODE)
    return path


def open_private(path: str | Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` of a file that is 0600 however it was made (a new file, or one made before with another mode)."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | Path, data: bytes | str) -> None:
    """Write a whole 0600 file."""
    with os.fdopen(open_private(path), "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another database, or one in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def private_sqlite(url: str) -> None:
    """Before SQLite opens a file database: make the file 0600 (new or not), and its -wal and -shm if present."""
    file = sqlite_file(url)
    if file is None or str(file).startswith("file:"):
        return
    path = str(file)
    if file.parent.is_dir():
        os.close(open_private(path, os.O_RDONLY | os.O_CREAT))
    for suffix in ("-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.chmod(path + suffix, FILE_MODE)


def make_private(root: str | Path) -> None:
    """Tighten a data dir that an older version (or another umask) left readable: every folder under ``root``
    0700 and every file 0600. Links are left alone; what this user may not change is skipped."""
    root = Path(root)
    if not root.is_dir():
        return
    for folder, _, files in os.walk(root):
        for name, mode in [(folder, DIR_MODE), *((os.path.join(folder, f), FILE_MODE) for f in files)]:
            try:
                if not os.path.islink(name):
                    os.chmod(name, mode)
            except OSError:
                pass
