"""The state database as a file: its integrity check, its identity (inode), and setting a damaged one aside."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition

REPAIR_COMMAND = "mydocker system check --repair --rebuild-state"
# SQLite's companions of a WAL database: moved with it, so the set-aside copy opens with what it held.
COMPANION_SUFFIXES = ("-wal", "-shm")


class DamagedDatabase(FailedPrecondition):
    """The database file fails SQLite's integrity check, is not a database, or was deleted or replaced."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"state database {path} is damaged ({why}): run '{REPAIR_COMMAND}'")
        self.path = path
        self.why = why


class DatabaseGone(DamagedDatabase):
    """The path no longer names the file the service opened: writing on would go to an unlinked inode."""

    def __init__(self, path: Path, why: str):
        FailedPrecondition.__init__(
            self, f"state database {path} was {why} while the state service ran: run '{REPAIR_COMMAND}'"
        )
        self.path = path
        self.why = why


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite reports the file itself as broken ("file is not a database", "disk image is malformed").

    Its subclasses say other things: OperationalError is locks, I/O and a full disk; IntegrityError a constraint.
    """
    return type(error) is sqlite3.DatabaseError or "malformed" in str(error)


def integrity_check(connection: sqlite3.Connection) -> str:
    """"" when PRAGMA integrity_check finds nothing wrong, else its first complaint.

    integrity_check rather than quick_check: both read every page and check the b-trees (what a torn or
    overwritten page breaks); integrity_check also matches every index against its table and the NOT
    NULL/UNIQUE constraints. Measured (bench/state_check.py): 1.6-2.8 ms against 1.1-1.7 ms with 1,000
    containers, 20-52 ms against 12-32 ms with 10,000; once per start, cheap enough for the stronger check.
    """
    rows = connection.execute("PRAGMA integrity_check(1)").fetchall()
    first = rows[0][0] if rows else "no answer"
    return "" if first == "ok" else " ".join(str(first).split())


@dataclass(frozen=True)
class FileIdentity:
    """Device and inode of the database file the service opened."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> "FileIdentity":
        status = os.stat(path)
        return cls(status.st_dev, status.st_ino)


def check_identity(path: Path, opened: FileIdentity) -> None:
    """Raise DatabaseGone when `path` was deleted or now names another file (one stat(2), ~2 µs)."""
    try:
        now = FileIdentity.of(path)
    except FileNotFoundError:
        raise DatabaseGone(path, "deleted") from None
    if now != opened:
        raise DatabaseGone(path, "replaced by another file")


def set_aside_name(path: Path, now: float) -> Path:
    """state.db -> state.db.damaged-20261207T171133Z (UTC), or with -2, -3... when that is taken."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    candidate = path.with_name(f"{path.name}.damaged-{stamp}")
    counter = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.damaged-{stamp}-{counter}")
        counter += 1
    return candidate


def set_aside(path: Path, now: float | None = None) -> Path:
    """Rename the database and its -wal and -shm files to <name>.damaged-<time>[-wal|-shm]; returns the new path.

    Renames only, on one filesystem: nothing is copied, and a crash half-way leaves every file whole.
    The database itself goes last, so the path never names a database without its WAL.
    """
    target = set_aside_name(path, time.time() if now is None else now)
    for suffix in COMPANION_SUFFIXES:
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            os.rename(companion, f"{target}{suffix}")
    if path.exists():
        os.rename(path, target)
    return target
