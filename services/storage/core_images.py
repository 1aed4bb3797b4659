"""StorageCore's image verbs: list, get, import, load, save, tag, remove, and commit in O(size of the change)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.common import faults, image_config, nospace
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.storage.archive_read import LayerRef
from services.storage.archive_write import ArchiveImage, write_docker_archive
from services.storage.imagedb import ImageRecord
from services.storage.images import ImageStore, tag_reference
from services.storage.model import Image, RemoveResult

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 1 << 20
SAVE_CHUNK = 256 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ImagesMixin:
    """Image verbs of StorageCore; needs self.images, self.layers, self.rootfs, self.paths, self._catalog."""

    images: ImageStore

    # -- reading -----------------------------------------------------------------------------

    def _users(self) -> dict[str, list[str]]:
        """Image id -> ids of the rootfs prepared from it (older records matched by their layers)."""
        users: dict[str, list[str]] = {}
        by_layers = None
        for record in self.rootfs.records():
            image_id = record.image_id
            if not image_id:
                if by_layers is None:
                    by_layers = {image.diff_ids: image.id for image in self.images.db.records()}
                image_id = by_layers.get(record.layers, "")
            if image_id:
                users.setdefault(image_id, []).append(record.container_id)
        return users

    def list_images(self) -> list[Image]:
        tags = self.images.tags_by_id()
        users = self._users()
        return [
            self.images.describe(record, tags.get(record.id, []), users.get(record.id, ()))
            for record in self.images.db.records()
        ]

    def get_image(self, text: str, brief: bool = False) -> Image:
        record = self.images.resolve(text)
        if brief:
            return self.images.describe(record, [], ())
        tags = self.images.tags_by_id().get(record.id, [])
        return self.images.describe(record, tags, self._users().get(record.id, ()), name=_familiar(text, tags))

    # -- uploads -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _upload(
        self, chunks: Iterable[bytes] | None, source_path: str, expected_size: int, what: str
    ) -> Iterator[Path]:
        """The uploaded archive as a temp file (or the server-side file itself), removed afterwards."""
        if source_path:
            yield _server_file(source_path)
            return
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        path = self.paths.tmp / f"upload-{secrets.token_hex(6)}.tar"
        try:
            size = 0
            with nospace.converted(f"receiving {what}", self.paths.root), open(path, "xb") as out:
                for chunk in chunks or ():
                    out.write(chunk)
                    size += len(chunk)
            if size == 0:
                raise InvalidArgument(f"{what}: the archive is empty")
            if expected_size and size != expected_size:
                raise InvalidArgument(
                    f"{what}: received {size} bytes but {expected_size} were announced (interrupted upload?)"
                )
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _stored_then_unpack(self, method: str, what: str):
        """The before_publish step of a load or import: records stored, layers unpacked, no tag yet."""

        def run(record: ImageRecord) -> None:
            faults.step(method, "stored")
            self._unpack_all(record, what)
            faults.step(method, "unpacked")

        return run

    def _unpack_all(self, record: ImageRecord, what: str) -> None:
        """Unpack every layer now (checking each against the safety rules), as Docker does on load.

        Layers missing here are unpacked side by side, one per CPU: creating files dominates, and
        its syscalls run outside the GIL (each layer has its own lock and temp directory).
        """
        missing = [layer for layer in record.layers if self.layers.get(layer.diff_id) is None]

        def unpack(layer: LayerRef) -> None:
            with nospace.converted(f"unpacking layer {layer.diff_id[7:19]} of {what}", self.paths.root):
                self.layers.ensure(layer.diff_id, lambda: self.images.content.open(layer.digest), what)

        if len(missing) <= 1:
            for layer in missing:
                unpack(layer)
            return
        with ThreadPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1), thread_name_prefix="unpack") as pool:
            # list() re-raises the first failure, once every started unpack has finished or failed.
            list(pool.map(unpack, missing))

    def _undo_new(self, before: set[str]) -> None:
        """Delete the image records a failed load or import created, with their blobs and unpacked layers that
        nothing else uses (the layers unpacked before the one that was refused)."""
        with self._catalog:
            for image_id in set(self.images.db.ids()) - before:
                record = self.images.db.get(image_id)
                if record is not None and not self.images.tags_by_id().get(image_id):
                    self._delete_image(record)

    def import_image(
        self,
        name: str,
        replace: bool,
        chunks: Iterable[bytes] | None,
        source_path: str = "",
        expected_size: int = 0,
        changes: Iterable[str] = (),
    ) -> Image:
        """A plain rootfs tar as a one-layer image tagged `name`: checked and unpacked before it is visible."""
        if not name:
            raise InvalidArgument("the image name is required")
        ref = tag_reference(name)
        self.images.check_tag_free(ref, replace)
        changes = list(changes)
        for line in changes:
            image_config.parse_change(line)
        what = f'image "{name}"'
        with nospace.converted(f"storing {what}", self.paths.root), \
                self._upload(chunks, source_path, expected_size, what) as path, self._ingest.exclusive():
            before = set(self.images.db.ids())
            try:
                record = self.images.import_rootfs(
                    path, name, replace, changes, before_publish=self._stored_then_unpack("ImportImage", what)
                )
            except BaseException:
                self._undo_new(before)
                raise
        log.info("imported image %s as %s", name, record.id)
        return self.get_image(ref.familiar())

    def load_image(
        self, name: str, chunks: Iterable[bytes] | None, source_path: str = "", expected_size: int = 0
    ) -> tuple[list[Image], list[str]]:
        """Every image of a docker-archive, OCI archive or rootfs tar (then tagged `name`)."""
        with nospace.converted("storing the images of the archive", self.paths.root), \
                self._upload(chunks, source_path, expected_size, "the archive") as path, self._ingest.exclusive():
            before = set(self.images.db.ids())
            try:
                loaded, untagged = self.images.load(
                    path, name, before_publish=self._stored_then_unpack("LoadImage", "the archive")
                )
            except BaseException:
                self._undo_new(before)
                raise
        users = self._users()
        images = [self.images.describe(record, tags, users.get(record.id, ())) for record, tags in loaded]
        log.info("loaded %d image(s): %s", len(images), ", ".join(image.id for image in images))
        return images, untagged

    def tag_image(self, source: str, target: str) -> Image:
        with nospace.converted(f'writing the tag file of "{target}"', self.paths.root):
            record = self.images.tag(source, target)
        return self.get_image(tag_reference(target).familiar()) if record else self.get_image(source)

    def save_images(self, references: list[str]) -> Iterator[bytes]:
        """Chunks of one docker-archive of the named images (each blob once)."""
        if not references:
            raise InvalidArgument("name at least one image to save")
        chosen: dict[str, list[str]] = {}
        records: dict[str, ImageRecord] = {}
        for text in references:
            record = self.images.resolve(text)
            records[record.id] = record
            tags = chosen.setdefault(record.id, [])
            with contextlib.suppress(InvalidArgument):
                ref = tag_reference(text)
                if self.images.db.tag_stat(ref) is not None and ref.familiar() not in tags:
                    tags.append(ref.familiar())
        self.paths.tmp.mkdir(parents=True, exist_ok=True)
        path = self.paths.tmp / f"save-{secrets.token_hex(6)}.tar"
        out = open(path, "w+b")
        try:
            path.unlink()  # the open file is all we need; nothing to clean up if we die
            images = [ArchiveImage(image_id, records[image_id].layers, tuple(tags)) for image_id, tags in chosen.items()]
            with nospace.converted("writing the archive to save", self.paths.tmp):
                write_docker_archive(out, images, self.images.content)
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return _chunks(out)

    # -- removing ----------------------------------------------------------------------------

    def remove_image(self, text: str, force: bool = False) -> RemoveResult:
        """Untag a tag, or remove an image by id; the image goes when its last tag does and no container uses it."""
        with self._catalog:
            record = self.images.resolve(text)
            if self.images.pinned(record.id):
                raise FailedPrecondition(f"image {record.id[7:19]} is being pulled right now: remove it once the pull ends")
            tags = self.images.tags_by_id().get(record.id, [])
            users = self._users().get(record.id, [])
            image = self.images.describe(record, tags, users, name=_familiar(text, tags))
            tag = _as_existing_tag(self.images, text)
            if tag is not None:
                doomed = [tag]
                if len(tags) == 1 and users and not force:
                    raise FailedPrecondition(
                        f'image "{tag.familiar()}" is used by container(s) {", ".join(users)}: remove them first '
                        "(or -f to untag it; the image stays for them)"
                    )
            else:
                if len(tags) > 1 and not force:
                    raise FailedPrecondition(
                        f"image {record.id[7:19]} has {len(tags)} tags ({', '.join(tags)}): remove them by name, or use -f"
                    )
                if users and not force:
                    raise FailedPrecondition(
                        f"image {record.id[7:19]} is used by container(s) {', '.join(users)}: remove them first"
                    )
                doomed = [tag_reference(tag_text) for tag_text in tags]
            untagged = []
            for ref in doomed:
                if self.images.db.remove_tag(ref):
                    untagged.append(ref.familiar())
            faults.step("RemoveImage", "untagged")
            deleted = []
            if len(tags) <= len(untagged) and not users:
                self._delete_image(record)
                deleted.append(record.id)
        return RemoveResult(image=image, untagged=tuple(untagged), deleted=tuple(deleted))

    def prune_images(self, everything: bool) -> tuple[list[str], list[str], int]:
        """Delete images no rootfs uses: untagged ones, or (everything) all of them; (untagged, deleted, bytes)."""
        untagged, deleted, freed = [], [], 0
        with self._catalog:
            tags = self.images.tags_by_id()
            users = self._users()
            for record in self.images.db.records():
                if users.get(record.id) or (tags.get(record.id) and not everything) or self.images.pinned(record.id):
                    continue
                for tag_text in tags.get(record.id, []):
                    if self.images.db.remove_tag(tag_reference(tag_text)):
                        untagged.append(tag_text)
                freed += sum(self.images.content.size(digest) or 0 for digest in record.blobs())
                self._delete_image(record)
                deleted.append(record.id)
        return untagged, deleted, freed

    def _delete_image(self, record: ImageRecord) -> None:
        """Delete an image and the blobs and unpacked layers nothing else uses (catalog lock held)."""
        diff_ids = self.images.delete_record(record)
        still_used = {diff_id for image in self.images.db.records() for diff_id in image.diff_ids}
        still_used |= {layer for rootfs in self.rootfs.records() for layer in rootfs.layers}
        still_used |= self.rootfs.lower_digests()
        for diff_id in diff_ids - still_used:
            with self.layers.lock(diff_id):
                self.layers.delete(diff_id)
        log.info("deleted image %s", record.id)


def _familiar(text: str, tags: list[str]) -> str:
    """The name to report for a request: the tag it named (familiar form), else the image's first tag."""
    with contextlib.suppress(InvalidArgument):
        familiar = tag_reference(text).familiar()
        if familiar in tags:
            return familiar
    return tags[0] if tags else ""


def _as_existing_tag(images: ImageStore, text: str):
    """The reference `text` names when it is an existing tag, else None (then it is an id or a digest)."""
    with contextlib.suppress(InvalidArgument):
        ref = tag_reference(text)
        if images.db.tag_stat(ref) is not None:
            return ref
    return None


def _server_file(source_path: str) -> Path:
    """A server-side archive named by an upload header: absolute, and a regular file (a fifo must not hang us)."""
    if not os.path.isabs(source_path):
        raise InvalidArgument(f'source path "{source_path}" is not absolute: give the full path')
    try:
        fd = os.open(source_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"source {source_path} does not exist") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"source {source_path} is not a regular file: give a tar file")
    finally:
        os.close(fd)
    return Path(source_path)


def _chunks(handle) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(SAVE_CHUNK):
            yield chunk
