"""Content digests of image tars, hashed once and cached in a JSON sidecar keyed by the file's identity."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from services.storage.fsutil import read_json, write_json_atomic

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileKey:
    """What must be unchanged for a cached digest to still describe the file."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int


def file_key(st: os.stat_result) -> FileKey:
    return FileKey(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino, dev=st.st_dev)


def hash_fileobj(fileobj: io.BufferedIOBase) -> str:
    """"sha256:<hex>" of a whole file object, read from the start."""
    fileobj.seek(0)
    digest = hashlib.sha256()
    while chunk := fileobj.read(HASH_CHUNK):
        digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes what goes through it (import, commit)."""

    def __init__(self, fileobj: io.BufferedIOBase):
        self._out = fileobj
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        self._hash.update(view)
        self._out.write(view)
        self.size += len(view)
        return len(view)

    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


class DigestCache:
    """ROOT/imagedb/<name>.json: {"key": FileKey, "digest": "sha256:..."}; a stale key means "hash again"."""

    def __init__(self, directory: Path):
        self._dir = directory

    def _path(self, name: str) -> Path:
        return self._dir / f"{name}.json"

    def lookup(self, name: str, st: os.stat_result) -> str | None:
        data = read_json(self._path(name))
        if not isinstance(data, dict):
            return None
        try:
            cached = FileKey(**data["key"])
        except (KeyError, TypeError):
            return None
        digest = data.get("digest")
        if cached != file_key(st) or not isinstance(digest, str):
            return None
        return digest

    def previous(self, name: str) -> str | None:
        """The digest last stored for `name`, whether or not the file changed since."""
        data = read_json(self._path(name))
        digest = data.get("digest") if isinstance(data, dict) else None
        return digest if isinstance(digest, str) else None

    def store(self, name: str, st: os.stat_result, digest: str) -> None:
        # Not fsynced: losing it only costs one more hash.
        write_json_atomic(self._path(name), {"key": asdict(file_key(st)), "digest": digest}, durable=False)

    def forget(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass
