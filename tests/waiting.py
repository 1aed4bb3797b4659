"""Waiting on a condition with a deadline: what tests do instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar


T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "the condition", interval: float = 0.02) -> T:
    """The first truthy value of `predicate()`; AssertionError naming `what` if none comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """True once `pid` has exited and been reaped, or is a zombie (it will never run again)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The state follows the parenthesised command, which may itself contain ") ".
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in (b"Z", b"X")


def wait_gone(*pids: int, timeout: float = 10.0) -> None:
    wait_until(lambda: all(process_gone(pid) for pid in pids), timeout, f"processes {list(pids)} to exit")

