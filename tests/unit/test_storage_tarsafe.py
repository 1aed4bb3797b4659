"""Unit tests of tar safety: the pure member check, and extraction of hostile and good tars in tmp dirs."""

import io
import os
import stat
import tarfile

import pytest

from services.storage import tarsafe
from services.storage.tarsafe import Problem, UnsafeArchive, check_members, split_name

UID, GID = os.getuid(), os.getgid()


def member(name, kind=tarfile.REGTYPE, linkname="", mode=0o644, size=0, **extra):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, linkname, mode, size
    info.uid, info.gid = UID, GID
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def d(name, mode=0o755):
    return member(name, tarfile.DIRTYPE, mode=mode)


def sym(name, target):
    return member(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hard(name, target):
    return member(name, tarfile.LNKTYPE, linkname=target)


def reasons(members):
    return [(p.member, p.reason) for p in check_members(members)]


def test_split_name():
    assert split_name("./a//b/./c/") == (("a", "b", "c"), "")
    assert split_name("./") == ((), "")
    assert split_name("/etc/passwd")[0] is None
    assert split_name("a/../../b")[0] is None
    assert split_name("a/..b")[0] == ("a", "..b")


def test_a_normal_rootfs_is_accepted():
    members = [
        d("./"), d("bin"), member("bin/busybox", mode=0o4755), hard("bin/sh", "bin/busybox"),
        sym("bin/ls", "/bin/busybox"), sym("lib", "usr/lib"), d("usr"), d("usr/lib"),
        member("usr/lib/x"), member("dev/null", tarfile.CHRTYPE), member("run/fifo", tarfile.FIFOTYPE),
        member("bin/busybox"),  # a later copy of a file replaces it
        sym("etc/evil", "../../../../etc/shadow"),  # symlinks may point anywhere; they are never followed
    ]
    assert check_members(members) == []


@pytest.mark.parametrize(
    "members,bad,fragment",
    [
        ([member("../evil")], "../evil", '".." component'),
        ([member("a/../../evil")], "a/../../evil", '".." component'),
        ([member("/etc/passwd")], "/etc/passwd", "absolute path"),
        ([sym("a", "/etc"), member("a/passwd")], "a/passwd", 'parent "a" is a symlink'),
        ([sym("a", "."), d("a/b")], "a/b", "is a symlink"),
        ([member("f"), member("f/x")], "f/x", "not a directory"),
        ([hard("h", "/etc/passwd")], "h", "outside the archive"),
        ([hard("h", "../outside")], "h", "outside the archive"),
        ([hard("h", "later"), member("later")], "h", "no earlier member"),
        ([d("dir"), hard("h", "dir")], "h", "directory"),
        ([member("h"), hard("h", "h")], "h", "itself"),
        ([sym("a", "/etc"), hard("h", "a/passwd")], "h", "no earlier member"),
        ([sym("a", "/etc"), d("a")], "a", "as a symlink and as a directory"),
        ([d("a"), member("a")], "a", "as a directory and as a file"),
        ([member("a"), sym("a", "/x")], "a", "as a file and as a symlink"),
        ([member(".", tarfile.REGTYPE)], ".", "root must be a directory"),
        ([member("x", b"V")], "x", "unsupported member type"),
    ],
)
def test_hostile_members_are_named(members, bad, fragment):
    problems = reasons(members)
    assert problems, "expected a problem"
    assert problems[0][0] == bad
    assert fragment in problems[0][1]


def test_every_problem_is_reported_and_described():
    problems = check_members([member("/a"), member("../b"), member("ok")])
    assert [p.member for p in problems] == ["/a", "../b"]
    text = tarsafe.describe([Problem(str(i), "r") for i in range(8)])
    assert text.count("member") == tarsafe.MAX_PROBLEMS_SHOWN and text.endswith("and 3 more")


# -- extraction ---------------------------------------------------------------------------


def build_tar(path, entries, format=tarfile.PAX_FORMAT):
    """entries: (TarInfo, data bytes or None)."""
    with tarfile.open(path, "w", format=format) as archive:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return path


@pytest.fixture
def dirs(tmp_path):
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "keep").write_text("precious")
    return dest, outside


def untouched(outside):
    return sorted(os.listdir(outside)) == ["keep"] and (outside / "keep").read_text() == "precious"


