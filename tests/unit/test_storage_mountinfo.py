"""Unit tests of the /proc/self/mountinfo parser."""

import pytest

from services.storage import mountinfo

SAMPLE = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
44 22 0:39 / /var/lib/mydocker/overlay2/5341624332/merged rw,relatime - overlay overlay rw,lowerdir=/var/lib/mydocker/overlay2/5341624332/lower,upperdir=/u,workdir=/w,uuid=on
45 44 254:0 /srv/my\\040data /var/lib/mydocker/overlay2/5341624332/merged/data rw,relatime master:3 shared:7 - ext4 /dev/vda rw
46 44 254:0 /srv/ro /var/lib/mydocker/overlay2/5341624332/merged/ro ro,relatime - ext4 /dev/vda rw
47 22 0:40 / /var/lib/mydocker/overlay2/53416243321/merged rw - overlay overlay rw
"""


def test_parse_fields():
    entries = mountinfo.parse(SAMPLE)
    assert len(entries) == 5
    root, overlay, data, ro, _ = entries
    assert (root.mount_id, root.parent_id, root.device, root.mount_point) == (22, 1, "254:0", "/")
    assert root.optional == ("shared:1",)
    assert overlay.fstype == "overlay" and overlay.source == "overlay"
    assert "lowerdir=/var/lib/mydocker/overlay2/5341624332/lower" in overlay.super_options
    assert data.root == "/srv/my data"  # \040 unescaped
    assert data.optional == ("master:3", "shared:7")
    assert ro.options[0] == "ro"


def test_unescape():
    assert mountinfo.unescape(r"/a\040b\011c\012d\134e") == "/a b\tc\nd\\e"


def test_malformed_line():
    with pytest.raises(ValueError):
        mountinfo.parse_line("1 2 3:4 / /x rw")


def test_mounts_under_is_by_path_component():
    entries = mountinfo.parse(SAMPLE)
    under = mountinfo.mounts_under(entries, "/var/lib/mydocker/overlay2/5341624332")
    # 53416243321 shares the prefix but is another directory.
    assert [e.mount_id for e in under] == [44, 45, 46]
    assert [e.mount_id for e in mountinfo.mounts_under(entries, "/var/lib/mydocker/overlay2/5341624332/merged/")] == [44, 45, 46]


def test_is_under():
    assert mountinfo.is_under("/a/b", "/a/b")
    assert mountinfo.is_under("/a/b/c", "/a/b")
    assert not mountinfo.is_under("/a/bc", "/a/b")
    assert mountinfo.is_under("/anything", "/")


def test_find_returns_the_topmost():
    text = SAMPLE + "48 44 0:41 / /var/lib/mydocker/overlay2/5341624332/merged rw - tmpfs tmpfs rw\n"
    found = mountinfo.find(mountinfo.parse(text), "/var/lib/mydocker/overlay2/5341624332/merged")
    assert found is not None and found.fstype == "tmpfs"
    assert mountinfo.find(mountinfo.parse(text), "/nope") is None


def test_read_this_process():
    assert any(entry.mount_point == "/" for entry in mountinfo.read())


def test_read_under_and_find_at_parse_only_what_can_match(tmp_path):
    lines = [
        r"22 1 0:21 / / rw - ext4 /dev/vda1 rw",
        r"40 22 0:40 / /tmp/my\040root/overlay2/1/merged rw - overlay overlay rw,lowerdir=/l",
        r"41 40 0:41 / /tmp/my\040root/overlay2/1/merged/data rw - ext4 /dev/vda1 rw",
        r"42 22 0:42 / /tmp/my\040root/overlay2/12/merged rw - overlay overlay rw",
        r"43 22 0:43 / /tmp/other rw - tmpfs tmpfs rw",
    ]
    table = tmp_path / "mountinfo"
    table.write_text("\n".join(lines) + "\n")
    directory = "/tmp/my root/overlay2/1"
    assert mountinfo.read_under(directory, table) == mountinfo.mounts_under(mountinfo.read(table), directory)
    assert [m.mount_id for m in mountinfo.read_under(directory, table)] == [40, 41]
    assert mountinfo.find_at("/tmp/my root/overlay2/12/merged", table).mount_id == 42
    assert mountinfo.find_at("/tmp/my root/overlay2/1", table) is None
    assert len(mountinfo.read_under("/", table)) == 5


# -- one path through statx ------------------------------------------------------------------------

PROC_SUPER_MAGIC = 0x9FA0
TMPFS_MAGIC = 0x01021994


def test_mount_roots_and_their_types_without_the_table(tmp_path):
    from services.common import linux

    assert linux.mount_root_type("/proc") == PROC_SUPER_MAGIC
    (tmp_path / "plain").mkdir()
    assert linux.mount_root_type(str(tmp_path / "plain")) is None
    with pytest.raises(FileNotFoundError):
        linux.mount_root_type(str(tmp_path / "missing"))
    assert mountinfo.mount_type_at(str(tmp_path / "missing")) is None
    assert not mountinfo.is_mount_point(str(tmp_path / "plain"))


@pytest.mark.root
def test_a_tmpfs_is_a_mount_point_but_no_overlay_and_a_symlink_to_it_is_neither(tmp_path):
    from services.common import linux

    target = tmp_path / "mnt"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    linux.mount("tmpfs", str(target), "tmpfs", 0, "size=1m")
    try:
        assert mountinfo.mount_type_at(str(target)) == TMPFS_MAGIC
        assert mountinfo.is_mount_point(str(target)) and not mountinfo.is_overlay_mount(str(target))
        # Agrees with the table, which it stands in for.
        assert mountinfo.find_at(str(target)).fstype == "tmpfs"
        assert not mountinfo.is_mount_point(str(tmp_path / "link"))
    finally:
        linux.umount2(str(target))
    assert not mountinfo.is_mount_point(str(target))
