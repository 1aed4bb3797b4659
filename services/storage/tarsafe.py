"""Safe image tars: a pure check of every member, and an extractor that can never write outside its directory.

The check rejects what could escape or confuse extraction (absolute names, "..", paths through a
symlink, hardlinks to outside or not-yet-seen members, type changes of a path). The extractor then
works only through directory file descriptors opened with O_NOFOLLOW, so even a member the check
missed cannot be written through a symlink. Ownership (numeric), modes with setuid/setgid/sticky,
mtimes, xattrs (pax SCHILY.xattr.*), device nodes and fifos are kept, as Docker does as root.
An image layer is extracted with `whiteouts=True`: its OCI whiteouts become overlay ones (whiteout.py).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.storage import whiteout

log = logging.getLogger(__name__)

XATTR_PREFIX = "SCHILY.xattr."
REGULAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE})
ALLOWED_TYPES = REGULAR_TYPES | {
    tarfile.LNKTYPE,
    tarfile.SYMTYPE,
    tarfile.DIRTYPE,
    tarfile.FIFOTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
}
MAX_PROBLEMS_SHOWN = 5
COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Kinds of path the check tracks: a path may repeat only with the same kind.
DIR, SYMLINK, OTHER = "directory", "symlink", "file"


@dataclass(frozen=True)
class Problem:
    """Why one member is refused."""

    member: str
    reason: str

    def __str__(self) -> str:
        return f'member "{self.member}": {self.reason}'


class UnsafeArchive(InvalidArgument):
    """The tar is not a tar, or has members that are refused; the message names them."""


def split_name(name: str) -> tuple[tuple[str, ...] | None, str]:
    """(components, "") for a safe relative name ("./" is the root, ()), or (None, reason)."""
    if "\0" in name:
        return None, "the name contains a NUL byte"
    if name.startswith("/"):
        return None, "absolute path"
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        return None, '".." component'
    return parts, ""


def kind_of(member: tarfile.TarInfo) -> str:
    if member.type == tarfile.DIRTYPE:
        return DIR
    if member.type == tarfile.SYMTYPE:
        return SYMLINK
    return OTHER


def check_members(members: Iterable[tarfile.TarInfo]) -> list[Problem]:
    """Every reason to refuse these members, in archive order; [] means safe to extract. Pure."""
    problems: list[Problem] = []
    kinds: dict[tuple[str, ...], str] = {(): DIR}
    for member in members:
        name = member.name
        if member.type not in ALLOWED_TYPES:
            problems.append(Problem(name, f"unsupported member type {member.type!r}"))
            continue
        parts, reason = split_name(name)
        if parts is None:
            problems.append(Problem(name, reason))
            continue
        kind = kind_of(member)
        if not parts and kind != DIR:
            problems.append(Problem(name, "the archive root must be a directory"))
            continue
        parent_problem = _check_parents(parts, kinds)
        if parent_problem:
            problems.append(Problem(name, parent_problem))
            continue
        previous = kinds.get(parts)
        if previous is not None and previous != kind:
            problems.append(Problem(name, f"the path appears twice, as a {previous} and as a {kind}"))
            continue
        if member.type == tarfile.LNKTYPE:
            link_problem = _check_hardlink(member.linkname, parts, kinds)
            if link_problem:
                problems.append(Problem(name, link_problem))
                continue
        kinds[parts] = kind
    return problems


def _check_parents(parts: tuple[str, ...], kinds: dict[tuple[str, ...], str]) -> str:
    """Mark the parents of `parts` as directories; a reason if one is a symlink or a file."""
    for depth in range(1, len(parts)):
        prefix = parts[:depth]
        kind = kinds.get(prefix)
        if kind == SYMLINK:
            return f'its parent "{"/".join(prefix)}" is a symlink: extraction would write through it'
        if kind == OTHER:
            return f'its parent "{"/".join(prefix)}" is not a directory'
        kinds[prefix] = DIR
    return ""


def _check_hardlink(linkname: str, parts: tuple[str, ...], kinds: dict[tuple[str, ...], str]) -> str:
    target, reason = split_name(linkname)
    if target is None:
        return f'hardlink to "{linkname}" outside the archive ({reason})'
    if target == parts:
        return "hardlink to itself"
    kind = kinds.get(target)
    if kind is None:
        return f'hardlink to "{linkname}", which no earlier member of the archive is'
    if kind == DIR:
        return f'hardlink to the directory "{linkname}"'
    # The target's parents were checked when it was added, and no path changes type later.
    return ""


def describe(problems: list[Problem]) -> str:
    shown = "; ".join(str(problem) for problem in problems[:MAX_PROBLEMS_SHOWN])
    more = len(problems) - MAX_PROBLEMS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def open_archive(fileobj: io.BufferedIOBase, what: str) -> tarfile.TarFile:
    """Open a tar (plain, gzip, bzip2 or xz) for reading; UnsafeArchive when it is not one."""
    fileobj.seek(0)
    try:
        return tarfile.open(fileobj=fileobj, mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UnsafeArchive(f"{what} is not a readable tar archive: {err}") from None


def load_members(archive: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    """All members, or UnsafeArchive when the archive is truncated or corrupt."""
    try:
        return archive.getmembers()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UnsafeArchive(f"{what} is a corrupt tar archive: {err}") from None


def validate(fileobj: io.BufferedIOBase, what: str) -> list[tarfile.TarInfo]:
    """Check a whole archive; returns its members or raises UnsafeArchive naming the bad ones."""
    archive = open_archive(fileobj, what)
    members = load_members(archive, what)
    problems = check_members(members)
    if problems:
        raise UnsafeArchive(f"{what} is refused: {describe(problems)}")
    return members


@dataclass
class ExtractStats:
    """What an extraction created."""

    members: int = 0
    bytes_written: int = 0
    dir_times: list[tuple[tuple[str, ...], int]] = field(default_factory=list)


def extract(fileobj: io.BufferedIOBase, dest: str, what: str, *, whiteouts: bool = False) -> ExtractStats:
    """Validate, then extract every member below the existing, empty directory `dest` (`whiteouts`: a layer)."""
    archive = open_archive(fileobj, what)
    members = load_members(archive, what)
    problems = check_members(members)
    plan = None
    if whiteouts and not problems:
        plan = whiteout.plan([(split_name(member.name)[0] or (), member) for member in members], what)
        problems = [Problem(name, reason) for name, reason in plan.problems]
    if problems:
        raise UnsafeArchive(f"{what} is refused: {describe(problems)}")
    raw_fd = _fileno(fileobj) if archive.fileobj is fileobj else None
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        extractor = _Extractor(archive, root_fd, raw_fd, what, plan)
        for member in members:
            extractor.add(member)
        extractor.finish()
        return extractor.stats
    finally:
        os.close(root_fd)


def mtime_ns(member: tarfile.TarInfo) -> int:
    """The member's mtime in nanoseconds, exact for pax "mtime" records (a float would round it)."""
    text = member.pax_headers.get("mtime")
    if text:
        seconds, _, fraction = text.partition(".")
        if seconds.lstrip("-").isdigit() and (not fraction or fraction.isdigit()):
            sign = -1 if seconds.startswith("-") else 1
            return int(seconds) * 1_000_000_000 + sign * int((fraction + "000000000")[:9])
    if isinstance(member.mtime, int):
        return member.mtime * 1_000_000_000
    return round(member.mtime * 1e9)


