"""remove_tree_within: rm -rf that removes symlinks without following them and never enters a mount point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import linux
from services.storage.fsutil import MountBelow, remove_tree_within


def test_a_tree_of_files_dirs_and_symlinks_goes_and_symlink_targets_stay(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("stays")
    top = tmp_path / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "file").write_text("x")
    (top / "a" / "to-dir").symlink_to(outside)
    (top / "a" / "to-file").symlink_to(outside / "target")
    (top / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(top / "fifo")
    remove_tree_within(top)
    assert not top.exists()
    assert (outside / "target").read_text() == "stays"


def test_deeper_than_the_recursion_limit(tmp_path: Path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.mkdir("top", dir_fd=fd)
        for _ in range(1500):
            child = os.open("top" if _ == 0 else "d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
            os.mkdir("d", dir_fd=fd)
    finally:
        os.close(fd)
    remove_tree_within(tmp_path / "top")
    assert not (tmp_path / "top").exists()


def test_missing_and_plain_files(tmp_path: Path):
    remove_tree_within(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    remove_tree_within(tmp_path / "file")
    assert not (tmp_path / "file").exists()


@pytest.mark.root
def test_a_mount_below_stops_it_and_nothing_inside_the_mount_is_touched(tmp_path: Path):
    top = tmp_path / "top"
    mount_point = top / "upper" / "mnt"
    mount_point.mkdir(parents=True)
    (top / "upper" / "sibling").write_text("x")
    linux.mount("tmpfs", str(mount_point), "tmpfs", 0, "size=1m")
    try:
        (mount_point / "precious").write_text("keep")
        with pytest.raises(MountBelow) as raised:
            remove_tree_within(top)
        assert raised.value.filename == str(mount_point)
        assert (mount_point / "precious").read_text() == "keep"
        with pytest.raises(MountBelow):
            remove_tree_within(mount_point)
    finally:
        linux.umount2(str(mount_point))
    remove_tree_within(top)
    assert not top.exists()


@pytest.mark.root
def test_a_file_bind_mounted_below_stops_it_too(tmp_path: Path):
    host_file = tmp_path / "host.conf"
    host_file.write_text("host data")
    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    target = top / "etc" / "app.conf"
    target.write_text("")
    linux.mount(str(host_file), str(target), None, linux.MS_BIND)
    try:
        with pytest.raises(MountBelow) as raised:
            remove_tree_within(top)
        assert raised.value.filename == str(target)
    finally:
        linux.umount2(str(target))
    assert host_file.read_text() == "host data"
    remove_tree_within(top)
    assert not top.exists()
