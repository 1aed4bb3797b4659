"""Layer and archive compression: detection by magic bytes, streaming decompression, and layer media types."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import zlib
from typing import BinaryIO

import zstandard

from services.common.errors import InvalidArgument

GZIP, ZSTD, BZIP2, XZ, NONE = "gzip", "zstd", "bzip2", "xz", "none"
MAGIC = (
    (b"\x1f\x8b", GZIP),
    (b"\x28\xb5\x2f\xfd", ZSTD),
    (b"BZh", BZIP2),
    (b"\xfd7zXZ\x00", XZ),
)
HEAD_SIZE = 6
COPY_CHUNK = 1 << 20

DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_NONDISTRIBUTABLE_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
_LAYER_MEDIA_TYPES = {
    DOCKER_LAYER: NONE,
    DOCKER_LAYER_GZIP: GZIP,
    DOCKER_FOREIGN_LAYER_GZIP: GZIP,
    OCI_LAYER: NONE,
    OCI_LAYER + "+gzip": GZIP,
    OCI_LAYER + "+zstd": ZSTD,
    OCI_NONDISTRIBUTABLE_LAYER: NONE,
    OCI_NONDISTRIBUTABLE_LAYER + "+gzip": GZIP,
    OCI_NONDISTRIBUTABLE_LAYER + "+zstd": ZSTD,
}
_DECOMPRESSION_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError)


def detect(head: bytes) -> str:
    """The compression of data starting with `head` (at least its first 6 bytes): gzip, zstd, bzip2, xz or none."""
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return NONE


def layer_media_type(compression: str, oci: bool) -> str:
    """The layer media type for `compression` in an OCI or a Docker v2 manifest."""
    if oci and compression in (NONE, GZIP, ZSTD):
        return OCI_LAYER if compression == NONE else f"{OCI_LAYER}+{compression}"
    if not oci and compression in (NONE, GZIP):
        return DOCKER_LAYER if compression == NONE else DOCKER_LAYER_GZIP
    kind = "OCI" if oci else "Docker v2"
    raise InvalidArgument(f"a {compression} layer cannot be described in a {kind} manifest: use gzip, zstd or no compression")


def compression_of_media_type(media_type: str) -> str:
    """The compression a layer media type announces; InvalidArgument for anything that is not a layer type."""
    try:
        return _LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        raise InvalidArgument(f'unsupported layer media type "{media_type}": expected a Docker v2 or OCI layer type') from None


class _ZstdFrameWalker:
    """Follows zstd frame and block headers through the compressed bytes, to tell a complete stream
    from a truncated one (the zstandard reader just stops at the end of its input)."""

    def __init__(self) -> None:
        self._header = bytearray()
        self._need = 4  # bytes of the next header to collect
        self._state = "magic"
        self._skip = 0  # bytes of block content, checksum or skippable frame to pass over
        self._checksum = False
        self.frames = 0

    def complete(self) -> bool:
        return self.frames > 0 and self._state == "magic" and not self._header and self._skip == 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                continue
            take = min(self._need - len(self._header), len(view))
            self._header += view[:take]
            view = view[take:]
            if len(self._header) == self._need:
                self._advance(bytes(self._header))

    def _advance(self, header: bytes) -> None:
        self._header.clear()
        if self._state == "magic":
            magic = int.from_bytes(header, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            else:
                raise zstandard.ZstdError("unknown frame magic")
        elif self._state == "skippable":
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = "magic", 4
            self.frames += 1
        elif self._state == "descriptor":
            flags = header[0]
            single_segment = bool(flags & 0x20)
            self._checksum = bool(flags & 0x04)
            content_size = (1 if single_segment else 0, 2, 4, 8)[flags >> 6]
            self._state, self._need = "block", 3
            self._skip = (0 if single_segment else 1) + (0, 1, 2, 4)[flags & 0x03] + content_size
        elif self._state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            self._skip = 1 if kind == 1 else size
            if last:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4
                self.frames += 1


class _CheckedSource(io.RawIOBase):
    """The compressed side of a zstd stream, walked by a _ZstdFrameWalker as the decompressor reads it."""

    def __init__(self, fileobj: BinaryIO, walker: _ZstdFrameWalker):
        self._fileobj = fileobj
        self._walker = walker

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._fileobj.read(len(buffer))
        self._walker.feed(data)
        buffer[: len(data)] = data
        return len(data)


class _Decompressed(io.RawIOBase):
    """A decompressing reader whose failures, truncation included, are one-line InvalidArgument errors."""

    def __init__(self, reader: BinaryIO, compression: str, what: str, walker: _ZstdFrameWalker | None = None):
        self._reader = reader
        self._compression = compression
        self._what = what
        self._walker = walker

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._reader.read(len(buffer))
        except _DECOMPRESSION_ERRORS as err:
            raise InvalidArgument(f"{self._what}: its {self._compression} data is corrupt or truncated ({err})") from None
        if not data and self._walker is not None and not self._walker.complete():
            raise InvalidArgument(f"{self._what}: its zstd data is truncated")
        buffer[: len(data)] = data
        return len(data)


def _head(fileobj: BinaryIO) -> tuple[bytes, BinaryIO]:
    """The first bytes of `fileobj` and a reader that still yields them."""
    if fileobj.seekable():
        start = fileobj.tell()
        head = fileobj.read(HEAD_SIZE)
        fileobj.seek(start)
        return head, fileobj
    buffered = fileobj if isinstance(fileobj, io.BufferedReader) else io.BufferedReader(fileobj)
    return buffered.peek(HEAD_SIZE)[:HEAD_SIZE], buffered


def open_decompressed(fileobj: BinaryIO, what: str = "the data") -> BinaryIO:
    """A streaming reader of `fileobj`'s content, decompressed if it starts with a known magic."""
    head, source = _head(fileobj)
    compression = detect(head)
    if compression == NONE:
        return source
    walker = None
    if compression == GZIP:
        reader: BinaryIO = gzip.GzipFile(fileobj=source, mode="rb")
    elif compression == ZSTD:
        walker = _ZstdFrameWalker()
        checked = io.BufferedReader(_CheckedSource(source, walker), COPY_CHUNK)
        reader = zstandard.ZstdDecompressor().stream_reader(checked, read_size=COPY_CHUNK, read_across_frames=True)
    elif compression == BZIP2:
        reader = bz2.BZ2File(source)
    else:
        reader = lzma.LZMAFile(source)
    return io.BufferedReader(_Decompressed(reader, compression, what, walker), COPY_CHUNK)


def decompress_to(src: BinaryIO, dst: BinaryIO, what: str = "the data") -> tuple[str, int]:
    """Write `src` decompressed into `dst`; returns the diff id ("sha256:..." of what was written) and its size."""
    reader = open_decompressed(src, what)
    digest = hashlib.sha256()
    size = 0
    while chunk := reader.read(COPY_CHUNK):
        digest.update(chunk)
        dst.write(chunk)
        size += len(chunk)
    return f"sha256:{digest.hexdigest()}", size
