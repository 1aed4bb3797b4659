"""Images: resolve references, write tag files, load archives, import rootfs tars, tag, untag and delete.

The caller (StorageCore) passes its catalog lock: every change to records and tag files happens
under it, while long work (hashing, copying blobs, writing a tag file) happens before, in hidden
temp files that are published with one rename or link.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from services.common import image_config, nospace, reference
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.reference import Reference
from services.storage.archive_read import LayerRef, LoadedImage, read_archive
from services.storage.content import ContentStore
from services.storage.imagedb import ImageDB, ImageRecord
from services.storage.model import Image, Stats
from services.storage.paths import DIGEST_PATTERN, StoragePaths
from services.storage.tagfiles import TagFiles

log = logging.getLogger(__name__)

NOT_FOUND_HINT = "load, pull or import it first (mydocker images lists what there is)"


def host_architecture() -> str:
    return reference.host_platform().architecture


class ImageStore:
    """The images of one root."""

    def __init__(self, paths: StoragePaths, stats: Stats, catalog: threading.RLock):
        self._paths = paths
        self._stats = stats
        self._catalog = catalog
        self.content = ContentStore(paths.blobs)
        self.db = ImageDB(paths)
        self.tag_files = TagFiles(paths, self.db, self.content, catalog)
        # Configs are immutable (their digest is the id): parsed once.
        self._specs: dict[str, image_config.ImageSpec] = {}
        # Images a pull is still working on (it has not tagged them yet): pruning leaves them alone.
        self._pins: dict[str, int] = {}
        # Unpacks (and so checks) an image's layers; set by the core, which owns the layer store.
        self.unpack: Callable[[ImageRecord, str], None] = lambda record, what: None

    def start(self) -> None:
        for directory in (self._paths.images, self._paths.image_records, self._paths.blobs):
            directory.mkdir(parents=True, exist_ok=True)
        self.content.clean_tmp()

    # -- reading -----------------------------------------------------------------------------

    def spec(self, image_id: str) -> image_config.ImageSpec:
        spec = self._specs.get(image_id)
        if spec is None:
            spec = image_config.parse_config(self.content.read_bytes(image_id))
            self._specs[image_id] = spec
        return spec

    def config_document(self, image_id: str) -> dict:
        return json.loads(self.content.read_bytes(image_id))

    def resolve(self, text: str) -> ImageRecord:
        """The image `text` names: a tag, name@digest, a full id, or a unique id prefix (in that order)."""
        if not text:
            raise InvalidArgument("the image reference is required")
        if DIGEST_PATTERN.fullmatch(text):
            record = self.db.get(text)
            if record is not None:
                return record
        parse_error: InvalidArgument | None = None
        try:
            ref: Reference | None = reference.parse(text)
        except InvalidArgument as err:
            ref, parse_error = None, err
        if ref is not None:
            record = self._by_digest(ref) if ref.digest else self.resolve_tag(ref)
            if record is not None:
                return record
        prefix = reference.id_prefix(text)
        if prefix:
            matches = self.db.ids_with_prefix(prefix)
            if len(matches) == 1:
                record = self.db.get(matches[0])
                if record is not None:
                    return record
            if len(matches) > 1:
                raise InvalidArgument(f'image id prefix "{text}" is ambiguous: it matches {len(matches)} images; give more digits')
        if ref is None and prefix is None and parse_error is not None:
            raise parse_error
        raise NotFound(f'image "{text}" not found: {NOT_FOUND_HINT}')

    def _by_digest(self, ref: Reference) -> ImageRecord | None:
        wanted = f"{ref.name}@{ref.digest}"
        for record in self.db.records():
            if wanted in record.repo_digests:
                return record
        return None

    def resolve_tag(self, ref: Reference) -> ImageRecord | None:
        """The image of a tag file; a file without a valid cache entry (hand-made, replaced) is loaded now."""
        st = self.db.tag_stat(ref)
        if st is None:
            return None
        image_id = self.db.cached_id(ref, st)
        if image_id is not None:
            record = self.db.get(image_id)
            if record is not None:
                return record
        with nospace.converted(f'loading the image file of "{ref.familiar()}"', self._paths.root):
            return self._adopt(ref)

    def _adopt(self, ref: Reference) -> ImageRecord | None:
        path = self.db.tag_path(ref)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        loaded = read_archive(path, self.content, what=f"image file {path}", flat_config=self._adopted_config(ref, st.st_mtime))
        self._stats.hashes += 1
        chosen = _choose(loaded, ref)
        what = f'image "{ref.familiar()}" ({path})'
        before = set(self.db.ids())
        with self._catalog:
            for image in loaded:
                self._store_record(image)
            record = self.db.get(chosen.config_digest)
            assert record is not None
        try:
            self.unpack(record, what)
        except BaseException:
            with self._catalog:
                for image in loaded:
                    stale = self.db.get(image.config_digest)
                    if image.config_digest not in before and stale is not None:
                        self.delete_record(stale)
            raise
        with self._catalog:
            if self.db.tag_stat(ref) is not None and _same_file(os.stat(path), st):
                self.db.remember(ref, path, record.id)
        log.info("loaded tag file %s: %s", path, record.id)
        return record

    def _adopted_config(self, ref: Reference, created: float) -> Callable[[str], bytes]:
        """The config of a hand-made rootfs tar: the one it had before when its content is unchanged.

        Its `created` comes from the file's mtime, so without this a touched (or copied again) tar
        would become a new image each time, leaving the old one behind untagged.
        """
        fresh = self._flat_config(created)
        previous_id = self.db.previous_id(ref)
        previous = self.db.get(previous_id) if previous_id else None

        def build(diff_id: str) -> bytes:
            if previous is not None and previous.diff_ids == (diff_id,) and self.content.has(previous.id):
                return self.content.read_bytes(previous.id)
            return fresh(diff_id)

        return build

    @staticmethod
    def _flat_config(created: float, changes: Iterable[str] = ()) -> Callable[[str], bytes]:
        parsed = [image_config.parse_change(line) for line in changes]

        def build(diff_id: str) -> bytes:
            document = image_config.flat_rootfs_config(
                diff_id, image_config.format_created(created), host_architecture()
            )
            if parsed:
                document = image_config.apply_changes(document, parsed)
            return image_config.config_bytes(document)

        return build

    def complete_layers(self, image_id: str) -> tuple[LayerRef, ...] | None:
        """The layers of a stored image whose blobs are all here, else None."""
        record = self.db.get(image_id)
        if record is None or not all(self.content.has(digest) for digest in record.blobs()):
            return None
        return record.layers

    def pin(self, image_id: str) -> None:
        """Mark an image as in use by work in progress (caller holds the catalog lock)."""
        self._pins[image_id] = self._pins.get(image_id, 0) + 1

    def unpin(self, image_id: str) -> int:
        """Undo one pin; returns how many remain (caller holds the catalog lock)."""
        left = self._pins.get(image_id, 0) - 1
        if left > 0:
            self._pins[image_id] = left
        else:
            self._pins.pop(image_id, None)
        return max(left, 0)

    def pinned(self, image_id: str) -> bool:
        return self._pins.get(image_id, 0) > 0

    def add_repo_digest(self, image_id: str, repo_digest: str) -> None:
        """Remember a registry manifest of the image (caller holds the catalog lock)."""
        record = self.db.get(image_id)
        if record is not None and repo_digest not in record.repo_digests:
            self.db.put(ImageRecord(record.id, record.layers, record.repo_digests + (repo_digest,), record.stored_at))

    def store_record(self, image: LoadedImage, repo_digest: str = "") -> ImageRecord:
        """Create (or complete) the record of an image whose blobs are stored; the caller holds the catalog lock."""
        return self._store_record(image, repo_digest)

    def _store_record(self, image: LoadedImage, repo_digest: str = "") -> ImageRecord:
        """Create (or complete) the record of a loaded image; the caller holds the catalog lock."""
        existing = self.db.get(image.config_digest)
        digests = tuple(existing.repo_digests) if existing else ()
        if repo_digest and repo_digest not in digests:
            digests += (repo_digest,)
        layers = image.layers
        if existing is not None and layers != existing.layers and all(self.content.has(d) for d in existing.blobs()):
            # The same image again with its layers compressed otherwise (an OCI archive after a docker save, a pull):
            # the recorded blobs stay. Replacing them would leave the old ones named by no record, so never
            # deleted by rmi; this copy's own are dropped by load (a pull leaves them to the next start).
            layers = existing.layers
        record = ImageRecord(
            id=image.config_digest,
            layers=layers,
            repo_digests=digests,
            stored_at=existing.stored_at if existing else time.time(),
        )
        if record != existing:
            self.db.put(record)
        return record

    def tags_by_id(self) -> dict[str, list[str]]:
        """Image id -> its tags (familiar form), loading tag files not seen before."""
        result: dict[str, list[str]] = {}
        for tag in self.db.tags():
            try:
                record = self.resolve_tag(tag.reference)
            except InvalidArgument as err:
                log.warning("tag file %s is not an image: %s", tag.path, err)
                continue
            if record is not None:
                result.setdefault(record.id, []).append(tag.reference.familiar())
        return result

    def describe(self, record: ImageRecord, tags: list[str], users: Iterable[str], name: str = "") -> Image:
        spec = self.spec(record.id)
        return Image(
            id=record.id,
            name=_short_name(name or (tags[0] if tags else "")),
            repo_tags=tuple(tags),
            repo_digests=record.repo_digests,
            size_bytes=record.size_bytes,
            created_at=image_config.parse_created(spec.created),
            spec=spec,
            layers=record.layers,
            container_ids=tuple(users),
        )

    # -- writing tags ------------------------------------------------------------------------

    def write_tag(
        self,
        ref: Reference,
        record: ImageRecord,
        replace: bool,
        written: Callable[[], None] = lambda: None,
        keep: frozenset[str] | None = None,
    ) -> str:
        """Publish `ref` as a tag file of `record` (thin, completed later, with `keep`: see tagfiles.py).

        Returns the id the tag held before ("" if none).
        """
        return self.tag_files.write(ref, record, replace, keep, written)

    def check_tag_free(self, ref: Reference, replace: bool) -> None:
        if not replace and self.db.tag_stat(ref) is not None:
            raise AlreadyExists(f'image "{ref.familiar()}" already exists: choose another name or replace it')

    def tag(self, source: str, target: str) -> ImageRecord:
        record = self.resolve(source)
        ref = tag_reference(target)
        # Thin: a tag costs the same for any image size; the file is completed in the background.
        self.write_tag(ref, record, replace=True, keep=frozenset())
        return record

    # -- loading -----------------------------------------------------------------------------

    def load(
        self, archive: Path, name: str = "", before_publish: Callable[[ImageRecord], None] = lambda record: None
    ) -> tuple[list[tuple[ImageRecord, list[str]]], list[str]]:
        """Store every image of an archive and move its tags to them; returns (images with tags, untagged).

        `before_publish(record)` runs for every image before any tag is written (the caller unpacks
        and so checks the layers): a failure there leaves no tag behind.
        """
        named = tag_reference(name) if name else None
        # Refused from inside read_archive, so that it removes the layer blob it has just stored.
        flat_config = self._flat_config(time.time()) if named is not None else _refuse_unnamed_rootfs
        loaded = read_archive(archive, self.content, what="the archive", flat_config=flat_config)
        stored = []
        for image in loaded:
            with self._catalog:
                record = self._store_record(image)
                if record.layers != image.layers:
                    # An image we had, with other blobs: this archive's go unless another image uses them.
                    for digest in {layer.digest for layer in image.layers} - self.blobs_in_use(self.db.records()):
                        self.content.delete(digest)
            tags = [named] if named is not None else [tag_reference(text) for text in image.repo_tags]
            stored.append((record, tags))
        for record, _ in stored:
            before_publish(record)
        results, untagged = [], []
        for record, tags in stored:
            for ref in tags:
                previous = self.write_tag(ref, record, replace=True)
                if previous:
                    untagged.append(ref.familiar())
            results.append((record, [ref.familiar() for ref in tags]))
        return results, untagged

    def import_rootfs(
        self,
        archive: Path,
        name: str,
        replace: bool,
        changes: Iterable[str] = (),
        before_publish: Callable[[ImageRecord], None] = lambda record: None,
    ) -> ImageRecord:
        """A plain rootfs tar as a one-layer image tagged `name`."""
        ref = tag_reference(name)
        self.check_tag_free(ref, replace)
        loaded = read_archive(archive, self.content, what=f'image "{name}"', flat_config=self._flat_config(time.time(), changes))
        if len(loaded) != 1 or loaded[0].source_format != "rootfs":
            raise InvalidArgument(
                f'image "{name}": the file is a {loaded[0].source_format if loaded else "empty archive"}, '
                "not a rootfs tar: use mydocker load -i FILE"
            )
        with self._catalog:
            record = self._store_record(loaded[0])
        before_publish(record)
        self.write_tag(ref, record, replace)
        return record

    def store_new(self, config: bytes, layers: tuple[LayerRef, ...]) -> ImageRecord:
        """Record an image built here (commit) from a config and layers already in the content store."""
        config_digest = self.content.put_bytes(config)
        with self._catalog:
            return self._store_record(LoadedImage(config_digest, layers, (), "commit"))

    # -- removing ----------------------------------------------------------------------------

    def blobs_in_use(self, keep: Iterable[ImageRecord]) -> set[str]:
        used: set[str] = set()
        for record in keep:
            used |= record.blobs()
        return used

    def delete_record(self, record: ImageRecord) -> set[str]:
        """Delete an image record and its blobs no other image needs; returns the diff ids it had."""
        self.db.delete(record.id)
        self._specs.pop(record.id, None)
        used = self.blobs_in_use(self.db.records())
        for digest in record.blobs() - used:
            self.content.delete(digest)
        return set(record.diff_ids)


def _refuse_unnamed_rootfs(diff_id: str) -> bytes:
    raise InvalidArgument("the archive is a plain rootfs tar, which names no image: give a name (mydocker load -i FILE NAME)")


def _choose(loaded: list[LoadedImage], ref: Reference) -> LoadedImage:
    """Of the images in a tag's file, the one that carries the tag (else the first)."""
    if not loaded:
        raise InvalidArgument(f'image "{ref.familiar()}": the file holds no image')
    for image in loaded:
        for text in image.repo_tags:
            with contextlib.suppress(InvalidArgument):
                if reference.parse(text) == ref:
                    return image
    return loaded[0]


def _short_name(familiar: str) -> str:
    """The name as the seed writes it (and as its file is called): ":latest" left out."""
    return familiar[: -len(":latest")] if familiar.endswith(":latest") else familiar


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_dev, b.st_size, b.st_mtime_ns)


def tag_reference(text: str) -> Reference:
    """A reference that can name a tag file: a name with a tag (":latest" added), never a digest."""
    ref = reference.parse(text)
    if ref.digest:
        raise InvalidArgument(f'"{text}" is a digest reference: a tag needs a name[:tag], not @sha256:...')
    return ref
