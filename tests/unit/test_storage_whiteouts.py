"""Unit tests of OCI whiteouts: the pure plan, extraction into overlay form, layers of an upper dir, overlay round trips."""

import contextlib
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest

from services.common import linux
from services.storage import diff, mountinfo, tarsafe, whiteout
from services.storage.mountplan import kernel_overlay_features, overlay_options
from services.storage.tarsafe import UnsafeArchive
from services.storage.whiteout import META, OPAQUE, PLAIN, REFUSED, WHITEOUT, classify


def member(name, kind=tarfile.REGTYPE, linkname="", mode=0o644, uid=0, gid=0, mtime=1_700_000_000, **extra):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid, info.gid, info.mtime = kind, linkname, mode, uid, gid, mtime
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def d(name, mode=0o755, **extra):
    return member(name, tarfile.DIRTYPE, mode=mode, **extra)


def wh(name):
    return member(name, mode=0)


def layer_tar(entries):
    """A plain tar in memory from (TarInfo, bytes or None) pairs, or bare TarInfos."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info, data = entry if isinstance(entry, tuple) else (entry, None)
            info.size = len(data) if data is not None else 0
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    out.seek(0)
    return out


def plan_of(*members):
    return whiteout.plan([(tarsafe.split_name(m.name)[0], m) for m in members], "layer test")


# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kind,target",
    [
        ("etc/passwd", PLAIN, "etc/passwd"),
        ("etc/.wh.passwd", WHITEOUT, "etc/passwd"),
        (".wh.etc", WHITEOUT, "etc"),
        ("opt/app/.wh..wh..opq", OPAQUE, "opt/app"),
        (".wh..wh..opq", OPAQUE, ""),
        (".wh..wh.plnk", META, ""),
        (".wh..wh.plnk/1234.5678", META, ""),
        ("usr/.wh..wh.aufs", META, ""),
        ("etc/x.wh.y", PLAIN, "etc/x.wh.y"),
        ("etc/.wh.", REFUSED, ""),
        ("etc/.wh..", REFUSED, ""),
        ("etc/.wh...", REFUSED, ""),
        ("etc/.wh.x/inside", REFUSED, ""),
        ("etc/.wh..wh..opq/inside", REFUSED, ""),
    ],
)
def test_classify(name, kind, target):
    role = classify(tarsafe.split_name(name)[0])
    assert role.kind == kind
    if kind in (PLAIN, WHITEOUT, OPAQUE):
        assert "/".join(role.target) == target
    assert bool(role.reason) == (kind == REFUSED)


def test_plan_whiteouts_opaque_dirs_and_metadata():
    plan = plan_of(
        d("etc"), wh("etc/.wh.hosts"), wh("gone/.wh.deep"), wh("opt/app/.wh..wh..opq"), member("opt/app/new"),
        d(".wh..wh.plnk"), member(".wh..wh.plnk/1.2"),
    )
    assert plan.problems == []
    assert sorted(plan.whiteouts) == [("etc", "hosts"), ("gone", "deep")]
    assert plan.opaque == {("opt", "app")}


def test_an_entry_after_its_whiteout_wins_and_a_directory_becomes_opaque():
    """Docker and containerd let a later entry replace the whiteout; OCI: a whiteout hides lower layers only."""
    plan = plan_of(wh(".wh.file"), member("file"), wh(".wh.dir"), d("dir"), wh(".wh.implied"), member("implied/x"))
    assert plan.problems == [] and plan.whiteouts == {}
    assert plan.opaque == {("dir",), ("implied",)}


@pytest.mark.parametrize(
    "members,bad,fragment",
    [
        ([member("a/f"), wh("a/.wh.f")], "a/.wh.f", "this same layer created earlier"),
        ([member("a/f/x"), wh("a/.wh.f")], "a/.wh.f", "this same layer created earlier"),
        ([d("a/f"), wh("a/.wh.f")], "a/.wh.f", "this same layer created earlier"),
        ([d("a/.wh.f")], "a/.wh.f", "must be a regular file"),
        ([member("a/.wh.f", tarfile.SYMTYPE, linkname="x")], "a/.wh.f", "must be a regular file"),
        ([member("x"), member("a/.wh.f", tarfile.LNKTYPE, linkname="x")], "a/.wh.f", "must be a regular file"),
        ([d("a/.wh..wh..opq")], "a/.wh..wh..opq", "must be a regular file"),
        ([wh("a/.wh.")], "a/.wh.", 'not ""'),
        ([wh("a/.wh..")], "a/.wh..", 'not "."'),
        ([wh("a/.wh...")], "a/.wh...", 'not ".."'),
        ([member("a/.wh.f/x")], "a/.wh.f/x", "below the whiteout"),
        ([wh("a/.wh.f"), member("h", tarfile.LNKTYPE, linkname="a/.wh.f")], "h", "not extracted"),
        ([member(".wh..wh.plnk/1"), member("h", tarfile.LNKTYPE, linkname=".wh..wh.plnk/1")], "h", "not extracted"),
    ],
)
def test_plan_refusals_name_the_member(members, bad, fragment):
    problems = plan_of(*members).problems
    assert problems and problems[0][0] == bad and fragment in problems[0][1]


def test_overlay_xattrs_of_a_layer_are_dropped():
    info = member("f", pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.keep": "v"})
    assert plan_of(info).problems == []
    assert info.pax_headers == {"SCHILY.xattr.user.keep": "v"}


@pytest.mark.parametrize(
    "entries",
    [
        [member("a/f"), wh("a/.wh.f")],
        [d("a/.wh.f")],
        [wh("a/.wh..")],
        [member("a/.wh.f/x")],
    ],
)
def test_refused_layers_extract_nothing_and_say_one_line(tmp_path, entries):
    with pytest.raises(UnsafeArchive) as caught:
        tarsafe.extract(layer_tar([d("ok")] + entries), str(tmp_path), "layer sha256:abc", whiteouts=True)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("layer sha256:abc is refused: member")
    assert entries[-1].name in message
    assert os.listdir(tmp_path) == []


def test_without_whiteouts_wh_files_stay_plain_files(tmp_path):
    entries = [d("etc"), wh("etc/.wh.hosts"), (member("opt/.wh..wh..opq"), b""), (member(".wh..wh.plnk/1"), b"x")]
    tarsafe.extract(layer_tar(entries), str(tmp_path), "rootfs")
    for name in ("etc/.wh.hosts", "opt/.wh..wh..opq", ".wh..wh.plnk/1"):
        assert stat.S_ISREG(os.lstat(tmp_path / name).st_mode), name
    assert "trusted.overlay.opaque" not in os.listxattr(tmp_path / "opt")


def test_layer_members_of_whiteouts_are_pure():
    device = member("a/b/node", tarfile.CHRTYPE, mtime=1234)
    assert diff.whiteout_member(device).name == "a/b/.wh.node"
    assert diff.whiteout_member(member("top", tarfile.CHRTYPE)).name == ".wh.top"
    marker = diff.opaque_member(d("opt/app", mtime=99))
    assert (marker.name, marker.type, marker.size, marker.mode, marker.uid, marker.mtime) == (
        "opt/app/.wh..wh..opq", tarfile.REGTYPE, 0, 0, 0, 99,
    )


# -- as root: devices, xattrs, overlay mounts ---------------------------------------------------


@pytest.fixture
def base():
    """A temp dir under /tmp for mounts; no mount may be left below it."""
    path = Path(tempfile.mkdtemp(prefix="mdk-wh-", dir="/tmp"))
    try:
        yield path
    finally:
        leftover = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line]
        for entry in reversed(mountinfo.mounts_under(mountinfo.read(), str(path))):
            linux.umount2(entry.mount_point, linux.MNT_DETACH)  # only after a failed test: never delete through a mount
        shutil.rmtree(path, ignore_errors=True)
        assert leftover == [], f"mounts left behind: {leftover}"


def is_overlay_whiteout(path):
    st = os.lstat(path)
    device_0_0 = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    return device_0_0 and stat.S_IMODE(st.st_mode) == 0 and (st.st_uid, st.st_gid) == (0, 0)


def opaque(path):
    with contextlib.suppress(OSError):
        return os.getxattr(path, whiteout.OPAQUE_XATTR, follow_symlinks=False) == b"y"
    return False


@pytest.mark.root
@pytest.mark.parametrize("marker_first", [True, False])
def test_extraction_makes_overlay_whiteouts(base, marker_first):
    marker = wh("opt/app/.wh..wh..opq")
    app = [d("opt/app", mode=0o750), (member("opt/app/new"), b"new")]
    entries = [d("etc"), wh("etc/.wh.hosts"), wh("gone/.wh.deep"), wh("only/marker/.wh..wh..opq"),
               wh(".wh.dir"), d("dir"), wh(".wh.file"), (member("file"), b"f"), (member(".wh..wh.plnk/1"), b"aufs")]
    entries += [marker] + app if marker_first else app + [marker]
    (base / "l").mkdir()
    tarsafe.extract(layer_tar(entries), str(base / "l"), "layer test", whiteouts=True)
    layer = base / "l"
    assert is_overlay_whiteout(layer / "etc/hosts") and is_overlay_whiteout(layer / "gone/deep")
    assert opaque(layer / "opt/app") and opaque(layer / "only/marker") and opaque(layer / "dir")
    assert not opaque(layer / "etc") and not opaque(layer / "opt")
    assert stat.S_IMODE(os.lstat(layer / "opt/app").st_mode) == 0o750 and (layer / "opt/app/new").read_bytes() == b"new"
    assert sorted(os.listdir(layer)) == ["dir", "etc", "file", "gone", "only", "opt"]
    assert (layer / "file").read_bytes() == b"f"  # the layer's own entry after its whiteout wins
    assert os.listdir(layer / "opt/app") == ["new"]
    assert os.lstat(layer / "etc").st_mtime == 1_700_000_000  # directory times set after the whiteouts


def base_layer():
    return [
        d("bin"), (member("bin/busybox", mode=0o755), b"busybox binary"),
        member("bin/sh", tarfile.LNKTYPE, linkname="bin/busybox"),
        member("bin/ls", tarfile.SYMTYPE, linkname="busybox", mode=0o777),
        d("etc"), (member("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n"), (member("etc/hosts"), b"127.0.0.1 localhost\n"),
        d("etc/conf.d"), (member("etc/conf.d/a.conf"), b"a"), (member("etc/conf.d/b.conf"), b"b"),
        d("var"), d("var/lib"), d("var/lib/old"), (member("var/lib/old/x"), b"x"), (member("var/lib/old/sub/y"), b"y"),
        d("opt"), d("opt/app"), (member("opt/app/one"), b"1"), (member("opt/app/two"), b"2"),
        d("home"), d("home/user", uid=1000, gid=1000),
        (member("home/user/file", mode=0o600, uid=1000, gid=1000), b"mine"),
        d("tmp", mode=0o1777), d("dev"), d("proc"), d("sys"),
        d("data"), (member("data/link1"), b"shared"), member("data/link2", tarfile.LNKTYPE, linkname="data/link1"),
    ]


def snapshot(root, mtimes=True):
    """Everything a container sees of a tree, by relative path; hardlinks as groups named by their first path."""
    tree, groups = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            entry = {"mode": st.st_mode, "owner": (st.st_uid, st.st_gid), "mtime": int(st.st_mtime) if mtimes else 0}
            if stat.S_ISREG(st.st_mode):
                entry["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                entry["size"], entry["nlink"] = st.st_size, st.st_nlink
                entry["link"] = groups.setdefault((st.st_dev, st.st_ino), os.path.relpath(path, root))
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = st.st_rdev
            if not stat.S_ISLNK(st.st_mode):
                entry["xattrs"] = {k: os.getxattr(path, k) for k in sorted(os.listxattr(path)) if k.startswith("user.")}
            tree[os.path.relpath(path, root)] = entry
    return tree


@contextlib.contextmanager
def mounted(target, data, flags=0):
    target.mkdir(exist_ok=True)
    linux.mount("overlay", target, "overlay", flags, data)
    try:
        yield target
    finally:
        linux.umount2(target)


def extract_layer(tar, dest):
    dest.mkdir()
    tarsafe.extract(tar, str(dest), f"layer {dest.name}", whiteouts=True)
    return dest


@pytest.mark.root
@pytest.mark.parametrize("marker_first", [True, False])
def test_hand_written_layers_stack_as_docker_shows_them(base, marker_first):
    lower1 = extract_layer(layer_tar(base_layer()), base / "l1")
    app = [(member("opt/app/three"), b"3"), (member("opt/app/sub/four"), b"4")]
    marker = wh("opt/app/.wh..wh..opq")
    second = [wh("etc/.wh.hosts"), wh("var/lib/.wh.old"), d("opt/app", mode=0o700)]
    second += [marker] + app if marker_first else app + [marker]
    lower2 = extract_layer(layer_tar(second + [(member(".wh..wh.plnk/9"), b"")]), base / "l2")
    # What Docker shows: the base with the deletions applied and the new app directory alone.
    expected = base / "expected"
    expected.mkdir()
    tarsafe.extract(layer_tar(base_layer()), str(expected), "base")
    os.remove(expected / "etc/hosts")
    shutil.rmtree(expected / "var/lib/old")
    shutil.rmtree(expected / "opt/app")
    tarsafe.extract(layer_tar([d("opt/app", mode=0o700)] + app), str(expected), "app")
    with mounted(base / "view", f"lowerdir={lower2}:{lower1}", linux.MS_RDONLY) as view:
        seen = snapshot(view, mtimes=False)
        assert sorted(os.listdir(view / "opt/app")) == ["sub", "three"]
        assert not (view / "etc/hosts").exists() and os.listdir(view / "var/lib") == []
    assert seen == snapshot(expected, mtimes=False)


def change_like_a_container(merged):
    os.remove(merged / "etc/hosts")
    shutil.rmtree(merged / "var/lib/old")
    shutil.rmtree(merged / "opt/app")
    (merged / "opt/app").mkdir(0o750)
    (merged / "opt/app/three").write_bytes(b"3")
    os.remove(merged / "etc/conf.d/b.conf")
    (merged / "etc/conf.d/b.conf").mkdir()  # a file replaced by a directory
    (merged / "etc/conf.d/b.conf/inner").write_bytes(b"inner")
    (merged / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/ash\nuser:x:1000:1000::/home/user:/bin/sh\n")
    os.chmod(merged / "bin/busybox", 0o700)  # copied up alone: bin/sh keeps the old inode and mode
    os.chown(merged / "home/user/file", 2000, 2000)
    os.rename(merged / "bin/ls", merged / "bin/list")
    (merged / "srv/www").mkdir(parents=True)
    (merged / "srv/www/index.html").write_bytes(b"<html>" * 5000)
    os.setxattr(merged / "srv/www/index.html", "user.note", b"kept")
    os.link(merged / "srv/www/index.html", merged / "srv/www/index.htm")
    os.link(merged / "etc/conf.d/a.conf", merged / "etc/a-link")  # a hardlink to a lower file
    os.remove(merged / "data/link1")
    os.mkfifo(merged / "tmp/fifo")
    os.symlink("/etc/passwd", merged / "tmp/abs")
    (merged / "proc/junk").write_bytes(b"not in a layer")


@pytest.mark.root
def test_container_changes_round_trip_through_a_layer(base):
    lower1 = extract_layer(layer_tar(base_layer()), base / "l1")
    upper, work = base / "upper", base / "work"
    upper.mkdir()
    work.mkdir()
    options = ",".join(overlay_options(str(lower1), str(upper), str(work), kernel_overlay_features()))
    with mounted(base / "merged", options) as merged:
        change_like_a_container(merged)
        before = snapshot(merged)
        # overlay hides its own xattrs in the merged view, so a commit of merged never carries them
        assert not [key for key in os.listxattr(merged / "opt/app") if key.startswith("trusted.overlay.")]
    del before["proc/junk"]
    assert opaque(upper / "opt/app") and is_overlay_whiteout(upper / "etc/hosts")

    out = io.BytesIO()
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        count = diff.write_layer(fd, out)
        again = io.BytesIO()
        diff.write_layer(fd, again)
    finally:
        os.close(fd)
    assert out.getvalue() == again.getvalue()  # deterministic
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        members = archive.getmembers()
    names = [m.name for m in members]
    assert count == len(members)
    assert {"etc/.wh.hosts", "var/lib/.wh.old", "bin/.wh.ls", "data/.wh.link1", "opt/app/.wh..wh..opq"} <= set(names)
    assert names.index("opt/app") + 1 == names.index("opt/app/.wh..wh..opq")
    assert "proc/junk" not in names
    assert not [m.name for m in members if any(k.startswith("SCHILY.xattr.trusted.overlay.") for k in m.pax_headers)]
    hosts = members[names.index("etc/.wh.hosts")]
    assert (hosts.type, hosts.size, hosts.mode, hosts.uid, hosts.gid) == (tarfile.REGTYPE, 0, 0, 0, 0)
    assert members[names.index("srv/www/index.html")].linkname == "srv/www/index.htm"  # sorted: .htm first

    out.seek(0)
    lower2 = extract_layer(out, base / "l2")
    with mounted(base / "view", f"lowerdir={lower2}:{lower1}", linux.MS_RDONLY) as view:
        after = snapshot(view)
    assert after == before


@pytest.mark.root
def test_write_layer_of_a_hand_made_upper(base):
    upper = base / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.mknod(upper / "etc/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (upper / "opt/app").mkdir(parents=True)
    os.setxattr(upper / "opt/app", whiteout.OPAQUE_XATTR, b"y")
    os.setxattr(upper / "etc", "trusted.overlay.impure", b"y")
    (upper / "opt/app/file").write_bytes(b"f")
    os.setxattr(upper / "opt/app/file", "trusted.overlay.origin", b"\x00\xfb")
    os.setxattr(upper / "opt/app/file", "user.keep", b"v")
    (upper / "dev").mkdir()
    os.mknod(upper / "dev/.wh-ish", stat.S_IFCHR, os.makedev(0, 0))
    os.utime(upper / "etc/gone", (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    out = io.BytesIO()
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert diff.write_layer(fd, out) == 8
    finally:
        os.close(fd)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        members = {m.name: m for m in archive.getmembers()}
    # Sorted, the marker right after its directory, /dev's contents left out.
    assert list(members) == [
        "dev", "etc", "etc/.wh.gone", "etc/null", "opt", "opt/app", "opt/app/.wh..wh..opq", "opt/app/file",
    ]
    gone = members["etc/.wh.gone"]
    assert (gone.isreg(), gone.size, gone.mode, gone.uid, gone.mtime) == (True, 0, 0, 0, 1_600_000_000)
    assert members["etc/null"].ischr() and (members["etc/null"].devmajor, members["etc/null"].devminor) == (1, 3)
    assert members["opt/app/file"].pax_headers == {"SCHILY.xattr.user.keep": "v"}
    assert not any(k.startswith("SCHILY.xattr.trusted.") for m in members.values() for k in m.pax_headers)


def test_tree_writer_keeps_directory_xattrs(tmp_path):
    """A directory's xattrs are read through its own fd (lgetxattr of /proc/self/fd/N reads the link)."""
    (tmp_path / "dir").mkdir()
    os.setxattr(tmp_path / "dir", "user.note", b"on a directory")
    out = io.BytesIO()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        diff.write_layer(fd, out)
    finally:
        os.close(fd)
    out.seek(0)
    with tarfile.open(fileobj=out) as archive:
        assert archive.getmember("dir").pax_headers == {"SCHILY.xattr.user.note": "on a directory"}
