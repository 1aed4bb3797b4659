"""The content store: every blob (layer as received, image config, manifest) by digest in ROOT/blobs/sha256.

A blob is written to ROOT/blobs/tmp while it is hashed, verified against the announced size and digest,
fsynced and hard-linked into place, so a name in sha256/ always holds exactly its content. Linking
never replaces an existing blob: a concurrent writer of the same digest simply finds it there.
A download that stops may keep its data as tmp/<hex>.partial and continue it later.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from services.common.errors import InvalidArgument, NotFound
from services.storage.fsutil import flocked, fsync_dir, remove_tree
from services.storage.paths import DIGEST_PATTERN, digest_hex

MiB = 1 << 20
READ_LIMIT = 4 * MiB
COPY_CHUNK = MiB
PARTIAL_SUFFIX = ".partial"
PARTIAL_MAX_AGE = 24 * 3600
BLOB_MODE = 0o644


class DigestMismatch(InvalidArgument):
    """A blob's data is not what its digest or size announced."""


def short(digest: str) -> str:
    """sha256:ab12… for messages."""
    return digest[:19] + "…" if len(digest) > 19 else digest


class BlobWriter:
    """One blob being written: hashed as it goes, verified and linked into place by commit()."""

    def __init__(self, store: "ContentStore", temp: Path, fd: int, expected_digest: str | None,
                 expected_size: int | None, resumable: bool):
        self._store = store
        self.path = temp
        self._fd = fd
        self._hash = hashlib.sha256()
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self.resumable = resumable
        self.size = 0
        self.offset = 0
        self.digest: str | None = None
        self.created = False  # True when commit() linked a new blob (it was not in the store before)

    def fileno(self) -> int:
        """The temp file's fd (read/write), for callers that read back what they wrote before committing."""
        return self._fd

    def _rehash_existing(self) -> None:
        """Continue a partial download: hash what is there already, and write after it."""
        while chunk := os.read(self._fd, COPY_CHUNK):
            self._hash.update(chunk)
            self.size += len(chunk)
        self.offset = self.size

    def write(self, data) -> int:
        if self.digest is not None:
            raise ValueError("the blob was committed already")
        view = memoryview(data).cast("B")
        count = len(view)
        if self.expected_size is not None and self.size + count > self.expected_size:
            raise self._mismatch(f"received more than the announced {self.expected_size} bytes")
        self._hash.update(view)
        while self._fd >= 0 and view:
            view = view[os.write(self._fd, view):]
        self.size += count
        return count

    def _mismatch(self, what: str) -> DigestMismatch:
        self.resumable = False  # corrupt data must not be continued
        name = f"blob {short(self.expected_digest)}" if self.expected_digest else "the blob"
        return DigestMismatch(f"{name} is corrupt: {what}: the source sent other data than it announced")

    def commit(self) -> str:
        """Verify size and digest, make the data durable and link it as sha256/<hex>; returns the digest."""
        if self.digest is not None:
            return self.digest
        actual = f"sha256:{self._hash.hexdigest()}"
        if self.expected_size is not None and self.size != self.expected_size:
            raise self._mismatch(f"received {self.size} bytes, {self.expected_size} were announced")
        if self.expected_digest is not None and actual != self.expected_digest:
            raise self._mismatch(f"received {self.size} bytes with digest {short(actual)}")
        if self._fd < 0:
            self.digest = actual
            return actual
        os.fchmod(self._fd, BLOB_MODE)
        os.fsync(self._fd)
        final = self._store.path(actual)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.path, final)
            self.created = True
        except FileExistsError:
            pass  # the same content, written by someone else
        if self.created:
            fsync_dir(final.parent)
        self.digest = actual
        return actual


class ContentStore:
    """Blobs by digest below `root` (ROOT/blobs): sha256/<hex>, tmp/, locks/."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "sha256"
        self.tmp = root / "tmp"
        self.locks = root / "locks"

    def path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the content store: pull or load the image again") from None

    def read_bytes(self, digest: str, limit: int = READ_LIMIT) -> bytes:
        """A small blob (config, manifest) whole; InvalidArgument when it is bigger than `limit`."""
        with self.open(digest) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise InvalidArgument(f"blob {short(digest)} is bigger than {limit} bytes, too big for a config or manifest")
        return data

    def list(self) -> list[str]:
        try:
            names = os.listdir(self.blobs)
        except FileNotFoundError:
            return []
        return sorted(f"sha256:{name}" for name in names if DIGEST_PATTERN.fullmatch(f"sha256:{name}"))

    def delete(self, digest: str) -> int:
        """Remove a blob; returns the bytes freed (0 when it was not there)."""
        final = self.path(digest)
        try:
            size = final.stat().st_size
            final.unlink()
        except FileNotFoundError:
            return 0
        fsync_dir(final.parent)
        return size

    def clean_tmp(self) -> None:
        """At service start: drop unfinished writes, keeping resumable downloads younger than a day."""
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            return
        now = time.time()
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.name.endswith(PARTIAL_SUFFIX) and now - entry.stat().st_mtime < PARTIAL_MAX_AGE:
                    continue
                remove_tree(Path(entry.path))

    def lock(self, digest: str):
        """A per-digest lock across threads and processes, so that each blob is fetched once."""
        return flocked(self.locks / f"{digest_hex(digest)}.lock")

    @contextlib.contextmanager
    def writer(self, expected_digest: str | None = None, expected_size: int | None = None,
               resume: bool = False) -> Iterator[BlobWriter]:
        """A BlobWriter; leaving without commit() drops its data, except a resumable one's (tmp/<hex>.partial)."""
        if expected_digest is not None:
            digest_hex(expected_digest)
        if resume and expected_digest is None:
            raise ValueError("a resumable blob write needs the expected digest")
        self.tmp.mkdir(parents=True, exist_ok=True)
        if resume:
            temp, fd = self._open_partial(expected_digest)
        else:
            temp = self.tmp / f"{secrets.token_hex(8)}.tmp"
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        blob = BlobWriter(self, temp, fd, expected_digest, expected_size, resume)
        try:
            if resume:
                blob._rehash_existing()
                if expected_size is not None and blob.size > expected_size:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    blob = BlobWriter(self, temp, fd, expected_digest, expected_size, resume)
            yield blob
        finally:
            keep = blob.resumable and blob.digest is None
            if not keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            os.close(fd)

    def _open_partial(self, digest: str) -> tuple[Path, int]:
        """tmp/<hex>.partial, opened and flocked (a second resumer waits), created empty if missing."""
        temp = self.tmp / f"{digest_hex(digest)}{PARTIAL_SUFFIX}"
        while True:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(temp).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return temp, fd
            os.close(fd)  # the previous holder committed or dropped it: start on a fresh file

    def verifier(self, expected_digest: str, expected_size: int | None = None) -> BlobWriter:
        """A BlobWriter that only hashes and checks (commit() links nothing): for data already in the store."""
        digest_hex(expected_digest)
        return BlobWriter(self, self.path(expected_digest), -1, expected_digest, expected_size, False)

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> str:
        """Store a small blob (config, manifest); returns its digest."""
        if expected_digest is not None and self.has(expected_digest):
            # Still verified: a caller must never get a digest the data does not have.
            if f"sha256:{hashlib.sha256(data).hexdigest()}" == expected_digest:
                return expected_digest
        with self.writer(expected_digest, len(data)) as blob:
            blob.write(data)
            return blob.commit()

    def ingest(self, fileobj: BinaryIO, expected_digest: str | None = None, expected_size: int | None = None) -> str:
        """Copy a stream into the store, verifying it; returns its digest."""
        with self.writer(expected_digest, expected_size) as blob:
            while chunk := fileobj.read(COPY_CHUNK):
                blob.write(chunk)
            return blob.commit()
