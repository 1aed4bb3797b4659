"""Start-of-service reconcile of the storage root: scan it, plan (pure data) what a crash left behind, apply.

What a crash can leave, by where it happened (every write of the service is "build hidden, then rename"):

- ``overlay2/.<id>.creating-<hex>``: PrepareRootfs died before its rename; nothing was mounted or used.
- ``overlay2/.<id>.removing-<hex>``: RemoveRootfs died after its rename; the id is already gone.
- ``overlay2/<id>`` without a readable ``.rootfs.json`` naming ``<id>``: not a complete rootfs. The
  current code never makes one (the record is written before the directory appears), so it is a
  leftover of an older version or of a hand removal. It is removed, with whatever is mounted below it,
  only when its ``upper`` holds no data (only directories and empty files, which is what volume mount
  points leave): an ``upper`` with data may be a container's only copy of its changes, and is kept for
  an explicit RemoveRootfs (``mydocker system check --repair``).
- ``layers/tmp/*``: extractions and layer deletions in progress.
- ``image/.<name>.tar.tmp-<tag>``: tag files being written (import, load, pull, commit, tag), at any
  depth: a name with "/" has subdirectories (``image/localhost:5000/team/.app:v1.tar.tmp-<tag>``). A
  tag that is the pid of a live process is left alone: scripts/build-busybox-image writes its tar the
  same way.
- ``imagedb/**/.<name>.json.tmp-<hex>``: image record and tag cache writes in progress (at any depth).
- ``tmp/storage``: scratch mount points of commit and export.

A complete ``overlay2/<id>`` (record present) and everything mounted below it are never touched.
The plan is made and applied while nothing else runs: at service start, before serving.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.storage import mountinfo
from services.storage.fsutil import remove_tree
from services.storage.paths import CONTAINER_ID_PATTERN, StoragePaths

log = logging.getLogger(__name__)

_ROOTFS_TEMP = re.compile(r"\.([0-9]{10})\.(creating|removing)-[0-9a-f]+")
_IMAGE_TEMP = re.compile(r"\..+\.tar\.tmp-(.+)")
_JSON_TEMP = re.compile(r"\..+\.json\.tmp-[0-9a-f]+")


@dataclass(frozen=True)
class RootfsEntry:
    """One name in overlay2/ as scanned; record and upper facts only matter for container id names."""

    name: str
    # .rootfs.json parses and names this id: the rootfs is complete.
    has_record: bool = False
    # upper has something besides directories and empty files: a container's changes would be lost.
    upper_has_data: bool = False


@dataclass(frozen=True)
class ImageTemp:
    """A hidden temp tar below image/ (path relative to it) and whether the pid its tag names is a live process."""

    name: str
    writer_alive: bool = False


@dataclass(frozen=True)
class Snapshot:
    """The parts of a storage root the planner looks at (paths are symlink-resolved, as in mountinfo)."""

    paths: StoragePaths
    overlay: tuple[RootfsEntry, ...] = ()
    layer_tmp: tuple[str, ...] = ()
    image_temps: tuple[ImageTemp, ...] = ()
    # Hidden files below imagedb/, as paths relative to it.
    digest_files: tuple[str, ...] = ()
    scratch_exists: bool = False
    # Mount points at or below the root, in mountinfo order (parents first).
    mounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Removal:
    """Unmount `unmount` (topmost first), then delete `path`."""

    path: str
    reason: str
    unmount: tuple[str, ...] = ()


@dataclass(frozen=True)
class Kept:
    """Something that looks left over but is not removed, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Plan:
    removals: tuple[Removal, ...] = ()
    kept: tuple[Kept, ...] = ()


def _mounts_below(mounts: tuple[str, ...], path: str) -> tuple[str, ...]:
    return tuple(reversed([point for point in mounts if mountinfo.is_under(point, path)]))


def _overlay_reason(entry: RootfsEntry) -> tuple[str, bool] | None:
    """(why, remove it) for a leftover in overlay2/, None for a complete rootfs or a name that is not ours."""
    temp = _ROOTFS_TEMP.fullmatch(entry.name)
    if temp:
        verb = "creation" if temp.group(2) == "creating" else "removal"
        return f"interrupted {verb} of rootfs {temp.group(1)}", True
    if not CONTAINER_ID_PATTERN.fullmatch(entry.name) or entry.has_record:
        return None
    if not entry.upper_has_data:
        return f"rootfs {entry.name} was never completed (no record) and nothing was written in it", True
    return (
        f"rootfs {entry.name} has no record but its upper dir holds data: "
        "left for RemoveRootfs (mydocker system check --repair)",
        False,
    )


