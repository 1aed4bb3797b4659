"""Dataclasses of the storage service (no gRPC): images, layers, volumes, mounts and rootfs records."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.image_config import ImageSpec
from services.common.types import Volume
from services.storage.archive_read import LayerRef


@dataclass(frozen=True)
class Image:
    """An image as reported: its record, its config (parsed), its tags and the containers using it."""

    id: str
    name: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size_bytes: int
    # Unix time of the config's `created`.
    created_at: float
    spec: ImageSpec
    layers: tuple[LayerRef, ...]
    container_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layer:
    """An unpacked layer (keyed by diff id), shared read-only by every rootfs whose image has it."""

    digest: str
    # Bytes on disk, computed once at extraction.
    size_bytes: int
    created_at: float


@dataclass(frozen=True)
class Mount:
    """One mount(2) call as data: mount -t type -o options source target."""

    type: str
    source: str
    target: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class RootfsRecord:
    """What ROOT/overlay2/<id>/.rootfs.json keeps, so the service needs no other source after a restart.

    `layers` are the diff ids of the image's layers, bottom first; a record of version 1 (one flat
    image tar) has its tar digest, which is the diff id of its only layer, and no image id.
    """

    container_id: str
    image: str
    layers: tuple[str, ...]
    volumes: tuple[Volume, ...] = ()
    created_at: float = 0.0
    image_id: str = ""

    @property
    def digest(self) -> str:
        """The top layer's diff id."""
        return self.layers[-1]


@dataclass(frozen=True)
class Rootfs:
    """A container rootfs as reported: its record, where it is mounted, and the mounts performed."""

    container_id: str
    image: str
    path: str
    mounts: tuple[Mount, ...]
    mounted: bool
    volumes: tuple[Volume, ...]
    image_id: str = ""


@dataclass(frozen=True)
class VolumeUsage:
    """One host directory used as a volume by some rootfs."""

    volume: Volume
    container_ids: tuple[str, ...]
    size_bytes: int


@dataclass(frozen=True)
class LayerUsage:
    digest: str
    size_bytes: int
    images: tuple[str, ...]
    rootfs_count: int


@dataclass(frozen=True)
class RootfsUsage:
    container_id: str
    upper_size_bytes: int


@dataclass(frozen=True)
class Usage:
    """The GetUsage report: every shared layer counted once."""

    images: tuple[Image, ...]
    layers: tuple[LayerUsage, ...]
    rootfs: tuple[RootfsUsage, ...]
    volumes: tuple[VolumeUsage, ...]


@dataclass(frozen=True)
class RemoveResult:
    """What RemoveImage did: the image as it was, the tags removed, the image ids deleted."""

    image: Image
    untagged: tuple[str, ...]
    deleted: tuple[str, ...]


@dataclass(frozen=True)
class PruneResult:
    digests: tuple[str, ...]
    reclaimed_bytes: int


@dataclass
class Stats:
    """Counters a test or a benchmark can read: proof that work was done once."""

    extractions: int = 0
    hashes: int = 0
    extracted_digests: list[str] = field(default_factory=list)
