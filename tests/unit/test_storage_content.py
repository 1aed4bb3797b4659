"""Unit tests of the content store: verification, atomic commits, resumable partials, concurrency, cleanup."""

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.storage.content import ContentStore, DigestMismatch


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def store(tmp_path):
    return ContentStore(tmp_path / "blobs")


def tmp_files(store):
    return sorted(os.listdir(store.tmp)) if store.tmp.exists() else []


def test_put_and_read_back(store):
    data = b"config bytes"
    digest = store.put_bytes(data)
    assert digest == digest_of(data)
    assert store.has(digest) and store.size(digest) == len(data)
    assert store.path(digest) == store.root / "sha256" / digest[7:]
    assert store.path(digest).stat().st_mode & 0o777 == 0o644
    with store.open(digest) as handle:
        assert handle.read() == data
    assert store.read_bytes(digest) == data
    assert store.list() == [digest]
    assert store.put_bytes(data, expected_digest=digest) == digest  # already there: fine
    assert tmp_files(store) == []


def test_missing_and_invalid_digests(store):
    missing = digest_of(b"nothing")
    assert not store.has(missing) and store.size(missing) is None
    with pytest.raises(NotFound, match="not in the content store"):
        store.open(missing)
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64, "../../etc/passwd"):
        with pytest.raises(InvalidArgument, match="invalid digest"):
            store.path(bad)
        with pytest.raises(InvalidArgument):
            store.put_bytes(b"x", expected_digest=bad)


def test_read_bytes_refuses_big_blobs(store):
    digest = store.put_bytes(b"x" * 100)
    assert store.read_bytes(digest, limit=100) == b"x" * 100
    with pytest.raises(InvalidArgument, match="bigger than 99 bytes"):
        store.read_bytes(digest, limit=99)


def test_wrong_digest_is_refused_and_leaves_nothing(store):
    announced = digest_of(b"what was announced")
    with pytest.raises(DigestMismatch) as caught:
        store.put_bytes(b"something else", expected_digest=announced)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"blob {announced[:19]}… is corrupt: received 14 bytes with digest {digest_of(b'something else')[:19]}…")
    assert message.endswith("the source sent other data than it announced")
    assert store.list() == [] and tmp_files(store) == []


def test_wrong_size_is_refused(store):
    data = b"0123456789"
    with pytest.raises(DigestMismatch, match="received 10 bytes, 11 were announced"):
        with store.writer(digest_of(data), expected_size=11) as blob:
            blob.write(data)
            blob.commit()
    assert store.list() == [] and tmp_files(store) == []


def test_over_long_write_fails_at_once(store):
    with pytest.raises(DigestMismatch, match="^the blob is corrupt: received more than the announced 4 bytes"):
        with store.writer(expected_size=4) as blob:
            blob.write(b"abc")
            blob.write(b"de")
    assert store.list() == [] and tmp_files(store) == []


def test_nothing_is_visible_before_commit(store):
    data = b"layer data" * 1000
    with store.writer(digest_of(data), len(data)) as blob:
        blob.write(data[:5000])
        assert store.list() == [] and not store.has(digest_of(data))
        assert len(tmp_files(store)) == 1
        blob.write(data[5000:])
        assert store.list() == []
        assert blob.commit() == digest_of(data)
        assert blob.created
        assert store.list() == [digest_of(data)]
    assert tmp_files(store) == []


def test_leaving_without_commit_or_on_error_drops_the_data(store):
    with store.writer() as blob:
        blob.write(b"abandoned")
    with pytest.raises(RuntimeError):
        with store.writer() as blob:
            blob.write(b"interrupted")
            raise RuntimeError("network down")
    assert store.list() == [] and tmp_files(store) == []


def test_resume_a_partial_download(store):
    data = os.urandom(300_000)
    digest = digest_of(data)
    with pytest.raises(ConnectionError):
        with store.writer(digest, len(data), resume=True) as blob:
            assert blob.offset == 0
            blob.write(data[:120_000])
            raise ConnectionError("connection reset")
    assert tmp_files(store) == [f"{digest[7:]}.partial"]
    assert not store.has(digest)
    with store.writer(digest, len(data), resume=True) as blob:
        assert blob.offset == 120_000 and blob.size == 120_000
        blob.write(data[blob.offset:])
        assert blob.commit() == digest
    assert store.read_bytes(digest, limit=len(data)) == data
    assert tmp_files(store) == []


