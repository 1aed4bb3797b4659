"""StorageCore: the storage service's logic without gRPC; it owns the locks that keep the stores consistent.

Locking: the catalog lock (short) serializes what links images, rootfs records and layers (publish
or remove an image, create a rootfs record, decide a prune). Each container id has its own lock for
mount work. Each layer digest has a flock held while the layer is extracted or deleted. Long work
(hashing, extraction, writing a commit tar) runs outside the catalog lock.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common import nospace
from services.common.config import VERSION, Config
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.storage import commit as commit_mod
from services.storage import mountinfo, reconcile
from services.storage.core_commit import CommitMixin
from services.storage.core_images import ImagesMixin
from services.storage.core_registry import RegistryMixin
from services.storage.fsutil import disk_usage
from services.storage.imagedb import ImageRecord
from services.storage.images import ImageStore
from services.storage.layers import LayerStore
from services.storage.locks import SharedExclusiveLock
from services.storage.model import (
    LayerUsage,
    PruneResult,
    Rootfs,
    RootfsRecord,
    RootfsUsage,
    Stats,
    Usage,
    Volume,
    VolumeUsage,
)
from services.storage.paths import StoragePaths, validate_container_id
from services.storage.mountplan import mount_overlay
from services.storage.rootfs import RootfsStore, new_record
from services.storage.volumes import normalize_volumes

log = logging.getLogger(__name__)


class StorageCore(ImagesMixin, CommitMixin, RegistryMixin):
    def __init__(self, config: Config):
        self.config = config
        self.paths = StoragePaths.at(config.root)
        self.stats = Stats()
        self._catalog = threading.RLock()
        # Loads and imports one at a time (exclusive): a failed one removes the blobs and records it
        # made, which nothing else may have started to use meanwhile. Pulls only add blobs (a failed
        # one keeps them for a resumed pull), so they run side by side (shared).
        self._ingest = SharedExclusiveLock()
        self.images = ImageStore(self.paths, self.stats, self._catalog)
        self.layers = LayerStore(self.paths, self.stats)
        self.images.unpack = self._unpack_all
        self.rootfs = RootfsStore(self.paths)
        self._id_locks: dict[str, threading.Lock] = {}
        self._id_locks_guard = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the directories and remove what a crash left behind (reconcile.py); call once before serving."""
        for directory in (self.paths.images, self.paths.layer_store, self.paths.overlay):
            directory.mkdir(parents=True, exist_ok=True)
        self.images.start()
        snapshot = reconcile.scan(self.paths, self._has_complete_record)
        removed = reconcile.apply(reconcile.plan(snapshot), self.rootfs.unmount_tree)
        orphans = self.collect_blobs()
        layers = self.collect_layers()
        # After reconcile, which removes hidden temp files: the completions write new ones.
        thin = self.images.tag_files.complete_pending()
        if thin:
            log.info("completing %d thin tag file(s) a stop left behind", thin)
        log.info(
            "reconciled %s: %d leftover(s), %d unused blob(s) and %d unused layer(s) removed",
            self.paths.root, len(removed), len(orphans), len(layers),
        )

    def collect_layers(self) -> list[str]:
        """Delete unpacked layers no image record and no rootfs has: an rmi killed between its steps left them.

        Only at service start, like collect_blobs.
        """
        used = self._image_layers()
        used |= {diff_id for stack in self._layers_by_id().values() for diff_id in stack}
        used |= self.rootfs.lower_digests()
        doomed = [layer.digest for layer in self.layers.list() if layer.digest not in used]
        for diff_id in doomed:
            with self.layers.lock(diff_id):
                self.layers.delete(diff_id)
        return doomed

    def collect_blobs(self) -> list[str]:
        """Delete blobs no image record names: what a load, pull or commit killed midway left.

        Only safe while nothing writes blobs: at service start, before serving.
        """
        with self._catalog:
            used = self.images.blobs_in_use(self.images.db.records())
            doomed = [digest for digest in self.images.content.list() if digest not in used]
            for digest in doomed:
                self.images.content.delete(digest)
        return doomed

    def _has_complete_record(self, container_id: str) -> bool:
        return self.rootfs.read(container_id) is not None

    @contextmanager
    def _container_lock(self, container_id: str) -> Iterator[None]:
        with self._id_locks_guard:
            lock = self._id_locks.setdefault(container_id, threading.Lock())
        with lock:
            yield

    def info(self) -> dict:
        return {
            "version": VERSION,
            "root": str(self.config.root),
            "driver": "overlay2",
            "images": self.images.db.count(),
            "rootfs_count": len(self.rootfs.ids()),
            "pid": os.getpid(),
        }

    # -- rootfs ------------------------------------------------------------------------------

    def _to_rootfs(self, record: RootfsRecord, mounted: bool, mounts=None) -> Rootfs:
        paths = self.rootfs.paths(record.container_id)
        planned = mounts if mounts is not None else self.rootfs.planned(record)
        return Rootfs(
            container_id=record.container_id,
            image=record.image,
            path=str(paths.merged),
            mounts=tuple(planned),
            mounted=mounted,
            volumes=record.volumes,
            image_id=record.image_id,
        )

    def prepare_rootfs(self, container_id: str, image: str, volumes: Iterable[Volume], image_id: str = "") -> Rootfs:
        """Create and mount overlay2/<id> from `image` (exactly `image_id` when given), with `volumes` inside.

        For an id whose complete rootfs exists already, the request is a retry when it names the same
        image and the same volumes: the existing rootfs is returned (mounted again if a reboot unmounted
        it), its upper dir untouched. Anything else is AlreadyExists and changes nothing: a rootfs is
        never re-prepared from another image or with other volumes, since its upper dir may hold the
        container's only copy of its changes. A directory without a record is FailedPrecondition until
        RemoveRootfs clears it.
        """
        validate_container_id(container_id)
        if not image:
            raise InvalidArgument("the image reference is required")
        volumes = normalize_volumes(volumes)
        doing = f'creating the rootfs of container {container_id} (image "{image}")'
        with self._container_lock(container_id), nospace.converted(doing, self.paths.root):
            record = self.rootfs.read(container_id)
            if record is not None:
                return self._reprepare(record, image, image_id, volumes)
            if self.rootfs.exists(container_id):
                raise FailedPrecondition(
                    f"container {container_id}: {self.rootfs.paths(container_id).dir} exists without a record "
                    "(an interrupted removal?): remove the rootfs first"
                )
            return self._prepare_new(container_id, image, image_id, volumes)

    def _reprepare(self, record: RootfsRecord, image: str, image_id: str, volumes: tuple[Volume, ...]) -> Rootfs:
        if record.image != image or (image_id and record.image_id and record.image_id != image_id):
            raise AlreadyExists(
                f'container {record.container_id}: a rootfs prepared from image "{record.image}", not "{image}", '
                "exists already: remove it first"
            )
        if set(record.volumes) != set(volumes):
            raise AlreadyExists(
                f"container {record.container_id}: a rootfs prepared with other volumes exists already: remove it first"
            )
        return self._ensure_mounted(record)

    def _prepare_new(self, container_id: str, image: str, image_id: str, volumes: tuple[Volume, ...]) -> Rootfs:
        with self._catalog:
            chosen = self.images.resolve(image)  # NotFound; loads a hand-made tag file once
            if image_id and chosen.id != image_id:
                raise FailedPrecondition(
                    f'image "{image}" changed (now {chosen.id[:19]}, not {image_id[:19]}) while container '
                    f"{container_id} was created: retry"
                )
            # The record exists from here on: RemoveImage refuses, PruneLayers keeps the layers.
            record = new_record(container_id, image, chosen.id, chosen.diff_ids, volumes)
            self.rootfs.create(record)
        try:
            self._ensure_layers(record, chosen)
            performed = self.rootfs.mount(record)
        except BaseException:
            self.rootfs.remove(container_id)
            raise
        log.info("prepared rootfs %s from %s (%s)", container_id, image, chosen.id)
        return self._to_rootfs(record, True, performed)

    def _ensure_layers(self, record: RootfsRecord, image: ImageRecord | None = None) -> None:
        """Unpack the layers of a rootfs that are not there (first use, or deleted by hand) from the image's blobs."""
        missing = [diff_id for diff_id in record.layers if self.layers.get(diff_id) is None]
        if not missing:
            return
        if image is None:
            image = self.images.db.get(record.image_id) if record.image_id else None
            if image is None:
                image = next((item for item in self.images.db.records() if item.diff_ids == record.layers), None)
        if image is None or image.diff_ids != record.layers:
            raise FailedPrecondition(
                f"container {record.container_id}: its layer(s) {', '.join(missing)} are gone and no image "
                f'has them any more (image "{record.image}")'
            )
        for layer in image.layers:
            if layer.diff_id in missing:
                doing = f'unpacking layer {layer.diff_id[7:19]} of image "{record.image}"'
                with nospace.converted(doing, self.paths.root):
                    self.layers.ensure(
                        layer.diff_id, lambda digest=layer.digest: self.images.content.open(digest), f'image "{record.image}"'
                    )

    def _ensure_mounted(self, record: RootfsRecord) -> Rootfs:
        self._ensure_layers(record)
        self.rootfs.repair(record)
        performed = self.rootfs.mount(record)
        return self._to_rootfs(record, True, performed)

    def _record(self, container_id: str) -> RootfsRecord:
        record = self.rootfs.read(container_id)
        if record is None:
            if self.rootfs.exists(container_id):
                raise FailedPrecondition(
                    f"container {container_id}: its rootfs has no record (an interrupted removal?): remove it"
                )
            raise NotFound(f"container {container_id} has no rootfs")
        return record

    def get_rootfs(self, container_id: str) -> Rootfs:
        validate_container_id(container_id)
        with self._container_lock(container_id):
            return self._ensure_mounted(self._record(container_id))

    def list_rootfs(self) -> list[Rootfs]:
        table = mountinfo.read()
        result = []
        for container_id in self.rootfs.ids():
            record = self.rootfs.read(container_id)
            if record is None:
                # Half-removed: listed so that a caller can finish removing it.
                merged = str(self.rootfs.paths(container_id).merged)
                result.append(Rootfs(container_id, "", merged, (), self.rootfs.is_mounted(container_id, table), ()))
                continue
            result.append(self._to_rootfs(record, self.rootfs.is_mounted(container_id, table)))
        return result

    def remove_rootfs(self, container_id: str) -> bool:
        validate_container_id(container_id)
        with self._container_lock(container_id):
            return self.rootfs.remove(container_id)

    # -- commit and export -------------------------------------------------------------------

    @contextmanager
    def _view(self, container_id: str) -> Iterator[int]:
        """A detached, volume-free view of the container's merged filesystem, as a directory fd."""
        record = self._record(container_id)
        paths = self.rootfs.paths(container_id)
        if self.rootfs.is_mounted(container_id):
            view = commit_mod.detached_view(self.paths.tmp, str(paths.merged), None)
        else:
            self._ensure_layers(record)
            self.rootfs.repair(record)
            overlay = self.rootfs.overlay(record)
            view = commit_mod.detached_view(
                self.paths.tmp, None, lambda target: mount_overlay(dataclasses.replace(overlay, target=target))
            )
        with view as fd:
            yield fd

    def export(self, container_id: str) -> Iterator[bytes]:
        """Chunks of the same tar as commit; the view is taken under the container lock, then streamed."""
        validate_container_id(container_id)
        with self._container_lock(container_id), self._view(container_id) as fd:
            root_fd = os.dup(fd)
        return commit_mod.stream_tree(root_fd)

    # -- volumes, usage, prune ---------------------------------------------------------------

    def _volume_usage(self, records: list[RootfsRecord]) -> list[VolumeUsage]:
        by_host: dict[str, tuple[Volume, list[str]]] = {}
        for record in records:
            for volume in record.volumes:
                entry = by_host.setdefault(volume.host_path, (volume, []))
                entry[1].append(record.container_id)
        return [
            VolumeUsage(volume=volume, container_ids=tuple(ids), size_bytes=disk_usage(Path(host)))
            for host, (volume, ids) in sorted(by_host.items())
        ]

    def list_volumes(self) -> list[VolumeUsage]:
        return self._volume_usage(self.rootfs.records())

    def _image_layers(self) -> set[str]:
        return {diff_id for image in self.images.db.records() for diff_id in image.diff_ids}

    def usage(self) -> Usage:
        """Images, each layer once (with its images and rootfs users), each rootfs' upper, volumes.

        Every directory in overlay2 is counted, record-less ones too (with rootfs_count of the
        layers they sit on), so the total is what the disk holds.
        """
        records = self.rootfs.records()
        images = self.list_images()
        by_rootfs = self._layers_by_id()
        layers = []
        for layer in self.layers.list():
            layers.append(
                LayerUsage(
                    digest=layer.digest,
                    size_bytes=layer.size_bytes,
                    images=tuple(image.id for image in images if layer.digest in image.spec.diff_ids),
                    rootfs_count=sum(1 for stack in by_rootfs.values() if layer.digest in stack),
                )
            )
        rootfs = [
            RootfsUsage(container_id, disk_usage(self.rootfs.paths(container_id).upper))
            for container_id in self.rootfs.ids()
        ]
        return Usage(tuple(images), tuple(layers), tuple(rootfs), tuple(self._volume_usage(records)))

    def _layers_by_id(self) -> dict[str, tuple[str, ...]]:
        """Container id -> diff ids of its layers: the record's, else what its lower link points to."""
        result = {}
        for container_id in self.rootfs.ids():
            record = self.rootfs.read(container_id)
            if record is not None:
                result[container_id] = record.layers
                continue
            digest = self.rootfs.lower_digest(container_id)
            if digest is not None:
                result[container_id] = (digest,)
        return result

    def prune_layers(self) -> PruneResult:
        """Delete unpacked layers that no image has and no directory in overlay2 stacks.

        The decision for each layer is taken under its lock and the catalog lock, so a PrepareRootfs
        (whose record is created under the catalog lock before it uses the layer) either sees the
        layer kept or finds it gone and unpacks it again.
        """
        deleted, freed = [], 0
        for layer in self.layers.list():
            with self.layers.lock(layer.digest), self._catalog:
                used = self._image_layers()
                used |= {diff_id for stack in self._layers_by_id().values() for diff_id in stack}
                used |= self.rootfs.lower_digests()
                if layer.digest in used:
                    continue
                freed += self.layers.delete(layer.digest)
                deleted.append(layer.digest)
                log.info("pruned layer %s", layer.digest)
        return PruneResult(tuple(deleted), freed)
