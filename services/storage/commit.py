"""Commit and export: a tar of a container's merged view (lower plus upper, whiteouts applied).

The view is the overlay alone: a non-recursive bind of `merged` (or a fresh overlay mount when it is
not mounted) taken into a file descriptor and detached at once, so volume bind mounts are not in it
and no mount outlives the call. The tree is walked through O_NOFOLLOW directory fds; /proc, /sys and
/dev are kept as empty directories. Ownership (numeric), modes, mtimes, xattrs, symlinks,
hardlinks, device nodes and fifos are written as pax records.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from services.common import linux
from services.storage import tarsafe

log = logging.getLogger(__name__)

EXCLUDED_CONTENTS = frozenset({("proc",), ("sys",), ("dev",)})
EXPORT_CHUNK = 64 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def detached_view(scratch: Path, source: str | None, mount_at: Callable[[str], None] | None) -> Iterator[int]:
    """A directory fd of a private, detached mount: a bind of `source`, or what `mount_at(target)` mounts."""
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / f"view-{secrets.token_hex(6)}"
    target.mkdir(0o700)
    fd = -1
    try:
        if source is not None:
            # Not MS_REC: the volumes mounted below merged stay out of the view.
            linux.mount(source, target, None, linux.MS_BIND)
        else:
            assert mount_at is not None
            mount_at(str(target))
        try:
            fd = os.open(target, _DIR_FLAGS)
        finally:
            # The fd keeps the detached tree alive; nothing remains in the mount table.
            linux.umount2(target, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
    finally:
        target.rmdir()
    try:
        yield fd
    finally:
        os.close(fd)


class _ExactReader:
    """Reads exactly `size` bytes of a file that may change meanwhile: pads with NULs if it shrank."""

    def __init__(self, fd: int, size: int, name: str):
        self._fd = fd
        self._left = size
        self._name = name

    def read(self, size: int = -1) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        if want <= 0:
            return b""
        data = os.read(self._fd, want)
        if not data:
            log.warning("%s shrank while being committed: padding with zeros", self._name)
            data = bytes(want)
        self._left -= len(data)
        return data


class TreeWriter:
    """Writes a directory tree, given as an fd, to a pax tar stream."""

    def __init__(self, out: BinaryIO, excluded_contents: frozenset[tuple[str, ...]] = EXCLUDED_CONTENTS):
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
        self._excluded = excluded_contents
        self._inodes: dict[tuple[int, int], str] = {}
        self.members = 0

    def write(self, root_fd: int) -> int:
        try:
            self._walk(root_fd, ())
        except BaseException:
            # Abandon the archive: a later flush of its buffer would write to a dead stream.
            self._tar.closed = True
            self._tar.fileobj.closed = True
            raise
        self._tar.close()
        return self.members

    def _walk(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        try:
            names = sorted(os.listdir(dir_fd))
        except FileNotFoundError:
            return
        for name in names:
            child = parts + (name,)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walk (a running container)
            if stat.S_ISDIR(st.st_mode):
                try:
                    child_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as err:
                    if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        continue
                    raise
                try:
                    self._add(child_fd, None, child, st)
                    if child not in self._excluded:
                        self._walk(child_fd, child)
                finally:
                    os.close(child_fd)
            else:
                self._add(dir_fd, name, child, st)

    def _add(self, fd: int, name: str | None, parts: tuple[str, ...], st: os.stat_result) -> None:
        """Add one entry: `fd` is the entry itself (dirs, name None) or its parent directory."""
        info = tarfile.TarInfo("/".join(parts))
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mode = stat.S_IMODE(st.st_mode)
        info.mtime = st.st_mtime_ns // 1_000_000_000
        # A directory's own fd: lgetxattr of "/proc/self/fd/N" would read the magic link, not the directory.
        xattr_source: int | str = fd if name is None else f"/proc/self/fd/{fd}/{name}"
        mode = st.st_mode
        data: _ExactReader | None = None
        file_fd = -1
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(name, dir_fd=fd)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self._inodes:
                info.type = tarfile.LNKTYPE
                info.linkname = self._inodes[key]
            else:
                if st.st_nlink > 1:
                    self._inodes[key] = info.name
                info.type = tarfile.REGTYPE
                try:
                    file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME, dir_fd=fd)
                except PermissionError:
                    file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    return
                info.size = st.st_size
                data = _ExactReader(file_fd, st.st_size, info.name)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            log.info("skipping socket %s", info.name)
            return
        try:
            self._write(info, data, [] if info.type == tarfile.LNKTYPE else self._xattrs(xattr_source))
        finally:
            if file_fd >= 0:
                os.close(file_fd)

    def _write(self, info: tarfile.TarInfo, data: _ExactReader | None, xattrs: list[tuple[str, bytes]]) -> None:
        """Write one member with its xattrs; a subclass may change, add or drop members here."""
        for key, value in xattrs:
            info.pax_headers[f"{tarsafe.XATTR_PREFIX}{key}"] = value.decode("utf-8", "surrogateescape")
        self._tar.addfile(info, data)
        self.members += 1

    @staticmethod
    def _xattrs(source: int | str) -> list[tuple[str, bytes]]:
        """The xattrs of an open directory (an fd) or of a path that is never followed."""
        follow = isinstance(source, int)  # an fd cannot be combined with follow_symlinks=False
        try:
            names = sorted(os.listxattr(source, follow_symlinks=follow))
        except OSError as err:
            if err.errno in (errno.ENOTSUP, errno.ENOENT):
                return []
            raise
        values = []
        for key in names:
            try:
                values.append((key, os.getxattr(source, key, follow_symlinks=follow)))
            except OSError as err:
                if err.errno not in (errno.ENODATA, errno.ENOENT):
                    raise
        return values


def write_tree(root_fd: int, out: BinaryIO) -> int:
    """Write the tar of the tree at `root_fd` to `out`; returns the number of members."""
    return TreeWriter(out).write(root_fd)


def stream_tree(root_fd: int, chunk_size: int = EXPORT_CHUNK) -> Iterator[bytes]:
    """The same tar as write_tree, as chunks; a writer thread feeds a pipe. Takes ownership of root_fd."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_end, "wb") as out:
                write_tree(root_fd, out)
        except BrokenPipeError:
            pass  # the reader went away (client cancelled)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            failure.append(exc)
        finally:
            os.close(root_fd)

    thread = threading.Thread(target=produce, name="export-writer", daemon=True)
    thread.start()
    try:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            buffer = bytearray()
            while True:
                data = source.read(chunk_size)
                if not data:
                    break
                buffer += data
                while len(buffer) >= chunk_size:
                    yield bytes(buffer[:chunk_size])
                    del buffer[:chunk_size]
            thread.join()
            if failure:
                raise failure[0]
            if buffer:
                yield bytes(buffer)
    finally:
        thread.join()