def test_a_corrupt_partial_is_dropped(store):
    data = b"the real data" * 100
    digest = digest_of(data)
    (store.tmp).mkdir(parents=True)
    (store.tmp / f"{digest[7:]}.partial").write_bytes(b"garbage")
    with pytest.raises(DigestMismatch):
        with store.writer(digest, len(data), resume=True) as blob:
            blob.write(data[blob.offset:])
            blob.commit()
    assert tmp_files(store) == [] and not store.has(digest)
    # a partial longer than the blob can only be wrong: the writer starts over
    (store.tmp / f"{digest[7:]}.partial").write_bytes(b"x" * (len(data) + 1))
    with store.writer(digest, len(data), resume=True) as blob:
        assert blob.offset == 0
        blob.write(data)
        blob.commit()
    assert store.has(digest)


def test_resume_needs_the_digest(store):
    with pytest.raises(ValueError):
        with store.writer(resume=True):
            pass


def test_concurrent_writers_of_one_digest(store):
    data = os.urandom(2_000_000)

    def write(_):
        with store.writer(digest_of(data), len(data)) as blob:
            for start in range(0, len(data), 65536):
                blob.write(data[start:start + 65536])
            return blob.commit(), blob.created

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(write, range(8)))
    assert {digest for digest, _ in results} == {digest_of(data)}
    assert sum(created for _, created in results) == 1
    assert store.list() == [digest_of(data)] and tmp_files(store) == []
    assert store.read_bytes(digest_of(data), limit=len(data)) == data


def test_lock_excludes_other_threads(store):
    digest = digest_of(b"x")
    inside, overlaps = [], []

    def work(_):
        with store.lock(digest):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.01)
            inside.pop()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(8)))
    assert overlaps == []
    assert (store.locks / f"{digest[7:]}.lock").exists()


def test_delete(store):
    digest = store.put_bytes(b"12345")
    assert store.delete(digest) == 5
    assert not store.has(digest) and store.list() == []
    assert store.delete(digest) == 0


def test_ingest(store, tmp_path):
    data = os.urandom(3_000_000)
    source = tmp_path / "src"
    source.write_bytes(data)
    with open(source, "rb") as handle:
        assert store.ingest(handle, digest_of(data), len(data)) == digest_of(data)
    with open(source, "rb") as handle, pytest.raises(DigestMismatch):
        store.ingest(handle, expected_size=len(data) - 1)
    assert store.list() == [digest_of(data)] and tmp_files(store) == []


def test_clean_tmp_keeps_young_partials_only(store):
    store.tmp.mkdir(parents=True)
    young, old = store.tmp / f"{'a' * 64}.partial", store.tmp / f"{'b' * 64}.partial"
    stray = store.tmp / "0123456789abcdef.tmp"
    for path in (young, old, stray):
        path.write_bytes(b"data")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    (store.tmp / "stray-dir").mkdir()
    store.clean_tmp()
    assert tmp_files(store) == [young.name]
    ContentStore(store.root / "elsewhere").clean_tmp()  # no tmp dir yet: fine


def test_verifier_checks_without_writing(store):
    data = b"already stored"
    digest = store.put_bytes(data)
    checker = store.verifier(digest, len(data))
    checker.write(data)
    assert checker.commit() == digest and not checker.created
    checker = store.verifier(digest, len(data))
    checker.write(b"x" * len(data))
    with pytest.raises(DigestMismatch):
        checker.commit()
    assert store.read_bytes(digest) == data


def test_threads_share_a_resumable_partial_one_at_a_time(store):
    data = os.urandom(500_000)
    digest = digest_of(data)
    committed = []
    barrier = threading.Barrier(2)

    def resume(_):
        barrier.wait()
        with store.lock(digest):
            if store.has(digest):
                return
            with store.writer(digest, len(data), resume=True) as blob:
                blob.write(data[blob.offset:])
                committed.append(blob.commit())

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(resume, range(2)))
    assert committed == [digest] and tmp_files(store) == []
