"""Processes of a container from the executor's side: exact signals by pidfd, cgroup kills, exit waits, notify fifo."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.executor import statefiles
from services.executor.cgroups import Cgroup

# Exit code reported when the shim (or an exec helper) and the process vanished without recording one.
LOST_EXIT_CODE = 255
POLL_SECONDS = 0.02
# Longest wait for a notify-fifo wakeup before the state is read again anyway.
NOTIFY_FALLBACK = 0.05
KILL_WAIT = 10.0


def error_for(text: str) -> Exception:
    """The domain error of a shim or helper's `<kind> <message>` error line."""
    kind, message = statefiles.parse_error(text)
    if kind == statefiles.ERROR_INVALID:
        return InvalidArgument(message)
    return FailedPrecondition(message)


def send_signal(pid: int, start_time: int, signum: int) -> bool:
    """Signal exactly the recorded process: a pidfd pins it, the start time proves it is the same one."""
    if pid <= 0:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not statefiles.is_alive(pid, start_time):
            return False
        signal.pidfd_send_signal(pidfd, signum)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def kill_members(cgroup: Cgroup, container_id: str) -> None:
    """SIGKILL every process of one of our container cgroups, until it is empty.

    A member's pidfd is opened before its membership is checked again, so a pid recycled since the
    listing (another process, outside the cgroup) is never signalled.
    """
    deadline = time.monotonic() + KILL_WAIT
    while members := cgroup.pids():
        for pid in members:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            # Exited since the listing: nothing left to kill.
            try:
                with contextlib.suppress(ProcessLookupError):
                    if pid in cgroup.pids():
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
        if time.monotonic() > deadline:
            raise FailedPrecondition(
                f"container {container_id}: processes {' '.join(map(str, members))} of cgroup {cgroup.path()} "
                f"outlived SIGKILL for {KILL_WAIT:.0f}s"
            )
        time.sleep(POLL_SECONDS)


def await_exit(pid: int, start_time: int, deadline: float) -> None:
    """Until the recorded process has exited or the deadline passes: its pidfd wakes us at once, no polling."""
    if not statefiles.is_alive(pid, start_time):
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # Checked again with the pidfd held: the pid cannot be recycled under us any more.
        if statefiles.is_alive(pid, start_time):
            select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
    finally:
        os.close(pidfd)


class Notifier:
    """The read side of a container's notify fifo, held while waiting for the shim's next status change.

    Opened before the state is checked, so a change made after the check always leaves a byte to wake on.
    Read-write, so it never reports end-of-file when the shim closes its side. A state dir made before
    the fifo existed, or a shim that dies without a word, falls back to waking every NOTIFY_FALLBACK seconds.
    """

    def __init__(self, directory: Path):
        self._path = directory / statefiles.NOTIFY_FIFO
        self._fd = -1

    def __enter__(self) -> Notifier:
        try:
            self._fd = os.open(self._path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._fd = -1
        return self

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def wait(self, deadline: float | None, cap: float = NOTIFY_FALLBACK, fallback: float = POLL_SECONDS / 4) -> None:
        timeout = cap if deadline is None else max(0.0, min(deadline - time.monotonic(), cap))
        if self._fd < 0:
            time.sleep(min(timeout, fallback))
            return
        readable, _, _ = select.select([self._fd], [], [], timeout)
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._fd, 4096):
                    pass


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
