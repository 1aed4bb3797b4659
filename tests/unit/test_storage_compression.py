"""Unit tests of compression detection, streaming decompression (truncation included) and layer media types."""

import bz2
import gzip
import hashlib
import io
import lzma
import os
import threading

import pytest
import zstandard

from services.common.errors import InvalidArgument
from services.storage import compression
from services.storage.compression import compression_of_media_type, decompress_to, detect, layer_media_type, open_decompressed

DATA = os.urandom(100_000) + b"\0" * 3_000_000 + os.urandom(1000)
COMPRESSORS = {
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "none": lambda data: data,
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_detect_and_decompress(kind):
    packed = COMPRESSORS[kind](DATA)
    assert detect(packed[:6]) == kind
    assert open_decompressed(io.BytesIO(packed)).read() == DATA
    out = io.BytesIO()
    assert decompress_to(io.BytesIO(packed), out) == (f"sha256:{hashlib.sha256(DATA).hexdigest()}", len(DATA))
    assert out.getvalue() == DATA


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_streams_that_cannot_seek(kind):
    packed = COMPRESSORS[kind](DATA)
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb", buffering=0) as reader:
        writer = threading.Thread(target=lambda: (os.write(write_fd, packed), os.close(write_fd)))
        writer.start()
        assert open_decompressed(reader).read() == DATA
        writer.join()


def test_several_frames_and_members():
    assert open_decompressed(io.BytesIO(gzip.compress(b"ab") + gzip.compress(b"cd"))).read() == b"abcd"
    frames = zstandard.ZstdCompressor().compress(b"ab") + zstandard.ZstdCompressor().compress(b"cd")
    assert open_decompressed(io.BytesIO(frames)).read() == b"abcd"
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"xyz"
    assert open_decompressed(io.BytesIO(frames + skippable)).read() == b"abcd"
    with_checksum = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(DATA)
    assert open_decompressed(io.BytesIO(with_checksum)).read() == DATA


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bzip2", "xz"])
@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_data_is_one_line_error(kind, cut):
    packed = COMPRESSORS[kind](DATA)
    truncated = packed[: int(len(packed) * cut)]
    with pytest.raises(InvalidArgument) as caught:
        open_decompressed(io.BytesIO(truncated), "layer 2").read()
    assert str(caught.value).startswith(f"layer 2: its {kind} data")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_corrupt_data_is_one_line_error(kind):
    # zstd stores random data raw: only the frame checksum (as the zstd tool writes it) can catch a change.
    data = os.urandom(50_000)
    packed = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(data) if kind == "zstd" else gzip.compress(data))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = b"\x55" * 64
    with pytest.raises(InvalidArgument, match=f"its {kind} data"):
        open_decompressed(io.BytesIO(bytes(packed)), "x").read()


def test_media_types():
    assert layer_media_type("gzip", oci=False) == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    assert layer_media_type("none", oci=False) == "application/vnd.docker.image.rootfs.diff.tar"
    assert layer_media_type("none", oci=True) == "application/vnd.oci.image.layer.v1.tar"
    assert layer_media_type("gzip", oci=True) == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert layer_media_type("zstd", oci=True) == "application/vnd.oci.image.layer.v1.tar+zstd"
    with pytest.raises(InvalidArgument, match="zstd layer cannot be described in a Docker v2 manifest"):
        layer_media_type("zstd", oci=False)
    with pytest.raises(InvalidArgument):
        layer_media_type("bzip2", oci=True)
    for kind in ("none", "gzip", "zstd"):
        assert compression_of_media_type(layer_media_type(kind, oci=True)) == kind
    for kind in ("none", "gzip"):
        assert compression_of_media_type(layer_media_type(kind, oci=False)) == kind
    assert compression_of_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd") == "zstd"
    assert compression_of_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar") == "none"
    assert compression_of_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip") == "gzip"
    with pytest.raises(InvalidArgument, match='unsupported layer media type "text/plain"'):
        compression_of_media_type("text/plain")


def test_detect_short_heads():
    assert detect(b"") == compression.NONE
    assert detect(b"\x1f") == compression.NONE
    assert detect(b"ustar") == compression.NONE
