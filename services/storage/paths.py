"""Every on-disk path of the storage service, derived from MYDOCKER_ROOT, plus name and id validation."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument

CONTAINER_ID_PATTERN = re.compile(r"[0-9]{10}")
DIGEST_PATTERN = re.compile(r"sha256:([0-9a-f]{64})")
# Characters that would break the comma/colon separated overlay mount data.
FORBIDDEN_ROOT_CHARACTERS = (",", ":", "\n", "\0", "=")


def validate_container_id(container_id: str) -> None:
    """Raise InvalidArgument unless `container_id` is the 10 digits the state service hands out."""
    if not CONTAINER_ID_PATTERN.fullmatch(container_id):
        raise InvalidArgument(f'invalid container id "{container_id}": a container id is exactly 10 digits')


def digest_hex(digest: str) -> str:
    """The hex part of "sha256:<hex>"; InvalidArgument for anything else."""
    match = DIGEST_PATTERN.fullmatch(digest)
    if not match:
        raise InvalidArgument(f'invalid digest "{digest}": expected sha256:<64 hex digits>')
    return match.group(1)


def check_root(root: Path) -> None:
    """Refuse a root whose path would corrupt overlay mount options."""
    for character in FORBIDDEN_ROOT_CHARACTERS:
        if character in str(root):
            raise ValueError(f"MYDOCKER_ROOT {root} contains {character!r}, which overlay mount options cannot carry")


@dataclass(frozen=True)
class RootfsPaths:
    """The seed's ROOT/overlay2/<id>/{lower,upper,work,merged} plus our hidden metadata file."""

    dir: Path
    lower: Path
    upper: Path
    work: Path
    merged: Path
    meta: Path


def rootfs_paths(overlay_root: Path, container_id: str) -> RootfsPaths:
    """Paths of one container's rootfs under ROOT/overlay2; validates the id first (it becomes a path)."""
    validate_container_id(container_id)
    base = overlay_root / container_id
    return RootfsPaths(
        dir=base,
        lower=base / "lower",
        upper=base / "upper",
        work=base / "work",
        merged=base / "merged",
        # A dot file, so `ls overlay2/<id>` shows exactly "lower merged upper work" as in the seed.
        meta=base / ".rootfs.json",
    )


@dataclass(frozen=True)
class StoragePaths:
    """All directories of the storage service below one (symlink-resolved) root."""

    root: Path

    @classmethod
    def at(cls, root: Path) -> "StoragePaths":
        # Mount targets are compared with /proc/self/mountinfo, which shows resolved paths.
        resolved = Path(os.path.realpath(root))
        check_root(resolved)
        return cls(resolved)

    @property
    def images(self) -> Path:
        return self.root / "image"

    @property
    def digests(self) -> Path:
        """Image records and caches."""
        return self.root / "imagedb"

    @property
    def image_records(self) -> Path:
        """One JSON record per image id."""
        return self.digests / "sha256"

    @property
    def tag_cache(self) -> Path:
        """Which image each tag file holds, keyed by the file's identity."""
        return self.digests / "names"

    @property
    def thin_markers(self) -> Path:
        """One marker per tag file published thin and not completed yet."""
        return self.digests / "thin"

    @property
    def blobs(self) -> Path:
        """The content store."""
        return self.root / "blobs"

    @property
    def layers(self) -> Path:
        return self.root / "layers"

    @property
    def layer_store(self) -> Path:
        return self.layers / "sha256"

    @property
    def layer_tmp(self) -> Path:
        """Extractions in progress and layers being deleted; emptied at service start."""
        return self.layers / "tmp"

    @property
    def layer_locks(self) -> Path:
        return self.layers / "locks"

    @property
    def overlay(self) -> Path:
        return self.root / "overlay2"

    @property
    def tmp(self) -> Path:
        """Scratch mount points (commit), emptied at service start."""
        return self.root / "tmp" / "storage"

    def layer_dir(self, digest: str) -> Path:
        return self.layer_store / digest_hex(digest)

    def layer_fs(self, digest: str) -> Path:
        """The extracted rootfs of a layer: what every container's `lower` points to."""
        return self.layer_dir(digest) / "fs"

    def layer_lock(self, digest: str) -> Path:
        return self.layer_locks / f"{digest_hex(digest)}.lock"

    def rootfs(self, container_id: str) -> RootfsPaths:
        return rootfs_paths(self.overlay, container_id)

    def lower_link_target(self, digest: str) -> str:
        """Relative target of overlay2/<id>/lower, so the root can move without breaking links."""
        return os.path.join("..", "..", "layers", "sha256", digest_hex(digest), "fs")
