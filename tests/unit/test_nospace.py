"""services/common/nospace.py: which errors mean a full disk, the one-line message, and the reserve file."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import grpc
import pytest

from services.common import nospace
from services.common.errors import NoSpace
from services.common.grpc_errors import status_for


def test_full_disk_errors_are_recognised_and_others_are_not() -> None:
    assert nospace.is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert nospace.is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert nospace.is_no_space(sqlite3.OperationalError("database or disk is full"))
    assert not nospace.is_no_space(OSError(errno.EIO, "Input/output error"))
    assert not nospace.is_no_space(sqlite3.OperationalError("database is locked"))
    assert not nospace.is_no_space(ValueError("disk is full"))


def test_the_message_is_one_line_naming_the_path_and_its_filesystem(tmp_path: Path) -> None:
    error = nospace.no_space_error("writing the state database", tmp_path, OSError(errno.ENOSPC, "x"))
    assert isinstance(error, NoSpace) and status_for(error) == grpc.StatusCode.RESOURCE_EXHAUSTED
    text = str(error)
    assert "\n" not in text
    assert text.startswith("no space left on device while writing the state database ")
    assert str(tmp_path.resolve()) in text and f"the filesystem at {nospace.mount_point(tmp_path)}" in text
    assert text.endswith(": free space there and retry")
    quota = nospace.no_space_error("x", "/", OSError(errno.EDQUOT, "x"))
    assert str(quota) == "disk quota exceeded while x on the filesystem at /: free space there and retry"


def test_mount_point_is_where_the_device_changes(tmp_path: Path) -> None:
    assert nospace.mount_point("/") == "/"
    assert nospace.mount_point("/proc/self") == "/proc"
    # A path that does not exist yet is named by its nearest existing parent's filesystem.
    assert nospace.mount_point(tmp_path / "not" / "yet") == nospace.mount_point(tmp_path)


def test_converted_turns_only_full_disk_errors_into_nospace(tmp_path: Path) -> None:
    with pytest.raises(NoSpace) as caught:
        with nospace.converted("doing it", tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(PermissionError):
        with nospace.converted("doing it", tmp_path):
            raise PermissionError(errno.EACCES, "denied")
    # The innermost names the step: an outer one lets NoSpace through unchanged.
    with pytest.raises(NoSpace, match="inner step"):
        with nospace.converted("outer", tmp_path), nospace.converted("inner step", tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_reserve_is_made_allocated_and_released(tmp_path: Path) -> None:
    reserve = tmp_path / "db.reserve"
    assert nospace.make_reserve(reserve, 64 * 1024)
    assert reserve.stat().st_size == 64 * 1024 and reserve.stat().st_blocks * 512 >= 64 * 1024
    assert nospace.make_reserve(reserve, 64 * 1024)  # there already: nothing to do
    assert nospace.release_reserve(reserve) and not reserve.exists()
    assert not nospace.release_reserve(reserve)
    assert sorted(os.listdir(tmp_path)) == []
