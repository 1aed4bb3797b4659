"""Small filesystem helpers: atomic JSON files, fsync of directories, tree removal, disk usage, and file locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from services.common import linux


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(final: Path, tag: str = "tmp") -> Path:
    """A hidden sibling of `final` that no listing mistakes for the real thing: .<name>.<tag>-<random>."""
    return final.with_name(f".{final.name}.{tag}-{secrets.token_hex(4)}")


def write_json_atomic(path: Path, data: object, durable: bool = True, mode: int = 0o644) -> None:
    """Write JSON to a temp file in the same dir, fsync it, rename over `path`.

    The temp file is created with `mode` (0600 for secrets): no moment where others could read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may only narrow it; say it in full
            json.dump(data, handle, sort_keys=True)
            handle.write("\n")
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def read_json(path: Path) -> object | None:
    """The JSON in `path`, or None when it is missing or unreadable (a torn or foreign file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None


def disk_usage(path: Path, one_filesystem: bool = True) -> int:
    """Bytes allocated below `path` (du -x -s --bytes of blocks), counting each hardlinked inode once."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    seen: set[tuple[int, int]] = set()
    total = 0

    def count(st: os.stat_result) -> None:
        nonlocal total
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return
            seen.add(key)
        total += st.st_blocks * 512

    count(top)
    if not stat.S_ISDIR(top.st_mode):
        return total
    stack = [os.fspath(path)]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if one_filesystem and st.st_dev != top.st_dev:
                continue
            count(st)
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return total


def remove_tree(path: Path) -> None:
    """rm -rf that never follows symlinks (shutil's fd-based rmtree); a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


class MountBelow(OSError):
    """remove_tree_within met a mount point: nothing below it was touched."""


_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree_within(top: Path) -> None:
    """rm -rf of `top` that never enters a mount point below it (MountBelow, naming it); a missing `top` is fine.

    Symlinks are removed, never followed. Depth-first with a stack of directory fds, so a deep tree
    cannot exhaust Python's recursion limit and no path is looked up twice.
    """
    try:
        info = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        top.unlink()
        return
    if linux.mount_root_type(top) is not None:
        raise MountBelow(errno.EBUSY, "a mount point: not deleting through it", str(top))
    # Each frame: directory fd, its path (for errors), the names left to look at.
    stack = [(os.open(top, _DIRECTORY_FLAGS), str(top), None)]
    try:
        while stack:
            fd, path, names = stack[-1]
            if names is None:
                names = os.listdir(fd)
                stack[-1] = (fd, path, names)
            descended = False
            while names:
                name = names.pop()
                if not stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                    try:
                        os.unlink(name, dir_fd=fd)
                    except OSError as err:
                        # A file bind-mounted here: the kernel refuses, and the caller's scan unmounts it.
                        if err.errno == errno.EBUSY:
                            raise MountBelow(errno.EBUSY, "a mount point: not deleting through it", f"{path}/{name}") from None
                        raise
                    continue
                if linux.mount_root_type(name, dir_fd=fd) is not None:
                    raise MountBelow(errno.EBUSY, "a mount point: not deleting through it", f"{path}/{name}")
                stack.append((os.open(name, _DIRECTORY_FLAGS, dir_fd=fd), f"{path}/{name}", None))
                descended = True
                break
            if descended:
                continue
            stack.pop()
            os.close(fd)
            if stack:
                os.rmdir(path.rsplit("/", 1)[1], dir_fd=stack[-1][0])
        os.rmdir(top)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


@contextlib.contextmanager
def flocked(lock_file: Path, shared: bool = False) -> Iterator[None]:
    """Hold flock(2) on `lock_file` (created if needed); per open file, so it also excludes other threads."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
