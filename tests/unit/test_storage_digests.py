"""Unit tests of image digests and their cache, and of the small filesystem helpers."""

import hashlib
import io
import os

from services.storage.digests import DigestCache, HashingWriter, file_key, hash_fileobj
from services.storage.fsutil import disk_usage, read_json, write_json_atomic


def test_hash_fileobj():
    data = b"x" * 3_000_000
    assert hash_fileobj(io.BytesIO(data)) == "sha256:" + hashlib.sha256(data).hexdigest()


def test_hashing_writer():
    out = io.BytesIO()
    writer = HashingWriter(out)
    writer.write(b"abc")
    writer.write(memoryview(b"def"))
    assert out.getvalue() == b"abcdef" and writer.size == 6
    assert writer.digest() == "sha256:" + hashlib.sha256(b"abcdef").hexdigest()


def test_digest_cache_hit_and_stale(tmp_path):
    cache = DigestCache(tmp_path / "db")
    image = tmp_path / "busybox.tar"
    image.write_bytes(b"content")
    st = os.stat(image)
    assert cache.lookup("busybox", st) is None
    cache.store("busybox", st, "sha256:" + "a" * 64)
    assert cache.lookup("busybox", os.stat(image)) == "sha256:" + "a" * 64
    # Same size, other mtime: stale.
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cache.lookup("busybox", os.stat(image)) is None
    # Replaced by another file (new inode) with the same size and mtime: stale.
    cache.store("busybox", os.stat(image), "sha256:" + "b" * 64)
    other = tmp_path / "other.tar"
    other.write_bytes(b"CONTENT")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    os.replace(other, image)
    assert cache.lookup("busybox", os.stat(image)) is None
    cache.forget("busybox")
    cache.forget("busybox")


def test_digest_cache_ignores_torn_files(tmp_path):
    cache = DigestCache(tmp_path)
    image = tmp_path / "img"
    image.write_bytes(b"x")
    (tmp_path / "busybox.json").write_text('{"key": {"size": 1')
    assert cache.lookup("busybox", os.stat(image)) is None
    (tmp_path / "busybox.json").write_text('{"key": {"bogus": 1}, "digest": "x"}')
    assert cache.lookup("busybox", os.stat(image)) is None


def test_file_key_fields(tmp_path):
    (tmp_path / "f").write_bytes(b"12345")
    key = file_key(os.stat(tmp_path / "f"))
    assert key.size == 5 and key.ino == os.stat(tmp_path / "f").st_ino


def test_write_json_atomic_leaves_no_temp(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"b": 1})
    write_json_atomic(tmp_path / "a.json", {"b": 2})
    assert read_json(tmp_path / "a.json") == {"b": 2}
    assert os.listdir(tmp_path) == ["a.json"]
    assert read_json(tmp_path / "missing.json") is None


def test_disk_usage_counts_hardlinks_once(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "big").write_bytes(b"x" * 100_000)
    single = disk_usage(tmp_path)
    os.link(tmp_path / "d" / "big", tmp_path / "d" / "link")
    os.symlink("big", tmp_path / "d" / "sym")
    assert disk_usage(tmp_path) == single
    assert disk_usage(tmp_path / "missing") == 0
    assert disk_usage(tmp_path / "d" / "big") >= 100_000
