"""StorageCore: the storage service's logic without gRPC; it owns the locks that keep the stores consistent.

Locking: the catalog lock (short) serializes what links images, rootfs records and layers (publish
or remove an image, create a rootfs record, decide a prune). Each container id has its own lock for
mount work. Each layer digest has a flock held while the layer is extracted or deleted. Long work
(hashing, extraction, writing a commit tar) runs outside the catalog lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from services.common.config import VERSION, Config
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.storage import commit as commit_mod
from services.storage import mountinfo, reconcile
from services.storage.fsutil import disk_usage
from services.storage.images import ImageStore, require_name
from services.storage.layers import LayerStore
from services.storage.model import (
    Image,
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
from services.storage.rootfs import RootfsStore, new_record, overlay_mount, planned_mounts
from services.storage.volumes import normalize_volumes

log = logging.getLogger(__name__)


class StorageCore:
    def __init__(self, config: Config):
        self.config = config
        self.paths = StoragePaths.at(config.root)
        self.stats = Stats()
        self.images = ImageStore(self.paths, self.stats)
        self.layers = LayerStore(self.paths, self.stats)
        self.rootfs = RootfsStore(self.paths)
        self._catalog = threading.RLock()
        self._id_locks: dict[str, threading.Lock] = {}
        self._id_locks_guard = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the directories and remove what a crash left behind (reconcile.py); call once before serving."""
        for directory in (self.paths.images, self.paths.layer_store, self.paths.overlay):
            directory.mkdir(parents=True, exist_ok=True)
        snapshot = reconcile.scan(self.paths, self._has_complete_record)
        removed = reconcile.apply(reconcile.plan(snapshot), self.rootfs.unmount_tree)
        log.info("reconciled %s: %d leftover(s) removed", self.paths.root, len(removed))

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
            "images": len(self.images.names()),
            "rootfs_count": len(self.rootfs.ids()),
            "pid": os.getpid(),
        }

    # -- images ------------------------------------------------------------------------------

    def _users(self) -> dict[str, list[str]]:
        """Image name -> ids of the rootfs prepared from it."""
        users: dict[str, list[str]] = {}
        for record in self.rootfs.records():
            users.setdefault(record.image, []).append(record.container_id)
        return users

    def _with_users(self, image: Image, users: dict[str, list[str]]) -> Image:
        return Image(image.name, image.size_bytes, image.created_at, image.digest, tuple(users.get(image.name, ())))

    def list_images(self) -> list[Image]:
        users = self._users()
        return [self._with_users(image, users) for image in self.images.list()]

    def get_image(self, name: str) -> Image:
        require_name(name)
        return self._with_users(self.images.get(name), self._users())

    def remove_image(self, name: str) -> Image:
        require_name(name)
        with self._catalog:
            image = self.images.get(name)
            users = self._users().get(name, [])
            if users:
                raise FailedPrecondition(
                    f'image "{name}" is used by container(s) {", ".join(users)}: remove them first'
                )
            return self.images.remove(name)

    def import_image(
        self, name: str, replace: bool, chunks: Iterable[bytes] | None, source_path: str = "", expected_size: int = 0
    ) -> Image:
        """Store a tar as image `name`: written hidden, checked, then published atomically."""
        require_name(name)
        self.images.check_absent(name, replace)
        with self.images.staged(name) as staged:
            if source_path:
                self.images.copy_from(staged.writer, source_path)
            else:
                self.images.receive(staged.writer, chunks or ())
            if staged.size == 0:
                raise InvalidArgument(f'image "{name}": the tar is empty')
            if expected_size and staged.size != expected_size:
                raise InvalidArgument(
                    f'image "{name}": received {staged.size} bytes but {expected_size} were announced (interrupted upload?)'
                )
            self.images.validate_tar(staged, name)
            with self._catalog:
                image = self.images.publish(staged, name, replace)
        log.info("imported image %s (%d bytes, %s)", name, image.size_bytes, image.digest)
        return self._with_users(image, self._users())

    # -- rootfs ------------------------------------------------------------------------------

    def _to_rootfs(self, record: RootfsRecord, mounted: bool, mounts=None) -> Rootfs:
        paths = self.rootfs.paths(record.container_id)
        planned = mounts if mounts is not None else planned_mounts(paths, record, self.rootfs.supported)
        return Rootfs(
            container_id=record.container_id,
            image=record.image,
            path=str(paths.merged),
            mounts=tuple(planned),
            mounted=mounted,
            volumes=record.volumes,
        )

    def prepare_rootfs(self, container_id: str, image: str, volumes: Iterable[Volume]) -> Rootfs:
        """Create and mount overlay2/<id> from `image`, with `volumes` bind-mounted inside.

        For an id whose complete rootfs exists already, the request is a retry when it names the same
        image and the same volumes: the existing rootfs is returned (mounted again if a reboot unmounted
        it), its upper dir untouched. Anything else is AlreadyExists and changes nothing: a rootfs is
        never re-prepared from another image or with other volumes, since its upper dir may hold the
        container's only copy of its changes. A directory without a record is FailedPrecondition until
        RemoveRootfs clears it.
        """
        validate_container_id(container_id)
        require_name(image)
        volumes = normalize_volumes(volumes)
        with self._container_lock(container_id):
            record = self.rootfs.read(container_id)
            if record is not None:
                return self._reprepare(record, image, volumes)
            if self.rootfs.exists(container_id):
                raise FailedPrecondition(
                    f"container {container_id}: {self.rootfs.paths(container_id).dir} exists without a record "
                    "(an interrupted removal?): remove the rootfs first"
                )
            return self._prepare_new(container_id, image, volumes)

    def _reprepare(self, record: RootfsRecord, image: str, volumes: tuple[Volume, ...]) -> Rootfs:
        if record.image != image:
            raise AlreadyExists(
                f'container {record.container_id}: a rootfs prepared from image "{record.image}", not "{image}", '
                "exists already: remove it first"
            )
        if set(record.volumes) != set(volumes):
            raise AlreadyExists(
                f"container {record.container_id}: a rootfs prepared with other volumes exists already: remove it first"
            )
        return self._ensure_mounted(record)

    def _prepare_new(self, container_id: str, image: str, volumes: tuple[Volume, ...]) -> Rootfs:
        for _ in range(3):
            opened = self.images.open(image)  # NotFound; hashes once if the digest is not cached
            try:
                with self._catalog:
                    if not self.images.is_current(opened):
                        continue  # removed or replaced since we opened it: look again
                    # The record exists from here on: RemoveImage refuses, PruneLayers keeps the layer.
                    record = new_record(container_id, image, opened.digest, volumes)
                    self.rootfs.create(record)
                try:
                    self.layers.ensure(opened.digest, opened.file, f'image "{image}"')
                    performed = self.rootfs.mount(record)
                except BaseException:
                    self.rootfs.remove(container_id)
                    raise
            finally:
                opened.close()
            log.info("prepared rootfs %s from %s (%s)", container_id, image, opened.digest)
            return self._to_rootfs(record, True, performed)
        raise FailedPrecondition(f'image "{image}" keeps changing while container {container_id} is prepared: retry')

    def _ensure_layer(self, record: RootfsRecord) -> None:
        """Re-extract a layer that vanished (deleted by hand) if the image still has that content."""
        if self.layers.get(record.digest) is not None:
            return
        try:
            opened = self.images.open(record.image)
        except NotFound:
            raise FailedPrecondition(
                f"container {record.container_id}: its layer {record.digest} and image "
                f'"{record.image}" are both gone'
            ) from None
        try:
            if opened.digest != record.digest:
                raise FailedPrecondition(
                    f'container {record.container_id}: its layer {record.digest} is gone and image "{record.image}" '
                    "now has other content"
                )
            self.layers.ensure(opened.digest, opened.file, f'image "{record.image}"')
        finally:
            opened.close()

    def _ensure_mounted(self, record: RootfsRecord) -> Rootfs:
        self._ensure_layer(record)
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
            self._ensure_layer(record)
            self.rootfs.repair(record)
            options = overlay_mount(paths, self.rootfs.supported).options
            view = commit_mod.detached_view(self.paths.tmp, None, ",".join(options))
        with view as fd:
            yield fd

    def commit(self, container_id: str, image: str, replace: bool) -> Image:
        validate_container_id(container_id)
        require_name(image)
        self.images.check_absent(image, replace)
        started = time.monotonic()
        with self._container_lock(container_id):
            with self._view(container_id) as root_fd, self.images.staged(image) as staged:
                members = commit_mod.write_tree(root_fd, staged.writer)
                with self._catalog:
                    published = self.images.publish(staged, image, replace)
        log.info("committed %s as %s: %d members in %.2fs", container_id, image, members, time.monotonic() - started)
        return self._with_users(published, self._users())

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

    def _hash_unhashed_images(self) -> set[str]:
        """Digests of every image, hashing (once: then cached) those never hashed or changed since.

        A hand-dropped or touched tar has no cached digest; without this, its layer would look
        unused to PruneLayers and unshared to GetUsage.
        """
        digests = set()
        for image in self.images.list():
            if image.digest:
                digests.add(image.digest)
                continue
            try:
                opened = self.images.open(image.name)
            except NotFound:
                continue  # removed since it was listed
            opened.close()
            digests.add(opened.digest)
        return digests

    def usage(self) -> Usage:
        """Images, each layer once (with its images and rootfs users), each rootfs' upper, volumes.

        Every directory in overlay2 is counted, record-less ones too (with rootfs_count of the
        layers they sit on), so the total is what the disk holds.
        """
        self._hash_unhashed_images()
        records = self.rootfs.records()
        images = self.list_images()
        lowers = self._lower_digest_by_id()
        layers = []
        for layer in self.layers.list():
            layers.append(
                LayerUsage(
                    digest=layer.digest,
                    size_bytes=layer.size_bytes,
                    images=tuple(image.name for image in images if image.digest == layer.digest),
                    rootfs_count=sum(1 for digest in lowers.values() if digest == layer.digest),
                )
            )
        rootfs = [
            RootfsUsage(container_id, disk_usage(self.rootfs.paths(container_id).upper))
            for container_id in self.rootfs.ids()
        ]
        return Usage(tuple(images), tuple(layers), tuple(rootfs), tuple(self._volume_usage(records)))

    def _lower_digest_by_id(self) -> dict[str, str]:
        """Container id -> digest of its layer: the record's, else what its lower link points to."""
        result = {}
        for container_id in self.rootfs.ids():
            record = self.rootfs.read(container_id)
            digest = record.digest if record is not None else self.rootfs.lower_digest(container_id)
            if digest is not None:
                result[container_id] = digest
        return result

    def prune_layers(self) -> PruneResult:
        """Delete layers that no image has as content and no directory in overlay2 has as its lower.

        Images are hashed first where needed. The decision for each layer is taken under its lock and
        the catalog lock, so a PrepareRootfs (whose record is created under the catalog lock before it
        uses the layer) either sees the layer kept or finds it gone and extracts it again.
        """
        hashed = self._hash_unhashed_images()
        deleted, freed = [], 0
        for layer in self.layers.list():
            with self.layers.lock(layer.digest), self._catalog:
                used = hashed | {image.digest for image in self.images.list() if image.digest}
                used |= {record.digest for record in self.rootfs.records()}
                used |= self.rootfs.lower_digests()
                if layer.digest in used:
                    continue
                freed += self.layers.delete(layer.digest)
                deleted.append(layer.digest)
                log.info("pruned layer %s", layer.digest)
        return PruneResult(tuple(deleted), freed)
