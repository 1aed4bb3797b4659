"""Per-container rootfs at ROOT/overlay2/<id>/{lower,upper,work,merged}: records, directories, mount, unmount.

`lower` shows the image without a copy: for a one-layer image it is a relative symlink to the
shared layer (the seed's layout); for a stack of layers it is a directory holding a read-only
overlay of the layers, while the container's own overlay stacks the layers directly
(lowerdir=top:...:bottom, as containerd's overlay snapshotter does); mountplan.py says how.
Volumes are bind mounts below `merged`. The record lives in the hidden `.rootfs.json`, so
`ls overlay2/<id>` shows exactly the seed's four entries.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import time
from dataclasses import asdict
from pathlib import Path

from services.common import linux
from services.common.errors import FailedPrecondition
from services.storage import mountinfo
from services.storage.fsutil import MountBelow, fsync_dir, read_json, remove_tree, remove_tree_within, write_json_atomic
from services.storage.model import Mount, RootfsRecord, Volume
from services.storage.paths import CONTAINER_ID_PATTERN, DIGEST_PATTERN, RootfsPaths, StoragePaths
from services.storage.mountplan import (
    kernel_overlay_features,
    lower_view_mount,
    make_readonly,
    mount_overlay,
    overlay_mount,
    planned_mounts,
    volume_mount,
)
from services.storage.volumes import mount_order, prepare_host_path, resolve_in_root

log = logging.getLogger(__name__)

RECORD_VERSION = 2
# More mounts stacked on one `merged` than this is not ours: the full scan handles it.
MAX_STACKED_MOUNTS = 8


def record_to_json(record: RootfsRecord) -> dict:
    data = asdict(record)
    data["layers"] = list(record.layers)
    data["version"] = RECORD_VERSION
    return data


def record_from_json(data: object) -> RootfsRecord | None:
    if not isinstance(data, dict):
        return None
    try:
        # Version 1 kept the digest of the flat image tar: the diff id of its only layer.
        layers = tuple(str(item) for item in data["layers"]) if "layers" in data else (str(data["digest"]),)
        record = RootfsRecord(
            container_id=str(data["container_id"]),
            image=str(data["image"]),
            layers=layers,
            volumes=tuple(Volume(**volume) for volume in data.get("volumes", ())),
            created_at=float(data.get("created_at", 0.0)),
            image_id=str(data.get("image_id", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not record.layers or not all(DIGEST_PATTERN.fullmatch(layer) for layer in record.layers):
        return None
    return record


class RootfsStore:
    """The rootfs directories of one root and the mounts on them, in the service's mount namespace."""

    def __init__(self, paths: StoragePaths):
        self._paths = paths
        self.supported = kernel_overlay_features()

    def paths(self, container_id: str) -> RootfsPaths:
        return self._paths.rootfs(container_id)

    def layer_dirs(self, record: RootfsRecord) -> list[str]:
        """The layers' directories, bottom first."""
        return [str(self._paths.layer_fs(diff_id)) for diff_id in record.layers]

    def planned(self, record: RootfsRecord) -> list[Mount]:
        return planned_mounts(self.paths(record.container_id), record, self.supported, self.layer_dirs(record))

    def overlay(self, record: RootfsRecord) -> Mount:
        return overlay_mount(self.paths(record.container_id), self.supported, self.layer_dirs(record))

    def read(self, container_id: str) -> RootfsRecord | None:
        """The record of a complete rootfs; None when it is missing, unreadable or names another id."""
        record = record_from_json(read_json(self.paths(container_id).meta))
        return record if record is not None and record.container_id == container_id else None

    def exists(self, container_id: str) -> bool:
        return os.path.lexists(self.paths(container_id).dir)

    def ids(self) -> list[str]:
        """Container ids with a directory in ROOT/overlay2 (temp dirs are hidden dot dirs), sorted."""
        try:
            names = os.listdir(self._paths.overlay)
        except FileNotFoundError:
            return []
        return sorted(name for name in names if CONTAINER_ID_PATTERN.fullmatch(name))

    def lower_digest(self, name: str) -> str | None:
        """The layer digest that overlay2/<name>/lower links to; None without such a link."""
        try:
            target = os.readlink(self._paths.overlay / name / "lower")
        except OSError:
            return None  # no lower link (a file, a half-deleted dir), or not a link
        return lower_link_digest(target)

    def lower_digests(self) -> set[str]:
        """Digests that any directory in overlay2 (complete, record-less or hidden) has as its lower.

        Wider than the records: a rootfs whose record is gone may still be mounted on its layer.
        """
        try:
            names = os.listdir(self._paths.overlay)
        except FileNotFoundError:
            return set()
        return {digest for digest in map(self.lower_digest, names) if digest is not None}

    def records(self) -> list[RootfsRecord]:
        return [record for record in (self.read(container_id) for container_id in self.ids()) if record is not None]

    def create(self, record: RootfsRecord) -> RootfsPaths:
        """Create overlay2/<id> with lower, upper, work, merged and the record, appearing all at once."""
        final = self.paths(record.container_id)
        self._paths.overlay.mkdir(parents=True, exist_ok=True)
        tmp_dir = self._paths.overlay / f".{record.container_id}.creating-{secrets.token_hex(4)}"
        try:
            tmp_dir.mkdir(0o700)
            for name in ("upper", "work", "merged"):
                (tmp_dir / name).mkdir(0o755)
            if len(record.layers) == 1:
                os.symlink(self._paths.lower_link_target(record.digest), tmp_dir / "lower")
            else:
                (tmp_dir / "lower").mkdir(0o755)
            write_json_atomic(tmp_dir / final.meta.name, record_to_json(record))
            os.rename(tmp_dir, final.dir)
        except BaseException:
            remove_tree(tmp_dir)
            raise
        fsync_dir(self._paths.overlay)
        return final

    def repair(self, record: RootfsRecord) -> None:
        """Recreate what a partial deletion removed (work, merged, the lower link; upper only if gone)."""
        paths = self.paths(record.container_id)
        for directory in (paths.upper, paths.work, paths.merged):
            directory.mkdir(mode=0o755, exist_ok=True)
        if len(record.layers) > 1:
            paths.lower.mkdir(mode=0o755, exist_ok=True)
            return
        target = self._paths.lower_link_target(record.digest)
        if not os.path.islink(paths.lower) or os.readlink(paths.lower) != target:
            with contextlib.suppress(FileNotFoundError):
                paths.lower.unlink()
            os.symlink(target, paths.lower)

    # -- mounts ------------------------------------------------------------------------------

    def is_mounted(self, container_id: str, table: list[mountinfo.MountInfo] | None = None) -> bool:
        merged = str(self.paths(container_id).merged)
        if table is None:
            return mountinfo.is_overlay_mount(merged)
        entry = mountinfo.find(table, merged)
        return entry is not None and entry.fstype == "overlay"

    def mount(self, record: RootfsRecord) -> list[Mount]:
        """Mount what is not mounted yet (overlay, then volumes); return every mount with real targets."""
        paths = self.paths(record.container_id)
        layer_dirs = self.layer_dirs(record)
        overlay = overlay_mount(paths, self.supported, layer_dirs)
        performed = []
        view = lower_view_mount(paths, layer_dirs)
        if view is not None:
            if not mountinfo.is_overlay_mount(view.target):
                mount_overlay(view)
            performed.append(view)
        if not self.is_mounted(record.container_id):
            mount_overlay(overlay)
            log.info("mounted overlay of %s at %s", record.container_id, overlay.target)
        performed.append(overlay)
        for volume in mount_order(record.volumes):
            performed.append(self._mount_volume(paths, volume))
        return performed

    def _mount_volume(self, paths: RootfsPaths, volume: Volume) -> Mount:
        is_dir = prepare_host_path(volume)
        resolved = resolve_in_root(str(paths.merged), volume.container_path, make_file=not is_dir)
        try:
            planned = volume_mount(paths, volume, resolved.relative)
            if mountinfo.is_mount_point(planned.target):
                return planned
            # Mount on the fd, not the path: nothing in the rootfs can redirect it between resolve and mount.
            linux.mount(volume.host_path, resolved.proc_path, None, linux.MS_BIND | linux.MS_REC)
            if volume.read_only:
                try:
                    make_readonly(planned.target)
                except BaseException:
                    self.unmount_tree(planned.target)
                    raise
            log.info("mounted volume %s at %s%s", volume.host_path, planned.target, " (ro)" if volume.read_only else "")
            return planned
        finally:
            resolved.close()

    @staticmethod
    def unmount_tree(directory: str) -> list[str]:
        """Unmount everything at or below `directory`, topmost first; lazily only if a mount is busy."""
        unmounted = []
        for entry in reversed(mountinfo.read_under(directory)):
            try:
                linux.umount2(entry.mount_point, linux.UMOUNT_NOFOLLOW)
            except OSError as err:
                if err.errno in (errno.EINVAL, errno.ENOENT):
                    continue  # already gone (e.g. went with its parent)
                if err.errno != errno.EBUSY:
                    raise
                log.warning("%s is busy: detaching it lazily", entry.mount_point)
                linux.umount2(entry.mount_point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
            unmounted.append(entry.mount_point)
        return unmounted

    def unmount(self, container_id: str) -> list[str]:
        """Unmount the volumes, then the overlay, of one rootfs; verify nothing stays mounted."""
        paths = self.paths(container_id)
        unmounted = self._unmount_known(paths)
        if unmounted is not None:
            return unmounted
        return self._unmount_checked(str(paths.dir), f"container {container_id}")

    @staticmethod
    def _unmount_known(paths: RootfsPaths) -> list[str] | None:
        """The usual rootfs without reading the mount table: `merged`, then a `lower` view; None when unsure.

        A plain umount of `merged` fails (EBUSY) while volumes are mounted below it or a process uses
        it: then, or when `dir`, `upper` or `work` is a mount point, the caller's full scan decides, as
        it does from every other state. A mount deeper in `upper` or `work`, which only a hand could
        make, stops the deletion instead (remove_tree_within).
        """
        unmounted = []
        for target in (str(paths.merged), str(paths.lower)):
            # Stacked mounts: each umount takes off the top one.
            for _ in range(MAX_STACKED_MOUNTS):
                if not mountinfo.is_mount_point(target):
                    break
                try:
                    linux.umount2(target, linux.UMOUNT_NOFOLLOW)
                except OSError as err:
                    if err.errno in (errno.EBUSY, errno.EINVAL):
                        return None
                    raise
                unmounted.append(target)
            else:
                return None
        if any(mountinfo.is_mount_point(str(path)) for path in (paths.dir, paths.upper, paths.work)):
            return None
        return unmounted

    def _unmount_checked(self, directory: str, what: str) -> list[str]:
        unmounted = self.unmount_tree(directory)
        # What unmount_tree found is all there was (the caller holds the id's lock, and only this service
        # mounts there): a look at those points is the check, and the whole table is read again only
        # when one of them is still a mount point, to say what is left.
        if not any(mountinfo.is_mount_point(point) for point in unmounted):
            return unmounted
        left = mountinfo.read_under(directory)
        if left:
            raise FailedPrecondition(
                f"{what}: still mounted after unmounting: {', '.join(m.mount_point for m in left)}"
            )
        return unmounted

    def remove(self, container_id: str) -> bool:
        """Unmount, then delete overlay2/<id>; True if there was something to remove. Idempotent.

        Works from every half state: mounted, unmounted (a reboot), volumes still bound below an
        unmounted overlay, a directory without its record, or only the hidden leftovers of an
        interrupted creation or removal of this id (the caller holds the id's lock, so none is live).
        """
        paths = self.paths(container_id)
        leftovers = self._leftovers_of(container_id)
        for leftover in leftovers:
            # Never delete through a mount: a volume's host data would go with it.
            self._unmount_checked(str(leftover), f"container {container_id}")
            remove_tree_within(leftover)
            log.info("removed %s, left by an interrupted creation or removal", leftover)
        if not os.path.lexists(paths.dir):
            return bool(leftovers)
        self.unmount(container_id)
        # Rename first: the id disappears at once, and a crash mid-delete leaves only a hidden dir.
        doomed = self._paths.overlay / f".{container_id}.removing-{secrets.token_hex(4)}"
        os.rename(paths.dir, doomed)
        fsync_dir(self._paths.overlay)
        try:
            remove_tree_within(doomed)
        except MountBelow as err:
            # Mounted by hand where unmount() does not look without the table: the full scan takes it off.
            log.warning("%s: unmounting what the table shows below it", err)
            self._unmount_checked(str(doomed), f"container {container_id}")
            remove_tree_within(doomed)
        log.info("removed rootfs %s", container_id)
        return True

    def _leftovers_of(self, container_id: str) -> list[Path]:
        """overlay2/.<id>.creating-* and .<id>.removing-*: what a crash of create() or remove() leaves."""
        prefix = f".{container_id}."
        try:
            names = os.listdir(self._paths.overlay)
        except FileNotFoundError:
            return []
        return [
            self._paths.overlay / name
            for name in sorted(names)
            if name.startswith(prefix) and name[len(prefix):].startswith(("creating-", "removing-"))
        ]


def lower_link_digest(target: str) -> str | None:
    """The digest of a `lower` link target (".../layers/sha256/<hex>/fs"), None for anything else. Pure."""
    parts = target.rstrip("/").split("/")
    if len(parts) < 4 or parts[-1] != "fs" or parts[-3] != "sha256":
        return None
    digest = f"sha256:{parts[-2]}"
    return digest if DIGEST_PATTERN.fullmatch(digest) else None


def new_record(
    container_id: str, image: str, image_id: str, layers: tuple[str, ...], volumes: tuple[Volume, ...]
) -> RootfsRecord:
    return RootfsRecord(
        container_id=container_id,
        image=image,
        layers=layers,
        volumes=volumes,
        created_at=time.time(),
        image_id=image_id,
    )
