"""Tag files (ROOT/image/<name>.tar): written at once, or thin first and completed in the background.

A complete tag file is a docker-archive holding every blob of its image (so `docker load -i
image/NAME.tar` works, as the seed's tars could be copied anywhere). Copying a big image's blobs
takes time in proportion to the image, so `commit` and `tag` publish a *thin* file first: the
same manifest.json and index.json, the config, and only the blobs the change made (for a commit,
its new layer). It is valid for this host at once (the tag resolves to its image through the
name cache; the rest of the blobs are in the content store), and a background thread replaces
it with the complete file, atomically, a moment later. A marker in ROOT/imagedb/thin/ is written
before a thin file is published and removed once it is complete, so the service completes at
start whatever a crash left thin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tarfile
import threading
from collections.abc import Callable

from services.common import nospace
from services.common.errors import AlreadyExists, MydockerError, NoSpace
from services.common.reference import Reference
from services.storage.archive_write import ArchiveImage, write_docker_archive
from services.storage.content import ContentStore
from services.storage.fsutil import fsync_dir, read_json, temp_name, write_json_atomic
from services.storage.imagedb import ImageDB, ImageRecord
from services.storage.paths import DIGEST_PATTERN, StoragePaths

log = logging.getLogger(__name__)

_STOP = None
# How often a completion a full disk stopped looks for room again (no restart needed once space is freed).
RETRY_SECONDS = 1.0


class TagFiles:
    """Writes tag files; owns the background thread that completes thin ones."""

    def __init__(self, paths: StoragePaths, db: ImageDB, content: ContentStore, catalog: threading.RLock):
        self._paths = paths
        self._db = db
        self._content = content
        self._catalog = catalog
        self._jobs: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0

    # -- writing -----------------------------------------------------------------------------

    def write(
        self,
        ref: Reference,
        record: ImageRecord,
        replace: bool,
        keep: frozenset[str] | None = None,
        written: Callable[[], None] = lambda: None,
    ) -> str:
        """Publish `ref` as a tag file of `record`; returns the id the tag held before ("" if none).

        With `keep`, the file is thin (only the config and the blobs in `keep`) and completed later.
        `written()` runs once the hidden temp file is complete, before the rename (a fault step).
        """
        path = self._db.tag_path(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        omit = frozenset() if keep is None else frozenset(layer.digest for layer in record.layers) - keep
        tmp = temp_name(path)
        try:
            self._write_archive(tmp, ref, record, omit)
            written()
            with self._catalog:
                previous = ""
                st = self._db.tag_stat(ref)
                if st is not None:
                    previous = self._db.cached_id(ref, st) or "?"
                    if not replace and previous != record.id:
                        raise AlreadyExists(f'image "{ref.familiar()}" already exists: choose another name or replace it')
                if omit:
                    write_json_atomic(self._marker(ref), {"reference": str(ref), "id": record.id})
                os.replace(tmp, path)
                fsync_dir(path.parent)
                self._db.remember(ref, path, record.id)
                if not omit:
                    self._drop_marker(ref)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if omit:
            self._enqueue(ref, record.id)
        return "" if previous == record.id else previous

    def _write_archive(self, tmp, ref: Reference, record: ImageRecord, omit: frozenset[str]) -> None:
        with open(tmp, "xb") as out:
            write_docker_archive(out, [ArchiveImage(record.id, record.layers, (ref.familiar(),))], self._content, omit)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)

    # -- completing --------------------------------------------------------------------------

    def _marker(self, ref: Reference):
        return self._paths.thin_markers / f"{ref.file_stem()}.json"

    def _drop_marker(self, ref: Reference) -> None:
        marker = self._marker(ref)
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
            directory = marker.parent
            while directory != self._paths.thin_markers and self._paths.thin_markers in directory.parents:
                try:
                    directory.rmdir()
                except OSError:
                    break
                directory = directory.parent

    def _enqueue(self, ref: Reference, image_id: str) -> None:
        with self._idle:
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="tag-files", daemon=True)
                self._worker.start()
        self._jobs.put((ref, image_id))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            ref, image_id = job
            try:
                self.complete(ref, image_id)
            except (MydockerError, OSError) as err:
                # The marker stays: the next start tries again (after a full disk, a timer does once there is room).
                log.warning("could not complete the tag file of %s: %s", ref.familiar(), err)
                if isinstance(err, NoSpace) or nospace.is_no_space(err):
                    self._retry_when_room(ref, image_id)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _retry_when_room(self, ref: Reference, image_id: str) -> None:
        """Queue the completion again once the image's blobs would fit, checking every RETRY_SECONDS."""

        def check() -> None:
            record = self._db.get(image_id)
            if record is None:
                return
            needed = sum(self._content.size(digest) or 0 for digest in record.blobs())
            if nospace.free_bytes(self._paths.images) > needed:
                self._enqueue(ref, image_id)
            else:
                self._retry_when_room(ref, image_id)

        timer = threading.Timer(RETRY_SECONDS, check)
        timer.daemon = True
        timer.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no thin tag file waits to be completed (tests, a clean stop)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def complete(self, ref: Reference, image_id: str) -> bool:
        """Replace the thin file of `ref` with the complete one, if the tag still holds `image_id`."""
        record = self._db.get(image_id)
        path = self._db.tag_path(ref)
        st = self._db.tag_stat(ref)
        if record is None or st is None or not self._holds(ref, st, image_id):
            self._drop_marker(ref)
            return False
        tmp = temp_name(path)
        try:
            try:
                self._write_archive(tmp, ref, record, frozenset())
            except (MydockerError, OSError):
                if self._db.tag_stat(ref) is None or self._db.get(image_id) is None:
                    self._drop_marker(ref)  # removed meanwhile (rmi took its blobs): nothing to complete
                    return False
                raise
            with self._catalog:
                now = self._db.tag_stat(ref)
                if now is None:
                    self._drop_marker(ref)  # removed meanwhile (rmi): nothing left to complete
                    return False
                if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                    return False  # retagged meanwhile: a thin rewrite has its own marker and job, a full one none
                os.replace(tmp, path)
                fsync_dir(path.parent)
                self._db.remember(ref, path, image_id)
                self._drop_marker(ref)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        log.info("completed the tag file of %s", ref.familiar())
        return True

    def _holds(self, ref: Reference, st: os.stat_result, image_id: str) -> bool:
        """Whether the tag file is the one written for `image_id` (its name cache, else its manifest.json)."""
        if self._db.cached_id(ref, st) == image_id:
            return True
        return config_of(self._db.tag_path(ref)) == image_id

    def complete_pending(self) -> int:
        """At start, before serving: queue every tag file a crash left thin; returns how many."""
        from services.common.reference import parse

        count = 0
        for marker in sorted(self._paths.thin_markers.rglob("*.json")) if self._paths.thin_markers.is_dir() else ():
            data = read_json(marker)
            text = data.get("reference") if isinstance(data, dict) else None
            image_id = data.get("id") if isinstance(data, dict) else None
            if not isinstance(text, str) or not isinstance(image_id, str) or not DIGEST_PATTERN.fullmatch(image_id):
                marker.unlink()
                continue
            self._enqueue(parse(text), image_id)
            count += 1
        return count


def config_of(path) -> str | None:
    """The config digest a one-image docker-archive names in its manifest.json, None when unreadable."""
    try:
        with tarfile.open(path) as archive:
            member = archive.extractfile("manifest.json")
            manifest = json.load(member) if member is not None else None
    except (OSError, tarfile.TarError, KeyError, ValueError):
        return None
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        return None
    config = manifest[0].get("Config", "")
    if isinstance(config, str) and config.startswith("blobs/sha256/"):
        return "sha256:" + config.rsplit("/", 1)[-1]
    return None