def plan(snapshot: Snapshot) -> Plan:
    """What to remove and why, and what is suspicious but kept. Pure."""
    paths = snapshot.paths
    removals: list[Removal] = []
    kept: list[Kept] = []

    def remove(path: Path, reason: str) -> None:
        removals.append(Removal(str(path), reason, _mounts_below(snapshot.mounts, str(path))))

    for entry in snapshot.overlay:
        verdict = _overlay_reason(entry)
        if verdict is None:
            continue
        reason, removable = verdict
        if removable:
            remove(paths.overlay / entry.name, reason)
        else:
            kept.append(Kept(str(paths.overlay / entry.name), reason))
    for name in snapshot.layer_tmp:
        remove(paths.layer_tmp / name, "interrupted layer " + ("deletion" if "-deleting-" in name else "extraction"))
    for temp in snapshot.image_temps:
        if not _IMAGE_TEMP.fullmatch(PurePosixPath(temp.name).name):
            continue
        if temp.writer_alive:
            kept.append(Kept(str(paths.images / temp.name), "being written by a live process"))
        else:
            remove(paths.images / temp.name, "unfinished image import or commit")
    for name in snapshot.digest_files:
        if _JSON_TEMP.fullmatch(PurePosixPath(name).name):
            remove(paths.digests / name, "unfinished image record or tag cache write")
    if snapshot.scratch_exists:
        remove(paths.tmp, "scratch mount points of an interrupted commit or export")
    return Plan(tuple(removals), tuple(kept))


# -- scan and apply: the I/O around the planner -----------------------------------------------


def _listdir(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _hidden_files(directory: Path) -> list[str]:
    """Hidden files at any depth below `directory`, as sorted relative paths; symlinks are not followed."""
    found = []
    stack = [directory]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.name.startswith("."):
                found.append(Path(entry.path).relative_to(directory).as_posix())
    return sorted(found)


def _holds_data(upper: Path) -> bool:
    """True when `upper` has an entry besides directories and empty regular files (on its own filesystem).

    Stops at the first such entry. Whiteouts (character devices) and symlinks are data: they are changes.
    """
    try:
        top = os.lstat(upper)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(top.st_mode):
        return True  # not what create() makes: keep it rather than guess (and never follow a link)
    device = top.st_dev
    stack = [os.fspath(upper)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if st.st_dev != device:
                continue  # something mounted inside: not this rootfs' data
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif not (stat.S_ISREG(st.st_mode) and st.st_size == 0):
                return True
    return False


def _pid_alive(tag: str) -> bool:
    return tag.isdigit() and os.path.exists(f"/proc/{int(tag)}")


def scan(paths: StoragePaths, has_record: Callable[[str], bool]) -> Snapshot:
    """Read the root; `has_record(container_id)` says whether overlay2/<id> holds its complete record."""
    overlay = []
    for name in _listdir(paths.overlay):
        if CONTAINER_ID_PATTERN.fullmatch(name):
            record = has_record(name)
            # A complete rootfs is never walked: only a record-less one needs the verdict.
            overlay.append(RootfsEntry(name, record, not record and _holds_data(paths.rootfs(name).upper)))
        else:
            overlay.append(RootfsEntry(name))
    image_temps = []
    for name in _hidden_files(paths.images):
        match = _IMAGE_TEMP.fullmatch(PurePosixPath(name).name)
        if match:
            image_temps.append(ImageTemp(name, _pid_alive(match.group(1))))
    return Snapshot(
        paths=paths,
        overlay=tuple(overlay),
        layer_tmp=tuple(_listdir(paths.layer_tmp)),
        image_temps=tuple(image_temps),
        digest_files=tuple(_hidden_files(paths.digests)),
        scratch_exists=os.path.lexists(paths.tmp),
        mounts=tuple(m.mount_point for m in mountinfo.mounts_under(mountinfo.read(), str(paths.root))),
    )


def apply(plan: Plan, unmount_tree: Callable[[str], list[str]]) -> list[str]:
    """Carry out the plan, logging each step; returns the paths removed.

    `unmount_tree(path)` unmounts everything at or below `path`. A path that still has a mount below
    it afterwards is not deleted: removing through a mount would delete a volume's host data.
    """
    for kept in plan.kept:
        log.warning("kept %s: %s", kept.path, kept.reason)
    removed = []
    for removal in plan.removals:
        if removal.unmount:
            for point in unmount_tree(removal.path):
                log.info("unmounted %s (below %s: %s)", point, removal.path, removal.reason)
        left = mountinfo.mounts_under(mountinfo.read(), removal.path)
        if left:
            log.error("not removing %s: still mounted at %s", removal.path, ", ".join(m.mount_point for m in left))
            continue
        remove_tree(Path(removal.path))
        log.info("removed %s: %s", removal.path, removal.reason)
        removed.append(removal.path)
    return removed
