"""Unit tests of volume validation and of resolving a container path inside a rootfs (tmp dirs, no root)."""

import os

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.storage.model import Volume
from services.storage.volumes import (
    bind_options,
    mount_order,
    normalize_volume,
    normalize_volumes,
    prepare_host_path,
    resolve_in_root,
)


def test_normalize_volume():
    assert normalize_volume(Volume("/srv//data/", "/data/./x/../y/", True)) == Volume("/srv/data", "/data/y", True)
    assert normalize_volume(Volume("/a", "//data")).container_path == "/data"


@pytest.mark.parametrize(
    "volume,fragment",
    [
        (Volume("", "/data"), "empty"),
        (Volume("/srv", ""), "empty"),
        (Volume("relative", "/data"), "not absolute"),
        (Volume("/srv", "data"), "not absolute"),
        (Volume("/srv", "/"), 'on "/"'),
        (Volume("/srv", "/a/.."), 'on "/"'),
        (Volume("/srv\0", "/data"), "NUL"),
    ],
)
def test_bad_volumes(volume, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        normalize_volume(volume)


def test_two_volumes_on_one_path_are_refused():
    with pytest.raises(InvalidArgument, match="used by two volumes"):
        normalize_volumes([Volume("/a", "/data"), Volume("/b", "/data/")])


def test_mount_order_parents_first():
    volumes = [Volume("/1", "/data/sub/deeper"), Volume("/2", "/z"), Volume("/3", "/data"), Volume("/4", "/data/sub")]
    assert [v.container_path for v in mount_order(volumes)] == ["/data", "/z", "/data/sub", "/data/sub/deeper"]


def test_bind_options():
    assert bind_options(Volume("/a", "/b")) == ("rbind",)
    assert bind_options(Volume("/a", "/b", True)) == ("rbind", "ro")


def resolve(root, path, make_file=False):
    resolved = resolve_in_root(str(root), path, make_file)
    try:
        return resolved.relative, os.path.realpath(resolved.proc_path)
    finally:
        resolved.close()


def test_resolve_creates_missing_directories(tmp_path):
    relative, real = resolve(tmp_path, "/data/a/b")
    assert relative == "data/a/b"
    assert real == str(tmp_path / "data/a/b") and (tmp_path / "data/a/b").is_dir()


def test_resolve_follows_image_symlinks_inside_the_root(tmp_path, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (tmp_path / "etc").mkdir()
    os.symlink(str(outside), tmp_path / "abs")  # absolute: means <root>/<outside> in the container
    os.symlink("../../../../..", tmp_path / "up")  # climbs above the root: stops at the root
    os.symlink("etc", tmp_path / "rel")
    relative, real = resolve(tmp_path, "/abs/x")
    assert real.startswith(str(tmp_path) + "/") and relative == outside.as_posix().lstrip("/") + "/x"
    assert not (outside / "x").exists()
    assert resolve(tmp_path, "/up/data")[0] == "data"
    assert resolve(tmp_path, "/rel/sub")[0] == "etc/sub"
    assert resolve(tmp_path, "/../../..//etc/../etc")[0] == "etc"


def test_resolve_symlink_loop(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(InvalidArgument, match="too many levels"):
        resolve(tmp_path, "/a/x")


def test_resolve_through_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FailedPrecondition, match="not a directory"):
        resolve(tmp_path, "/file/x")
    with pytest.raises(FailedPrecondition, match="not a directory"):
        resolve(tmp_path, "/file")


def test_resolve_file_target(tmp_path):
    relative, _ = resolve(tmp_path, "/etc/hosts", make_file=True)
    assert relative == "etc/hosts" and (tmp_path / "etc/hosts").is_file()
    with pytest.raises(FailedPrecondition, match="is a directory"):
        resolve(tmp_path, "/etc", make_file=True)


def test_prepare_host_path(tmp_path):
    assert prepare_host_path(Volume(str(tmp_path / "a/b/c"), "/x")) is True
    assert (tmp_path / "a/b/c").is_dir()
    (tmp_path / "f").write_text("x")
    assert prepare_host_path(Volume(str(tmp_path / "f"), "/x")) is False


def test_prepare_host_path_through_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FailedPrecondition, match="goes through a file"):
        prepare_host_path(Volume(str(tmp_path / "f" / "sub"), "/x"))
