"""StorageCore's commit: a container's upper dir as one new layer on its image, in O(size of the change)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable

from services.common import faults, image_config, nospace
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.storage import compression, diff
from services.storage.archive_read import LayerRef
from services.storage.imagedb import ImageRecord
from services.storage.images import ImageStore, tag_reference
from services.storage.model import Image, RootfsRecord
from services.storage.paths import validate_container_id

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CommitMixin:
    """CommitContainer of StorageCore; needs self.images, self.layers, self.rootfs, self.paths, self._catalog."""

    images: ImageStore

    def _parent_image(self, record: RootfsRecord) -> ImageRecord:
        if record.image_id:
            parent = self.images.db.get(record.image_id)
            if parent is not None:
                return parent
        for image in self.images.db.records():
            if image.diff_ids == record.layers:
                return image
        with contextlib.suppress(NotFound, InvalidArgument):
            image = self.images.resolve(record.image)
            if image.diff_ids == record.layers:
                return image
        raise FailedPrecondition(
            f'container {record.container_id}: its image "{record.image}" is gone, so its layers cannot be '
            "named in a new image: export the container instead (mydocker export)"
        )

    def commit(
        self,
        container_id: str,
        image: str,
        replace: bool,
        changes: Iterable[str] = (),
        comment: str = "",
        author: str = "",
        run_config: tuple[image_config.RunSpec, tuple[str, ...] | None] | None = None,
    ) -> Image:
        """The container's image plus one layer made from its upper dir, tagged `image`.

        `run_config` (the container's argv, env, working dir and user, and its entrypoint) replaces the
        image's run settings before `changes` apply, as docker commit keeps a container's config.
        A failure (a full disk, say) takes back the layer and record it made: nothing half-made stays.
        """
        validate_container_id(container_id)
        if not image:
            raise InvalidArgument("the image name is required")
        ref = tag_reference(image)
        self.images.check_tag_free(ref, replace)
        parsed = [image_config.parse_change(line) for line in changes]
        started = time.monotonic()
        doing = f'committing container {container_id} as image "{image}"'
        with self._container_lock(container_id), nospace.converted(doing, self.paths.root):
            record = self._record(container_id)
            parent = self._parent_image(record)
            digest = new = None  # what this commit made so far, for the undo
            try:
                digest, size = self._write_new_layer(container_id, image)
                faults.step("CommitContainer", "layer-written")
                layer = LayerRef(digest=digest, diff_id=digest, size=size, media_type=compression.DOCKER_LAYER)
                with nospace.converted(f'unpacking the new layer of image "{image}"', self.paths.root):
                    self.layers.ensure(digest, lambda: self.images.content.open(digest), f'image "{image}"')
                faults.step("CommitContainer", "unpacked")
                config = self._child_config(container_id, parent, digest, run_config, parsed, comment, author)
                new = self.images.store_new(config, parent.layers + (layer,))
                faults.step("CommitContainer", "recorded")
                # Thin: only the new layer is written now; the parent's blobs follow in the background.
                self.images.write_tag(ref, new, replace, keep=frozenset({digest}))
            except BaseException:
                self._undo_commit(digest, new)
                raise
        log.info("committed %s as %s (%s): a %d-byte layer in %.3fs",
                 container_id, image, new.id, size, time.monotonic() - started)
        return self.get_image(ref.familiar())

    def _write_new_layer(self, container_id: str, image: str) -> tuple[str, int]:
        """The container's upper dir as a layer blob in the content store: (digest, size)."""
        upper_fd = os.open(self.rootfs.paths(container_id).upper, _DIR_FLAGS)
        try:
            with nospace.converted(f'writing the new layer of image "{image}"', self.paths.root), \
                    self.images.content.writer() as blob:
                diff.write_layer(upper_fd, blob)
                return blob.commit(), blob.size
        finally:
            os.close(upper_fd)

    def _child_config(self, container_id: str, parent: ImageRecord, digest: str, run_config, parsed, comment: str,
                      author: str) -> bytes:
        """The new image's config: the parent's, with the container's run settings, one more layer and `changes`."""
        parent_document = self.images.config_document(parent.id)
        if run_config is not None:
            parent_document = image_config.with_run_config(parent_document, *run_config)
        document = image_config.child_config(
            parent_document,
            digest,
            image_config.format_created(time.time()),
            f"mydocker commit {container_id}",
            comment=comment,
            author=author,
            changes=parsed,
        )
        return image_config.config_bytes(document)

    def _undo_commit(self, digest: str | None, new: ImageRecord | None) -> None:
        """Delete what a failed commit made and nothing else uses: its untagged record, blob and unpacked layer."""
        with self._catalog:
            if new is not None and not self.images.tags_by_id().get(new.id):
                self._delete_image(new)  # its blobs and layers nothing else uses go with it
                return
            if digest is None:
                return
            records = self.images.db.records()
            if digest not in self.images.blobs_in_use(records):
                self.images.content.delete(digest)
            used = {diff_id for item in records for diff_id in item.diff_ids}
            used |= {layer for rootfs in self.rootfs.records() for layer in rootfs.layers}
            used |= self.rootfs.lower_digests()
            if digest not in used:
                with self.layers.lock(digest):
                    self.layers.delete(digest)
