"""One exec: the fresh nsexec helper joining a running container, its stdio on our side, and its status pipe."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator

from services.executor.model import CloseStdin, Exited, InputEvent, Output, OutputEvent, Resize, Signal, Started, Stdin
from services.executor.processes import LOST_EXIT_CODE, error_for, write_all

STREAM_POLL_SECONDS = 0.1
READ_SIZE = 64 * 1024


class ExecSession:
    """One exec: the helper process, its stdio on our side, and its status pipe."""

    def __init__(self, terminal: bool, stdin: bool, window: tuple[int, int] | None):
        self.terminal = terminal
        self.want_stdin = stdin
        self.window = window
        self.proc: subprocess.Popen | None = None
        self.console: socket.socket | None = None
        self.master = -1
        self.stdin_fd = -1
        self.outputs: dict[int, str] = {}
        self.status_r = -1
        self.pidfd = -1
        self.pid = 0
        self.status_buffer = b""
        self.error: str | None = None
        self.exit_code: int | None = None
        self._stdin_lock = threading.Lock()

    def spawn(self, args: list[str], env: dict[str, str]) -> None:
        child_fds: list[int] = []
        console_fd = -1
        if self.terminal:
            # The helper allocates the pty inside the container and sends us its master.
            self.console, child_console = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            console_fd = child_console.detach()
            child_fds.append(console_fd)
            stdio = (subprocess.DEVNULL,) * 3
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            if self.want_stdin:
                in_r, self.stdin_fd = os.pipe()
            else:
                in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            stdio = (in_r, out_w, err_w)
            child_fds += [in_r, out_w, err_w]
            self.outputs[out_r] = "stdout"
            self.outputs[err_r] = "stderr"
        self.status_r, status_w = os.pipe()
        child_fds.append(status_w)
        try:
            # fork+exec of a fresh helper, never a fork of this server; it joins the namespaces itself.
            self.proc = subprocess.Popen(
                [*args, str(status_w), str(console_fd)],
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
                pass_fds=tuple(fd for fd in (status_w, console_fd) if fd >= 0),
                start_new_session=True,
                close_fds=True,
                cwd="/",
                env=env,
            )
        finally:
            for fd in child_fds:
                os.close(fd)
        threading.Thread(target=self.proc.wait, name="exec-reaper", daemon=True).start()

    def _status_lines(self, data: bytes) -> None:
        self.status_buffer += data
        while b"\n" in self.status_buffer:
            line, _, self.status_buffer = self.status_buffer.partition(b"\n")
            text = line.decode(errors="replace")
            if text.startswith("P "):
                self.pid = int(text[2:])
                with contextlib.suppress(OSError):
                    self.pidfd = os.pidfd_open(self.pid)
            elif text.startswith("E "):
                self.error = text[2:]
            elif text.startswith("X "):
                self.exit_code = int(text[2:])

    def run(self, events: Iterator[InputEvent], is_active: Callable[[], bool]) -> Iterator[OutputEvent]:
        status_open = True
        # The helper says "P <pid>" once inside the container, or why it could not get there.
        while status_open and not self.pid and self.error is None:
            readable, _, _ = select.select([self.status_r], [], [], STREAM_POLL_SECONDS)
            if not is_active():
                return
            if readable:
                data = os.read(self.status_r, 4096)
                status_open = bool(data)
                self._status_lines(data)
        if self.terminal and self.pid and self.error is None:
            status_open = self._receive_console(status_open, is_active)
        if self.error is not None or not self.pid:
            raise error_for(self.error or "failed the exec helper exited before entering the container")
        yield Started(self.pid)
        threading.Thread(target=self._feed, args=(events,), name="exec-in", daemon=True).start()
        while is_active() and (self.outputs or status_open):
            watched = [*self.outputs, *([self.status_r] if status_open else [])]
            readable, _, _ = select.select(watched, [], [], STREAM_POLL_SECONDS)
            for fd in readable:
                try:
                    data = os.read(fd, READ_SIZE)
                except OSError:
                    data = b""  # EIO: the pty's last slave is closed
                if fd == self.status_r:
                    status_open = bool(data)
                    self._status_lines(data)
                elif data:
                    yield Output(self.outputs[fd], data)
                else:
                    del self.outputs[fd]
        if not is_active():
            return
        if self.error is not None:
            raise error_for(self.error)
        yield Exited(self.exit_code if self.exit_code is not None else LOST_EXIT_CODE)

    def _receive_console(self, status_open: bool, is_active: Callable[[], bool]) -> bool:
        """Wait for the pty master from inside the container, or for the reason it will not come."""
        console_open = True
        while self.master < 0 and self.error is None and is_active() and (console_open or status_open):
            watched = [*([self.console] if console_open else []), *([self.status_r] if status_open else [])]
            readable, _, _ = select.select(watched, [], [], STREAM_POLL_SECONDS)
            if self.status_r in readable:
                data = os.read(self.status_r, 4096)
                status_open = bool(data)
                self._status_lines(data)
            if self.console in readable:
                data, fds, _, _ = socket.recv_fds(self.console, 16, 1)
                if fds:
                    self.master = fds[0]
                    if self.window:
                        set_window(self.master, *self.window)
                    self.outputs[self.master] = "stdout"
                    self.stdin_fd = self.master if self.want_stdin else -1
                elif not data:
                    console_open = False
        if self.master < 0 and self.error is None:
            self.error = "failed the exec helper sent no terminal"
        return status_open

    def _feed(self, events: Iterator[InputEvent]) -> None:
        try:
            for event in events:
                if isinstance(event, Stdin) and self.stdin_fd >= 0:
                    with self._stdin_lock:
                        if self.stdin_fd >= 0:
                            write_all(self.stdin_fd, event.data)
                elif isinstance(event, CloseStdin):
                    self._close_stdin()
                elif isinstance(event, Resize):
                    with self._stdin_lock:
                        if self.master >= 0:
                            set_window(self.master, event.rows, event.cols)
                elif isinstance(event, Signal) and self.pidfd >= 0:
                    signal.pidfd_send_signal(self.pidfd, event.signum)
        except (OSError, ValueError):
            # The process is gone or the stream was cancelled.
            return

    def _close_stdin(self) -> None:
        with self._stdin_lock:
            if self.stdin_fd < 0:
                return
            if self.stdin_fd == self.master:
                write_all(self.master, b"\x04")
                return
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
        with self._stdin_lock:
            if self.stdin_fd >= 0 and self.stdin_fd != self.master:
                os.close(self.stdin_fd)
            self.stdin_fd = -1
        for fd in [*self.outputs, self.status_r, self.pidfd]:
            if fd >= 0 and fd != self.master:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.outputs.clear()
        with self._stdin_lock:
            if self.master >= 0:
                os.close(self.master)
                self.master = -1


def set_window(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