def _fileno(fileobj: io.IOBase) -> int | None:
    """The fd under a plain (uncompressed) file object, for copy_file_range; None for in-memory ones."""
    try:
        return fileobj.fileno()
    except (io.UnsupportedOperation, AttributeError):
        return None


def xattrs_of(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """(name, value) of the member's pax SCHILY.xattr.* records, values as the original bytes."""
    return [
        (key[len(XATTR_PREFIX):], value.encode("utf-8", "surrogateescape"))
        for key, value in member.pax_headers.items()
        if key.startswith(XATTR_PREFIX)
    ]


class _Extractor:
    """Creates members through O_NOFOLLOW directory fds, caching the last parent directory."""

    def __init__(
        self, archive: tarfile.TarFile, root_fd: int, raw_fd: int | None, what: str, plan: whiteout.Plan | None = None
    ):
        self.archive = archive
        self.plan = plan
        self.root_fd = root_fd
        self.raw_fd = raw_fd
        self.what = what
        self.stats = ExtractStats()
        self._cached: tuple[tuple[str, ...], int] | None = None
        # Non-directory paths created so far: only these can need replacing by a later member.
        self._created: set[tuple[str, ...]] = set()

    # -- directories -------------------------------------------------------------------------

    def _walk(self, parts: tuple[str, ...], create: bool) -> int:
        """A new fd of the directory `parts` below the root, creating missing ones (0755, like tar)."""
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeArchive(
                            f'{self.what} is refused: "{"/".join(parts)}" goes through a symlink or a file'
                        ) from None
                    raise
                os.close(fd)
                fd = next_fd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _parent(self, parts: tuple[str, ...]) -> int:
        """The cached fd of the parent directory of `parts` (do not close it)."""
        parent = parts[:-1]
        if self._cached is not None and self._cached[0] == parent:
            return self._cached[1]
        fd = self._walk(parent, create=True)
        self._drop_cache()
        self._cached = (parent, fd)
        return fd

    def _drop_cache(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def finish(self) -> None:
        """Whiteouts once the layer's own entries exist, then directory mtimes: creating entries changed them."""
        if self.plan is not None:
            whiteout.apply(self.plan, lambda parts: self._walk(parts, create=True), self._parent)
        self._drop_cache()
        for parts, mtime in reversed(self.stats.dir_times):
            fd = self._walk(parts, create=False)
            try:
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)

    # -- members -----------------------------------------------------------------------------

    def add(self, member: tarfile.TarInfo) -> None:
        parts, _ = split_name(member.name)
        assert parts is not None  # check_members ran
        self.stats.members += 1
        if self.plan is not None and whiteout.classify(parts).kind != whiteout.PLAIN:
            return  # made in finish(), or aufs metadata
        if member.type == tarfile.DIRTYPE:
            self._add_dir(member, parts)
            return
        parent_fd = self._parent(parts)
        name = parts[-1]
        if parts in self._created:
            self._remove_existing(parent_fd, name)
        self._created.add(parts)
        if member.type in REGULAR_TYPES:
            self._add_file(member, parent_fd, name)
        elif member.type == tarfile.SYMTYPE:
            os.symlink(member.linkname, name, dir_fd=parent_fd)
            self._set_path_attrs(member, parent_fd, name, symlink=True)
        elif member.type == tarfile.LNKTYPE:
            target, _ = split_name(member.linkname)
            assert target is not None
            source_fd = self._walk(target[:-1], create=False)
            try:
                os.link(target[-1], name, src_dir_fd=source_fd, dst_dir_fd=parent_fd, follow_symlinks=False)
            finally:
                os.close(source_fd)
        else:
            kind = {tarfile.FIFOTYPE: stat.S_IFIFO, tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}
            device = os.makedev(member.devmajor, member.devminor) if member.type != tarfile.FIFOTYPE else 0
            os.mknod(name, 0o600 | kind[member.type], device, dir_fd=parent_fd)
            self._set_path_attrs(member, parent_fd, name, symlink=False)

    @staticmethod
    def _remove_existing(parent_fd: int, name: str) -> None:
        """A later member of the same path replaces a non-directory (the check refused type changes)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)

    def _add_dir(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if parts:
            parent_fd = self._parent(parts)
            with contextlib.suppress(FileExistsError):
                os.mkdir(parts[-1], 0o700, dir_fd=parent_fd)
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent_fd)
        else:
            fd = os.dup(self.root_fd)
        try:
            self._set_fd_attrs(member, fd)
        finally:
            os.close(fd)
        self.stats.dir_times.append((parts, mtime_ns(member)))

    def _add_file(self, member: tarfile.TarInfo, parent_fd: int, name: str) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
        try:
            self._copy_data(member, fd)
            self._set_fd_attrs(member, fd)
            os.utime(fd, ns=(mtime_ns(member),) * 2)
        finally:
            os.close(fd)

    def _copy_data(self, member: tarfile.TarInfo, fd: int) -> None:
        if member.size == 0:
            return
        if self.raw_fd is not None and not member.issparse():
            # Plain tar: the data is a contiguous range of the file; let the kernel copy it.
            offset, left = member.offset_data, member.size
            while left > 0:
                copied = os.copy_file_range(self.raw_fd, fd, left, offset)
                if copied == 0:
                    raise UnsafeArchive(f'{self.what} is truncated in member "{member.name}"')
                offset += copied
                left -= copied
            self.stats.bytes_written += member.size
            return
        source = self.archive.extractfile(member)
        assert source is not None
        with source, os.fdopen(os.dup(fd), "wb", closefd=True) as out:
            while chunk := source.read(COPY_CHUNK):
                out.write(chunk)
                self.stats.bytes_written += len(chunk)

    @staticmethod
    def _set_fd_attrs(member: tarfile.TarInfo, fd: int) -> None:
        # chown first (it clears setuid/setgid and file capabilities), then mode, then xattrs.
        os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        for key, value in xattrs_of(member):
            os.setxattr(fd, key, value)

    def _set_path_attrs(self, member: tarfile.TarInfo, parent_fd: int, name: str, symlink: bool) -> None:
        """Attributes of a symlink or a device/fifo we just created (no fd can be opened for writing)."""
        os.chown(name, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
        if not symlink:
            # No lchmod on Linux; `name` is the node created a moment ago in our private temp dir.
            os.chmod(name, member.mode & 0o7777, dir_fd=parent_fd)
        proc_path = f"/proc/self/fd/{parent_fd}/{name}"
        for key, value in xattrs_of(member):
            try:
                os.setxattr(proc_path, key, value, follow_symlinks=False)
            except OSError as err:
                # Linux refuses user.* xattrs on symlinks and devices; GNU tar only warns too.
                if err.errno not in (errno.EPERM, errno.ENOTSUP):
                    raise
                log.warning("%s: xattr %s of %s not restored: %s", self.what, key, member.name, err.strerror)
        mtime = mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent_fd, follow_symlinks=False)