HOSTILE = {
    "dotdot": lambda out: [(member("../outside/evil"), b"x")],
    "absolute": lambda out: [(member(str(out / "evil")), b"x")],
    "symlink-parent": lambda out: [(sym("a", str(out)), None), (member("a/evil"), b"x")],
    "relative-symlink-parent": lambda out: [(sym("a", "../outside"), None), (member("a/evil"), b"x")],
    "hardlink-escape": lambda out: [(hard("evil", str(out / "keep")), None)],
    "hardlink-dotdot": lambda out: [(hard("evil", "../outside/keep"), None)],
    "symlink-then-file": lambda out: [(sym("keep", str(out / "keep")), None), (d("keep"), None)],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_tar_extracts_nothing(tmp_path, dirs, kind):
    dest, outside = dirs
    path = build_tar(tmp_path / f"{kind}.tar", [(d("ok"), None)] + HOSTILE[kind](outside))
    with open(path, "rb") as handle, pytest.raises(UnsafeArchive, match="member"):
        tarsafe.extract(handle, str(dest), "image test")
    assert os.listdir(dest) == []  # refused before anything was written
    assert untouched(outside)


def test_extractor_never_writes_through_a_symlink_even_unchecked(tmp_path, dirs):
    """Defence in depth: the fd walk refuses a symlinked parent even if the check were bypassed."""
    dest, outside = dirs
    path = build_tar(tmp_path / "t.tar", [(sym("a", str(outside)), None), (member("a/evil"), b"x")])
    with open(path, "rb") as handle:
        archive = tarfile.open(fileobj=handle)
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        try:
            extractor = tarsafe._Extractor(archive, root_fd, None, "t")
            with pytest.raises(UnsafeArchive, match="symlink"):
                for info in archive.getmembers():
                    extractor.add(info)
        finally:
            extractor._drop_cache()
            os.close(root_fd)
    assert untouched(outside)


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100])
def test_not_a_tar(tmp_path, data):
    (tmp_path / "x.tar").write_bytes(data)
    with open(tmp_path / "x.tar", "rb") as handle, pytest.raises(UnsafeArchive, match="not a readable tar"):
        tarsafe.validate(handle, "image x")


def test_truncated_tar(tmp_path):
    path = build_tar(tmp_path / "t.tar", [(member("big"), b"y" * 100_000)])
    data = path.read_bytes()[:20_000]
    path.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with open(path, "rb") as handle, pytest.raises(UnsafeArchive):
        tarsafe.extract(handle, str(dest), "image t")


def good_entries():
    xattr = {"SCHILY.xattr.user.mydocker": "v\u00e9"}
    return [
        (d("./", 0o755), None),
        (d("bin"), None),
        (member("bin/tool", mode=0o4755, mtime=1_000_000_000, pax_headers=xattr), b"#!/bin/sh\n"),
        (hard("bin/tool2", "bin/tool"), None),
        (sym("bin/abs", "/etc/passwd"), None),
        (sym("lib", "usr/lib"), None),
        (d("tmp", 0o1777), None),
        (d("secret", 0o700), None),
        (member("secret/sgid", mode=0o2750), b"s"),
        (member("run/fifo", tarfile.FIFOTYPE, mode=0o600), None),
        (member("deep/implicit/parents/file"), b"deep"),
        (member("bin/tool3", mode=0o755), b"first"),
        (member("bin/tool3", mode=0o700), b"second"),
    ]


@pytest.mark.parametrize("format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("compression", ["", "gz"])
def test_good_tar_keeps_modes_links_fifos_xattrs(tmp_path, dirs, format, compression):
    dest, _ = dirs
    path = build_tar(tmp_path / "good.tar", good_entries(), format)
    if compression:
        import gzip

        path.write_bytes(gzip.compress(path.read_bytes()))
    with open(path, "rb") as handle:
        stats = tarsafe.extract(handle, str(dest), "image good")
    assert stats.members == len(good_entries())
    tool = os.lstat(dest / "bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and (tool.st_uid, tool.st_gid) == (UID, GID)
    assert tool.st_mtime_ns == 1_000_000_000 * 10**9
    assert os.lstat(dest / "bin/tool2").st_ino == tool.st_ino and tool.st_nlink == 2
    assert os.readlink(dest / "bin/abs") == "/etc/passwd"
    assert os.readlink(dest / "lib") == "usr/lib"
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(dest / "secret").st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(dest / "secret/sgid").st_mode) == 0o2750
    assert stat.S_ISFIFO(os.lstat(dest / "run/fifo").st_mode)
    assert (dest / "deep/implicit/parents/file").read_bytes() == b"deep"
    assert (dest / "bin/tool3").read_bytes() == b"second"
    assert stat.S_IMODE(os.lstat(dest / "bin/tool3").st_mode) == 0o700
    if format == tarfile.PAX_FORMAT:
        assert os.getxattr(dest / "bin/tool", "user.mydocker") == "v\u00e9".encode()


def test_exact_pax_mtime():
    info = member("x")
    info.pax_headers = {"mtime": "1796064241.483447630"}
    assert tarsafe.mtime_ns(info) == 1796064241_483447630
    info.pax_headers = {"mtime": "-1.5"}
    assert tarsafe.mtime_ns(info) == -1_500_000_000
    assert tarsafe.mtime_ns(member("y", mtime=7)) == 7_000_000_000


@pytest.mark.root
def test_devices_and_foreign_owners_as_root(tmp_path, dirs):
    dest, _ = dirs
    null = member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
    loop = member("dev/loop9", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=9, gid=6)
    owned = member("home/user/file", mode=0o4750, uid=1000, gid=1000)
    caps = member(
        "bin/ping", mode=0o755, pax_headers={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12}
    )
    path = build_tar(tmp_path / "root.tar", [(null, None), (loop, None), (owned, b"x"), (caps, b"ping")])
    with open(path, "rb") as handle:
        tarsafe.extract(handle, str(dest), "image root")
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(dest / "dev/loop9")
    assert stat.S_ISBLK(st.st_mode) and st.st_gid == 6
    st = os.lstat(dest / "home/user/file")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o4750)
    assert len(os.getxattr(dest / "bin/ping", "security.capability")) == 20
