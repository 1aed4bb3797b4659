"""A cgroup directory with every cgroup nested below it: their members, and their removal deepest first."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from services.common.errors import FailedPrecondition


def rmdir_when_empty(directory: Path, timeout: float) -> None:
    """rmdir a cgroup, retrying while its last processes finish exiting (EBUSY)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                raise FailedPrecondition(f"cannot remove cgroup {directory}: {err.strerror}") from None
            time.sleep(0.02)


def rmdir_if_empty(directory: Path) -> bool:
    """rmdir a cgroup that is gone or empty: False, and left alone, while it has members or children."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as err:
        # EBUSY: members, or (v1) children; ENOTEMPTY: children (v2, and plain directories in tests).
        if err.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise FailedPrecondition(f"cannot remove cgroup {directory}: {err.strerror}") from None
    return True


def procs(directory: Path) -> list[int]:
    """The pids in one cgroup's cgroup.procs; [] when it does not exist."""
    try:
        with open(directory / "cgroup.procs") as handle:
            return [int(line) for line in handle.read().split()]
    except FileNotFoundError:
        return []


def subtree(directory: Path) -> list[Path]:
    """Every cgroup below `directory`, deepest first, then `directory` itself ([] when it does not exist).

    A privileged container can mount cgroupfs in its cgroup namespace, where its own cgroup is the root,
    and nest cgroups (systemd and docker-in-docker do): their members are the container's too, and a
    cgroup with children cannot be removed before them (EBUSY).
    """
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    below: list[Path] = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            below.extend(subtree(Path(entry.path)))
    return [*below, directory]


def procs_below(directory: Path) -> set[int]:
    """Members of `directory` and of every cgroup nested below it."""
    return {pid for level in subtree(directory) for pid in procs(level)}


def remove_tree(directory: Path, timeout: float) -> None:
    """rmdir `directory` and every cgroup below it, deepest first; each may take `timeout` to empty."""
    for level in subtree(directory):
        rmdir_when_empty(level, timeout)
