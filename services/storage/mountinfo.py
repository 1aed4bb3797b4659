"""What is mounted where: /proc/self/mountinfo (a pure parser plus a reader), and one path through statx."""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

from services.common import linux

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    """One line of mountinfo (proc(5)); paths unescaped."""

    mount_id: int
    parent_id: int
    device: str
    root: str
    mount_point: str
    options: tuple[str, ...]
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (\\040 for space, \\011, \\012, \\134)."""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_line(line: str) -> MountInfo:
    """One mountinfo line; ValueError when it is malformed."""
    fields = line.split(" ")
    try:
        separator = fields.index("-", 6)
    except ValueError:
        raise ValueError(f"mountinfo line without separator: {line!r}") from None
    if len(fields) < separator + 3:
        raise ValueError(f"mountinfo line too short: {line!r}")
    return MountInfo(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        device=fields[2],
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        options=tuple(fields[5].split(",")),
        optional=tuple(fields[6:separator]),
        fstype=fields[separator + 1],
        source=unescape(fields[separator + 2]),
        super_options=tuple(fields[separator + 3].split(",")) if len(fields) > separator + 3 else (),
    )


def parse(text: str) -> list[MountInfo]:
    """Every mount in mountinfo order (parents before the mounts stacked on them)."""
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read(path: Path = Path("/proc/self/mountinfo")) -> list[MountInfo]:
    return parse(path.read_text())


def is_under(mount_point: str, directory: str) -> bool:
    """True when mount_point is `directory` itself or below it (string path logic, no I/O)."""
    directory = directory.rstrip("/") or "/"
    return mount_point == directory or mount_point.startswith(directory + "/") or directory == "/"


def mounts_under(mounts: list[MountInfo], directory: str) -> list[MountInfo]:
    """Mounts at or below `directory`, in mountinfo order."""
    return [entry for entry in mounts if is_under(entry.mount_point, directory)]


def find(mounts: list[MountInfo], mount_point: str) -> MountInfo | None:
    """The topmost mount at exactly `mount_point`, or None."""
    found = None
    for entry in mounts:
        if entry.mount_point == mount_point:
            found = entry
    return found


def _escaped(path: str) -> str:
    """`path` spelled as mountinfo spells it (octal escapes for backslash, space, tab, newline)."""
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def _candidates(text: str, directory: str) -> list[MountInfo]:
    # Parsing every line costs time in proportion to all mounts (1,000 containers: 1,000 overlays);
    # only lines that name `directory` can hold a mount point at or below it.
    needle = " " + _escaped(directory.rstrip("/") or "/")
    return [parse_line(line) for line in text.splitlines() if needle in line]


def read_under(directory: str, path: Path = Path("/proc/self/mountinfo")) -> list[MountInfo]:
    """mounts_under(read(), directory), parsing only the lines that can match."""
    return mounts_under(_candidates(path.read_text(), directory), directory)


def find_at(mount_point: str, path: Path = Path("/proc/self/mountinfo")) -> MountInfo | None:
    """find(read(), mount_point), parsing only the lines that can match."""
    return find(_candidates(path.read_text(), mount_point), mount_point)


# -- one path, without reading the whole table --------------------------------------------------


def mount_type_at(path: str) -> int | None:
    """The filesystem type (statfs magic) mounted at exactly `path`, None when `path` is no mount point or is missing.

    One statx and one statfs instead of mountinfo, which the kernel formats whole (~7 ms with 1,000
    containers' overlays). Kernels that cannot say (before Linux 5.8) are asked through mountinfo.
    """
    try:
        return linux.mount_root_type(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno != errno.ENOTSUP:
            raise
    entry = find_at(path)
    if entry is None:
        return None
    return linux.OVERLAYFS_SUPER_MAGIC if entry.fstype == "overlay" else 0


def is_mount_point(path: str) -> bool:
    return mount_type_at(path) is not None


def is_overlay_mount(path: str) -> bool:
    return mount_type_at(path) == linux.OVERLAYFS_SUPER_MAGIC
