"""Image records by id (ROOT/imagedb/sha256/<hex>.json) and the tags naming them (one ROOT/image/<name>.tar each).

An image record lists the blobs of an image (its config, whose digest is the image id, and its
layers, bottom first); the blobs themselves are in the content store. A tag is a file: the
seed's ``image/<name>.tar``, a docker-archive of that one image. Which image a tag file holds is
cached in ``imagedb/names/<name>.json`` keyed by the file's identity (size, times, inode), so
resolving a tag costs a stat and a small read; a tar put there by hand (or replaced) has no valid
cache entry and is loaded on first use, as the seed's hand-made tars always were.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import InvalidArgument
from services.common.reference import Reference, parse_file_stem
from services.storage.archive_read import LayerRef
from services.storage.digests import DigestCache
from services.storage.fsutil import fsync_dir, read_json, write_json_atomic
from services.storage.paths import DIGEST_PATTERN, StoragePaths, digest_hex

log = logging.getLogger(__name__)

RECORD_VERSION = 1
TAG_SUFFIX = ".tar"


@dataclass(frozen=True)
class ImageRecord:
    """One image: its id (the config digest), its layers bottom first, and known registry digests."""

    id: str
    layers: tuple[LayerRef, ...]
    repo_digests: tuple[str, ...] = ()
    # When this host first stored the image.
    stored_at: float = 0.0

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)

    def blobs(self) -> set[str]:
        """Every blob digest this image needs: its config and its layer blobs."""
        return {self.id} | {layer.digest for layer in self.layers}

    @property
    def size_bytes(self) -> int:
        return sum(layer.size for layer in self.layers)


def record_to_json(record: ImageRecord) -> dict:
    return {
        "version": RECORD_VERSION,
        "id": record.id,
        "layers": [
            {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type}
            for layer in record.layers
        ],
        "repo_digests": list(record.repo_digests),
        "stored_at": record.stored_at,
    }


def record_from_json(data: object) -> ImageRecord | None:
    """The record in `data`, or None for a torn or foreign file."""
    if not isinstance(data, dict):
        return None
    try:
        layers = tuple(
            LayerRef(
                digest=str(layer["digest"]),
                diff_id=str(layer["diff_id"]),
                size=int(layer["size"]),
                media_type=str(layer["media_type"]),
            )
            for layer in data["layers"]
        )
        record = ImageRecord(
            id=str(data["id"]),
            layers=layers,
            repo_digests=tuple(str(item) for item in data.get("repo_digests", ())),
            stored_at=float(data.get("stored_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError):
        return None
    digests = [record.id] + [layer.digest for layer in layers] + [layer.diff_id for layer in layers]
    if not all(DIGEST_PATTERN.fullmatch(digest) for digest in digests):
        return None
    return record


@dataclass(frozen=True)
class Tag:
    """One tag file: the reference it stands for and its path."""

    reference: Reference
    path: Path


class ImageDB:
    """Image records and tag files of one root; the caller serializes changes (the catalog lock)."""

    def __init__(self, paths: StoragePaths):
        self._paths = paths
        self._names = DigestCache(paths.tag_cache)

    # -- records -----------------------------------------------------------------------------

    def record_path(self, image_id: str) -> Path:
        return self._paths.image_records / f"{digest_hex(image_id)}.json"

    def get(self, image_id: str) -> ImageRecord | None:
        record = record_from_json(read_json(self.record_path(image_id)))
        return record if record is not None and record.id == image_id else None

    def put(self, record: ImageRecord) -> None:
        write_json_atomic(self.record_path(record.id), record_to_json(record))

    def delete(self, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(image_id).unlink()
            fsync_dir(self._paths.image_records)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self._paths.image_records)
        except FileNotFoundError:
            return []
        ids = []
        for name in names:
            if name.endswith(".json"):
                digest = f"sha256:{name[:-5]}"
                if DIGEST_PATTERN.fullmatch(digest):
                    ids.append(digest)
        return sorted(ids)

    def records(self) -> list[ImageRecord]:
        return [record for record in map(self.get, self.ids()) if record is not None]

    def ids_with_prefix(self, hex_prefix: str) -> list[str]:
        return [image_id for image_id in self.ids() if image_id[len("sha256:"):].startswith(hex_prefix)]

    # -- tags --------------------------------------------------------------------------------

    def count(self) -> int:
        """Images on disk without loading anything: distinct ids, a tag file not yet read counting as one."""
        ids = set(self.ids())
        unread = 0
        for tag in self.tags():
            st = self.tag_stat(tag.reference)
            image_id = self.cached_id(tag.reference, st) if st is not None else None
            if image_id is None:
                unread += 1
            else:
                ids.add(image_id)
        return len(ids) + unread


    def tag_path(self, reference: Reference) -> Path:
        return self._paths.images / f"{reference.file_stem()}{TAG_SUFFIX}"

    def tags(self) -> list[Tag]:
        """Every tag file below ROOT/image (hidden temp files and foreign names skipped), sorted."""
        found = []
        for path in self._walk(self._paths.images):
            stem = str(path.relative_to(self._paths.images))[: -len(TAG_SUFFIX)]
            try:
                reference = parse_file_stem(stem)
            except InvalidArgument:
                log.debug("ignoring %s: not a valid image name", path)
                continue
            found.append(Tag(reference, path))
        return sorted(found, key=lambda tag: str(tag.reference))

    @staticmethod
    def _walk(directory: Path) -> Iterator[Path]:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from ImageDB._walk(Path(entry.path))
            elif entry.name.endswith(TAG_SUFFIX) and entry.is_file(follow_symlinks=False):
                yield Path(entry.path)

    def tag_stat(self, reference: Reference) -> os.stat_result | None:
        """The stat of the tag's file, or None when the tag does not exist."""
        try:
            st = os.stat(self.tag_path(reference), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st if stat.S_ISREG(st.st_mode) else None

    def cached_id(self, reference: Reference, st: os.stat_result) -> str | None:
        """The image id the tag file holds, when the file is unchanged since it was last read."""
        image_id = self._names.lookup(reference.file_stem(), st)
        return image_id if image_id is not None and DIGEST_PATTERN.fullmatch(image_id) else None

    def previous_id(self, reference: Reference) -> str | None:
        """The image id the tag's file held when last read, even if the file changed since."""
        image_id = self._names.previous(reference.file_stem())
        return image_id if image_id is not None and DIGEST_PATTERN.fullmatch(image_id) else None

    def remember(self, reference: Reference, path: Path, image_id: str) -> None:
        self._names.store(reference.file_stem(), os.stat(path), image_id)

    def forget(self, reference: Reference) -> None:
        self._names.forget(reference.file_stem())
        # Subdirectories made for "/" in names go with their last entry, as in ROOT/image.
        directory = (self._paths.tag_cache / reference.file_stem()).parent
        while directory != self._paths.tag_cache and self._paths.tag_cache in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                break
            directory = directory.parent

    def remove_tag(self, reference: Reference) -> bool:
        """Delete the tag's file (and its cache entry); False when there was none."""
        path = self.tag_path(reference)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        self.forget(reference)
        self._remove_empty_parents(path.parent)
        return True

    def _remove_empty_parents(self, directory: Path) -> None:
        """Subdirectories made for "/" in names go with their last tag."""
        while directory != self._paths.images and self._paths.images in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
