"""Unit tests of the commit tar writer: a tree in a tmp dir written, read back, and extracted again."""

import io
import os
import stat
import tarfile

from services.storage import commit, tarsafe


def make_tree(root):
    for name in ("bin", "etc", "proc/1", "sys/kernel", "dev/pts", "tmp", "empty"):
        (root / name).mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"tool")
    os.chmod(root / "bin/tool", 0o4755)
    os.link(root / "bin/tool", root / "bin/tool-link")
    os.symlink("/etc/passwd", root / "bin/abs")
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.setxattr(root / "etc/passwd", "user.note", b"\xff\x00binary")
    (root / "proc/1/status").write_text("junk")
    (root / "sys/kernel/x").write_text("junk")
    (root / "dev/null-ish").write_text("junk")
    os.mkfifo(root / "tmp/fifo")
    os.chmod(root / "tmp", 0o1777)
    os.utime(root / "etc/passwd", (1_600_000_000, 1_600_000_000))


def write(root):
    out = io.BytesIO()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        count = commit.write_tree(fd, out)
    finally:
        os.close(fd)
    return out.getvalue(), count


def test_tree_tar_contents(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root)
    data, count = write(root)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert count == len(members)
    # /proc, /sys and /dev stay as empty directories.
    assert {"proc", "sys", "dev"} <= set(members)
    assert not [name for name in members if name.startswith(("proc/", "sys/", "dev/"))]
    assert members["bin/tool"].isreg() and members["bin/tool"].mode == 0o4755
    assert members["bin/tool-link"].islnk() and members["bin/tool-link"].linkname == "bin/tool"
    assert members["bin/abs"].issym() and members["bin/abs"].linkname == "/etc/passwd"
    assert members["tmp/fifo"].isfifo() and members["tmp"].mode == 0o1777
    assert members["etc/passwd"].mtime == 1_600_000_000
    assert members["etc/passwd"].uid == os.getuid() and members["etc/passwd"].uname == ""
    assert members["etc/passwd"].pax_headers["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape") == b"\xff\x00binary"
    assert members["empty"].isdir()
    # Sorted, parents before children.
    names = list(members)
    assert names.index("bin") < names.index("bin/abs") < names.index("bin/tool")


def test_tree_tar_is_deterministic(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root)
    assert write(root)[0] == write(root)[0]


def test_round_trip_through_safe_extraction(tmp_path):
    root, again = tmp_path / "root", tmp_path / "again"
    root.mkdir()
    again.mkdir()
    make_tree(root)
    data, _ = write(root)
    tarsafe.extract(io.BytesIO(data), str(again), "commit")
    assert (again / "etc/passwd").read_text() == (root / "etc/passwd").read_text()
    assert os.getxattr(again / "etc/passwd", "user.note") == b"\xff\x00binary"
    assert os.stat(again / "bin/tool").st_ino == os.stat(again / "bin/tool-link").st_ino
    assert stat.S_IMODE(os.stat(again / "bin/tool").st_mode) == 0o4755
    assert os.listdir(again / "proc") == []


def test_stream_tree_chunks_are_the_same_tar(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    make_tree(root)
    (root / "big").write_bytes(os.urandom(300_000))
    expected, _ = write(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    chunks = list(commit.stream_tree(fd, chunk_size=65536))
    assert b"".join(chunks) == expected
    assert all(len(chunk) == 65536 for chunk in chunks[:-1]) and 0 < len(chunks[-1]) <= 65536


def test_stream_tree_stops_cleanly_when_abandoned(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(2_000_000))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    stream = commit.stream_tree(fd, chunk_size=4096)
    next(stream)
    stream.close()  # the writer thread sees a broken pipe and ends; the fd is closed
    try:
        os.fstat(fd)
        closed = False
    except OSError:
        closed = True
    assert closed


def test_exact_reader_pads_a_file_that_shrank(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        reader = commit._ExactReader(fd, 6, "f")
        assert reader.read(100) + reader.read(100) + reader.read() == b"abc\0\0\0"
    finally:
        os.close(fd)
