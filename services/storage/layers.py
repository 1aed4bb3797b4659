"""Read-only layers: each layer unpacked once, keyed by its diff id, into ROOT/layers/sha256/<hex>/fs.

A layer appears only complete: extraction goes into ROOT/layers/tmp/<hex>-<random>/fs, the
data is synced, layer.json is written, and the whole directory is renamed into place. A per-digest
flock makes concurrent first uses of one layer unpack it once, across threads and processes. OCI
whiteouts become overlay whiteouts while unpacking, so a stack of layers mounts as the image.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from typing import BinaryIO

from services.common import linux
from services.common.errors import InvalidArgument
from services.storage import compression, tarsafe
from services.storage.fsutil import disk_usage, flocked, fsync_dir, read_json, remove_tree, write_json_atomic
from services.storage.model import Layer, Stats
from services.storage.paths import DIGEST_PATTERN, StoragePaths

log = logging.getLogger(__name__)

LAYER_META = "layer.json"


class LayerStore:
    def __init__(self, paths: StoragePaths, stats: Stats):
        self._paths = paths
        self._stats = stats

    def get(self, digest: str) -> Layer | None:
        """The complete layer of `digest`, or None (a layer without its layer.json is not complete)."""
        data = read_json(self._paths.layer_dir(digest) / LAYER_META)
        if not isinstance(data, dict) or not self._paths.layer_fs(digest).is_dir():
            return None
        return Layer(digest=digest, size_bytes=int(data.get("size_bytes", 0)), created_at=float(data.get("created_at", 0)))

    def list(self) -> list[Layer]:
        try:
            names = sorted(os.listdir(self._paths.layer_store))
        except FileNotFoundError:
            return []
        layers = []
        for hex_digest in names:
            digest = f"sha256:{hex_digest}"
            if DIGEST_PATTERN.fullmatch(digest):
                layer = self.get(digest)
                if layer is not None:
                    layers.append(layer)
        return layers

    def lock(self, digest: str):
        """The per-digest lock held while a layer is created or deleted."""
        return flocked(self._paths.layer_lock(digest))

    def ensure(self, diff_id: str, open_blob: Callable[[], BinaryIO], what: str) -> Layer:
        """The layer of `diff_id`, unpacking the blob `open_blob()` returns if it is not there yet.

        A compressed blob is decompressed into a temp tar first, its digest checked against
        `diff_id`; a plain tar blob's digest is its diff id (the content store checked it).
        """
        layer = self.get(diff_id)
        if layer is not None:
            return layer
        with self.lock(diff_id):
            layer = self.get(diff_id)
            if layer is not None:
                return layer
            with open_blob() as blob:
                head = blob.read(6)
                blob.seek(0)
                if compression.detect(head) == compression.NONE:
                    return self._extract(diff_id, blob, what)
                return self._extract_compressed(diff_id, blob, what)

    def _extract_compressed(self, diff_id: str, blob: BinaryIO, what: str) -> Layer:
        self._paths.layer_tmp.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self._paths.layer_tmp) as tar:
            got, _ = compression.decompress_to(blob, tar, what)
            if got != diff_id:
                raise InvalidArgument(f"{what}: the layer's content has diff id {got}, not {diff_id} as its image says")
            tar.seek(0)
            return self._extract(diff_id, tar, what)

    def _extract(self, digest: str, tar: BinaryIO, what: str) -> Layer:
        final = self._paths.layer_dir(digest)
        self._paths.layer_tmp.mkdir(parents=True, exist_ok=True)
        self._paths.layer_store.mkdir(parents=True, exist_ok=True)
        tmp = self._paths.layer_tmp / f"{final.name}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            tmp.mkdir(0o700)
            (tmp / "fs").mkdir(0o755)
            tarsafe.extract(tar, str(tmp / "fs"), what, whiteouts=True)
            size = disk_usage(tmp / "fs")
            created = time.time()
            write_json_atomic(tmp / LAYER_META, {"digest": digest, "size_bytes": size, "created_at": created}, durable=False)
            # One syncfs for the whole tree: a crash after the rename never shows empty files.
            linux.syncfs(tmp)
            if final.exists():
                # A complete layer.json was missing: an unfinished leftover from an older version.
                remove_tree(final)
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except BaseException:
            remove_tree(tmp)
            raise
        self._stats.extractions += 1
        self._stats.extracted_digests.append(digest)
        log.info("extracted %s into %s: %d bytes in %.2fs", what, final, size, time.monotonic() - started)
        return Layer(digest=digest, size_bytes=size, created_at=created)

    def delete(self, digest: str) -> int:
        """Delete a layer (the caller holds its lock and checked nothing uses it); returns bytes freed."""
        layer = self.get(digest)
        final = self._paths.layer_dir(digest)
        if not final.exists():
            return 0
        self._paths.layer_tmp.mkdir(parents=True, exist_ok=True)
        doomed = self._paths.layer_tmp / f"{final.name}-deleting-{secrets.token_hex(4)}"
        os.rename(final, doomed)
        fsync_dir(final.parent)
        remove_tree(doomed)
        return layer.size_bytes if layer is not None else 0
