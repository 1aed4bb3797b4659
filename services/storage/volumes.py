"""Bind volumes: validation of volume specs (pure) and resolving a container path inside a rootfs safely.

A container path is resolved the way the container will see it: symlinks in the image are
followed relative to the rootfs, ".." stops at the rootfs root, and missing directories are
created on the way, all through O_PATH|O_NOFOLLOW file descriptors, so an image with `data -> /etc`
makes `-v /x:/data` land in the rootfs's /etc, never the host's.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.errors import FailedPrecondition, InvalidArgument
from services.storage.model import Volume

MAX_SYMLINKS = 40
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def normalize_volume(volume: Volume) -> Volume:
    """Volume with normalized absolute paths; InvalidArgument for a relative path, NUL or "/" target."""
    for label, path in (("host", volume.host_path), ("container", volume.container_path)):
        if not path:
            raise InvalidArgument(f"volume {label} path is empty: use -v /host/dir:/container/dir")
        if "\0" in path:
            raise InvalidArgument(f"volume {label} path {path!r} contains a NUL byte")
        if not path.startswith("/"):
            raise InvalidArgument(f'volume {label} path "{path}" is not absolute: use -v /host/dir:/container/dir')
    container_path = posixpath.normpath(volume.container_path)
    # normpath keeps a leading "//"; collapse it.
    container_path = "/" + container_path.lstrip("/")
    if container_path == "/":
        raise InvalidArgument(f'volume "{volume.host_path}:{volume.container_path}" cannot be mounted on "/"')
    host_path = "/" + posixpath.normpath(volume.host_path).lstrip("/")
    return Volume(host_path=host_path, container_path=container_path, read_only=volume.read_only)


def normalize_volumes(volumes: Iterable[Volume]) -> tuple[Volume, ...]:
    """Every volume normalized; InvalidArgument when two share a container path."""
    result: list[Volume] = []
    seen: set[str] = set()
    for volume in volumes:
        normalized = normalize_volume(volume)
        if normalized.container_path in seen:
            raise InvalidArgument(
                f'container path "{normalized.container_path}" is used by two volumes: give each volume its own path'
            )
        seen.add(normalized.container_path)
        result.append(normalized)
    return tuple(result)


def mount_order(volumes: Iterable[Volume]) -> list[Volume]:
    """Parents before children (/data before /data/sub), so nested volumes stack correctly."""
    return sorted(volumes, key=lambda volume: (volume.container_path.count("/"), volume.container_path))


def bind_options(volume: Volume) -> tuple[str, ...]:
    return ("rbind", "ro") if volume.read_only else ("rbind",)


@dataclass
class Resolved:
    """An O_PATH fd of the resolved target (mount on /proc/self/fd/<fd>) and its path below the root."""

    fd: int
    relative: str

    @property
    def proc_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        os.close(self.fd)


def resolve_in_root(root: str, path: str, make_file: bool = False) -> Resolved:
    """Resolve `path` inside `root` as a chroot would, creating what is missing (dirs; a file last if asked)."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    stack: list[tuple[str, int]] = [("", root_fd)]
    pending = [part for part in path.split("/") if part not in ("", ".")]
    pending.reverse()
    followed = 0
    try:
        while pending:
            part = pending.pop()
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[1])
                continue
            parent = stack[-1][1]
            last = not pending
            st = _lstat_or_create(part, parent, last and make_file)
            if stat.S_ISLNK(st.st_mode):
                followed += 1
                if followed > MAX_SYMLINKS:
                    raise InvalidArgument(f'volume target "{path}": too many levels of symlinks in the image')
                target = os.readlink(part, dir_fd=parent)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop()[1])
                pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if not last and not stat.S_ISDIR(st.st_mode):
                raise FailedPrecondition(f'volume target "{path}": "{part}" is not a directory in the rootfs')
            try:
                fd = os.open(part, _PATH_FLAGS, dir_fd=parent)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ELOOP):
                    raise FailedPrecondition(f'volume target "{path}" changed while being resolved') from None
                raise
            stack.append((part, fd))
        final = os.fstat(stack[-1][1])
        if make_file and stat.S_ISDIR(final.st_mode):
            raise FailedPrecondition(f'volume target "{path}" is a directory but the host path is a file')
        if not make_file and not stat.S_ISDIR(final.st_mode):
            raise FailedPrecondition(f'volume target "{path}" is not a directory in the rootfs')
        resolved = Resolved(fd=os.dup(stack[-1][1]), relative="/".join(name for name, _ in stack[1:]))
        return resolved
    finally:
        for _, fd in stack:
            os.close(fd)


def _lstat_or_create(part: str, parent_fd: int, as_file: bool) -> os.stat_result:
    try:
        return os.stat(part, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    try:
        if as_file:
            os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent_fd))
        else:
            os.mkdir(part, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    return os.stat(part, dir_fd=parent_fd, follow_symlinks=False)


def prepare_host_path(volume: Volume) -> bool:
    """mkdir -p the host side unless it exists; True when it is a directory (False: a file bind)."""
    try:
        st = os.stat(volume.host_path)
    except FileNotFoundError:
        try:
            os.makedirs(volume.host_path, mode=0o755, exist_ok=True)
        except OSError as err:
            raise FailedPrecondition(f"volume host path {volume.host_path} cannot be created: {err.strerror}") from None
        return True
    except NotADirectoryError:
        raise FailedPrecondition(f"volume host path {volume.host_path} goes through a file") from None
    return stat.S_ISDIR(st.st_mode)
