"""A full disk as one domain error: ENOSPC, EDQUOT and SQLite's "disk is full" become NoSpace naming the filesystem."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from services.common.errors import NoSpace

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# sqlite3.OperationalError.sqlite_errorcode (Python 3.11+) for "database or disk is full".
SQLITE_FULL = 13


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` says a filesystem (or a quota on it) is full."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(exc)
    return False


def mount_point(path: str | os.PathLike) -> str:
    """The mount point of the filesystem holding `path` (or its nearest existing parent): where st_dev changes."""
    current = os.path.realpath(path)
    while not os.path.exists(current) and current != "/":
        current = os.path.dirname(current)
    device = os.stat(current).st_dev
    while current != "/":
        parent = os.path.dirname(current)
        if os.stat(parent).st_dev != device:
            break
        current = parent
    return current


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def no_space_error(doing: str, path: str | os.PathLike, cause: BaseException | None = None) -> NoSpace:
    """The one-line error: what was being written, where, and what to do."""
    quota = isinstance(cause, OSError) and cause.errno == errno.EDQUOT
    what = "disk quota exceeded" if quota else "no space left on device"
    where = os.path.realpath(path)
    try:
        mount = mount_point(where)
    except OSError:
        mount = ""
    on = f"on the filesystem at {where}" if mount in ("", where) else f"under {where} (the filesystem at {mount})"
    return NoSpace(f"{what} while {doing} {on}: free space there and retry")


@contextlib.contextmanager
def converted(doing: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn a full-disk OSError or SQLite error raised inside into NoSpace; anything else passes unchanged.

    Nest them from the operation down to its steps: the innermost names the step (NoSpace itself passes).
    """
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        if is_no_space(exc):
            raise no_space_error(doing, path, exc) from exc
        raise


def release_reserve(path: Path) -> bool:
    """Delete a reserve file (space kept back for undo steps at a full disk); whether there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def make_reserve(path: Path, size: int) -> bool:
    """Create the reserve file of `size` bytes, allocated now; False (and no file) when there is no room."""
    if path.exists():
        return True
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_no_space(exc):
            return False
        raise
    return True
