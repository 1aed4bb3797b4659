"""Bridges the terminal and a bidirectional exec/attach stream: raw mode, stdin, resize and signals."""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import struct
import sys
import termios
import threading
import tty as tty_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass

READ_SIZE = 64 * 1024
_END = object()


@dataclass
class StreamCodec:
    """How one stream kind (Exec or Attach) spells its messages."""

    first: object
    stdin: Callable[[bytes], object]
    close_stdin: Callable[[], object]
    resize: Callable[[int, int], object]
    signal: Callable[[int], object]


def window_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal on `fd`; (24, 80) when it has none."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return 24, 80
    return rows or 24, cols or 80


@contextlib.contextmanager
def raw_terminal(fd: int, enabled: bool) -> Iterator[None]:
    """Raw mode, so Ctrl-C and every key reach the container's tty instead of this process."""
    if not enabled or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty_module.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class StreamSession:
    """Runs one stream call: feeds it stdin and events, copies its output, returns the exit code."""

    def __init__(self, codec: StreamCodec, attach_stdin: bool, tty: bool):
        self._codec = codec
        self._attach_stdin = attach_stdin
        self._tty = tty
        self._outbox: queue.Queue = queue.Queue()

    def _requests(self) -> Iterator[object]:
        yield self._codec.first
        while True:
            item = self._outbox.get()
            if item is _END:
                return
            yield item

    def _pump_stdin(self) -> None:
        while True:
            try:
                data = os.read(sys.stdin.fileno(), READ_SIZE)
            except OSError:
                data = b""
            if not data:
                self._outbox.put(self._codec.close_stdin())
                return
            self._outbox.put(self._codec.stdin(data))

    def _install_handlers(self) -> dict[int, object]:
        previous: dict[int, object] = {}
        if self._tty and os.isatty(sys.stdin.fileno()):
            def on_resize(signum, frame):
                self._outbox.put(self._codec.resize(*window_size(sys.stdin.fileno())))

            previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_resize)
        else:
            # Without a terminal, Ctrl-C and TERM are forwarded to the process, as docker does.
            def forward(signum, frame):
                self._outbox.put(self._codec.signal(signum))

            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[signum] = signal.signal(signum, forward)
        return previous

    def open(self, call: Callable[[Iterator[object]], Iterator[object]]) -> None:
        """Start the call now; output waits in the stream until pump() reads it."""
        self._responses = call(self._requests())

    def pump(self, on_message: Callable[[object], int | None]) -> int:
        """Feed stdin and events, hand every response to `on_message` until it returns an exit code.

        Runs in the main thread: signal handlers can only be installed there.
        """
        previous = self._install_handlers()
        if self._tty and os.isatty(sys.stdin.fileno()):
            self._outbox.put(self._codec.resize(*window_size(sys.stdin.fileno())))
        if self._attach_stdin:
            threading.Thread(target=self._pump_stdin, name="stdin", daemon=True).start()
        exit_code: int | None = None
        try:
            with raw_terminal(sys.stdin.fileno(), self._tty and self._attach_stdin):
                for message in self._responses:
                    exit_code = on_message(message)
                    if exit_code is not None:
                        break
        finally:
            self._outbox.put(_END)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if exit_code is not None:
                self._responses.cancel()
        if exit_code is None:
            raise ConnectionError("the stream ended without an exit code")
        return exit_code


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
