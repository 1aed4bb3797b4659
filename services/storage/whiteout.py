"""OCI whiteouts (".wh.NAME", ".wh..wh..opq") and their overlay form (0/0 character devices, the opaque xattr).

An image layer deletes a path of the layers below it with an empty file ".wh.NAME" next to it, and
hides a whole directory of the layers below with ".wh..wh..opq" inside it. Unpacked as an overlay
lowerdir, these become what overlayfs itself writes: a character device 0/0 named NAME, and the xattr
trusted.overlay.opaque=y on the directory. The plan here is pure; the two node makers are the syscalls.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
META_PREFIX = ".wh..wh."  # aufs metadata (".wh..wh.plnk", ".wh..wh.aufs"): never part of the image
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_XATTR_PREFIX = "trusted.overlay."
OPAQUE_XATTR = "trusted.overlay.opaque"
OPAQUE_VALUE = b"y"
WHITEOUT_MODE = 0o000  # what overlayfs gives its own whiteouts

# What a member of a layer is, by its name.
PLAIN, WHITEOUT, OPAQUE, META, REFUSED = "plain", "whiteout", "opaque", "meta", "refused"

Parts = tuple[str, ...]


@dataclass(frozen=True)
class Role:
    """What a member name means in a layer: `target` is the path deleted or made opaque."""

    kind: str
    target: Parts = ()
    reason: str = ""


def classify(parts: Parts) -> Role:
    """The role of a member at `parts` (components of a name already checked safe). Pure."""
    last = len(parts) - 1
    for depth, part in enumerate(parts):
        if not part.startswith(WHITEOUT_PREFIX):
            continue
        if part.startswith(META_PREFIX) and part != OPAQUE_MARKER:
            return Role(META)  # with everything below it: aufs' hardlink directory has files
        if depth < last:
            return Role(REFUSED, reason=f'it is below the whiteout "{"/".join(parts[: depth + 1])}", which is a file')
        if part == OPAQUE_MARKER:
            return Role(OPAQUE, parts[:-1])
        name = part[len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            return Role(REFUSED, reason=f'a whiteout must name a file of its directory, not "{name}"')
        return Role(WHITEOUT, parts[:-1] + (name,))
    return Role(PLAIN, parts)


@dataclass
class Plan:
    """What a layer's whiteouts turn into: refusals, the 0/0 devices to make, the directories to make opaque."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    whiteouts: dict[Parts, tarfile.TarInfo] = field(default_factory=dict)
    opaque: set[Parts] = field(default_factory=set)


def plan(members: Iterable[tuple[Parts, tarfile.TarInfo]], what: str) -> Plan:
    """The whiteout plan of a layer whose names passed tarsafe.check_members; drops trusted.overlay.* xattrs.

    As Docker and containerd, a whiteout of a path the layer itself created earlier is refused (they
    fail to mknod over it), and an entry after the whiteout of its path wins over it: OCI whiteouts
    only hide the layers below. Such a directory is made opaque so the one below stays hidden.
    """
    result = Plan()
    # Every path of this layer so far (entries and their parents), True for a directory.
    present: dict[Parts, bool] = {}
    for parts, member in members:
        for key in drop_overlay_xattrs(member):
            log.warning("%s: %s of %s dropped: only whiteout files shape the overlay", what, key, member.name)
        role = classify(parts)
        if role.kind == META:
            continue
        if role.kind == REFUSED:
            result.problems.append((member.name, role.reason))
            continue
        for depth in range(1, len(parts)):
            present[parts[:depth]] = True
        if role.kind == PLAIN:
            present[parts] = present.get(parts, False) or member.type == tarfile.DIRTYPE
            if member.type == tarfile.LNKTYPE and _names_a_whiteout(member.linkname):
                reason = f'hardlink to "{member.linkname}", a whiteout or aufs metadata, which is not extracted'
                result.problems.append((member.name, reason))
        elif not member.isreg():
            result.problems.append((member.name, "a whiteout must be a regular file, not a directory, link or device"))
        elif role.kind == OPAQUE:
            result.opaque.add(role.target)
        elif role.target in present:
            reason = f'whiteout of "{"/".join(role.target)}", which this same layer created earlier'
            result.problems.append((member.name, reason))
        else:
            result.whiteouts.setdefault(role.target, member)
    for target in [target for target in result.whiteouts if target in present]:
        del result.whiteouts[target]
        if present[target]:
            result.opaque.add(target)
    return result


def _names_a_whiteout(name: str) -> bool:
    return any(part.startswith(WHITEOUT_PREFIX) for part in name.split("/"))


def drop_overlay_xattrs(member: tarfile.TarInfo) -> list[str]:
    """Remove the member's trusted.overlay.* xattrs (only whiteout files may shape the overlay); their names."""
    keys = [key for key in member.pax_headers if key.startswith("SCHILY.xattr." + OVERLAY_XATTR_PREFIX)]
    for key in keys:
        del member.pax_headers[key]
    return keys


def apply(layer_plan: Plan, open_dir: Callable[[Parts], int], parent_fd: Callable[[Parts], int]) -> None:
    """Make the plan's nodes once the layer's entries exist: `open_dir` gives a new fd, `parent_fd` a cached one."""
    for parts in sorted(layer_plan.opaque):
        fd = open_dir(parts)  # the marker may be the layer's only mention of its directory: open_dir creates it
        try:
            mark_opaque(fd)
        finally:
            os.close(fd)
    for parts, member in layer_plan.whiteouts.items():
        make_whiteout(parent_fd(parts), parts[-1], mtime_of(member))


def mtime_of(member: tarfile.TarInfo) -> int:
    return int(member.mtime * 1_000_000_000)


def make_whiteout(parent_fd: int, name: str, mtime_ns: int) -> None:
    """An overlay whiteout: the character device 0/0, mode 000, owned by 0:0."""
    os.mknod(name, stat.S_IFCHR | WHITEOUT_MODE, os.makedev(0, 0), dir_fd=parent_fd)
    os.chown(name, 0, 0, dir_fd=parent_fd, follow_symlinks=False)
    os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent_fd, follow_symlinks=False)


def mark_opaque(dir_fd: int) -> None:
    os.setxattr(dir_fd, OPAQUE_XATTR, OPAQUE_VALUE)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
