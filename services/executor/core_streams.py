"""The executor's stream methods: logs, exec and attach of running containers."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.limits import check_exec_size
from services.executor import framing, logfmt, nsexec, statefiles
from services.executor.exec_session import READ_SIZE, STREAM_POLL_SECONDS, ExecSession
from services.executor.model import (
    CloseStdin,
    Exited,
    InputEvent,
    LogEntry,
    Output,
    OutputEvent,
    ProcessSpec,
    ProcessState,
    ProcessStatus,
    Resize,
    Signal,
    Stdin,
    StdioMode,
)
from services.executor.plan import merge_env

LOG_POLL_SECONDS = 0.05
SHIM_EXIT_WAIT = 2.0


class StreamsMixin:
    """ExecutorCore's stream methods; they use its _dir, _plan, _state, _cgroup, wait, log_path, security and helpers."""

    def logs(
        self, container_id: str, follow: bool, tail: int, since_ns: int, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[LogEntry]:
        directory = self._dir(container_id)
        path = self.log_path(container_id)
        if not (directory / statefiles.PLAN).exists() and not path.exists():
            raise NotFound(f"no such container: {container_id}")
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return
        with handle:
            entries = [e for e in self._entries(handle.read(), handle) if e.time_ns >= since_ns]
            if tail > 0:
                entries = entries[-tail:]
            yield from entries
            while follow and is_active():
                # Exit checked before the read: lines written before the exit record are never missed.
                exited = self._exited_or_gone(container_id)
                data = handle.read()
                yield from (e for e in self._entries(data, handle) if e.time_ns >= since_ns)
                if exited and not data:
                    return
                if not data:
                    time.sleep(LOG_POLL_SECONDS)

    def _exited_or_gone(self, container_id: str) -> bool:
        try:
            return self._state(container_id).status == ProcessStatus.EXITED
        except NotFound:
            return True

    @staticmethod
    def _entries(data: bytes, handle) -> Iterator[LogEntry]:
        """Complete lines of `data`; an unfinished last line is given back to the file position."""
        end = data.rfind(b"\n") + 1
        if end < len(data):
            handle.seek(end - len(data), os.SEEK_CUR)
        for line in data[:end].splitlines():
            try:
                stream, payload, time_ns = logfmt.decode_entry(line)
            except (ValueError, KeyError):
                continue
            yield LogEntry(stream, payload, time_ns)

    # -- exec ---------------------------------------------------------------------------------

    def exec(
        self,
        container_id: str,
        process: ProcessSpec,
        window: tuple[int, int] | None,
        events: Iterator[InputEvent],
        is_active: Callable[[], bool] = lambda: True,
    ) -> Iterator[OutputEvent]:
        state = self._state(container_id)
        if state.status != ProcessStatus.RUNNING:
            raise FailedPrecondition(f"container {container_id} is not running")
        if not state.shim_pid:
            # Its init may live on, but nothing would record how it ends: refuse rather than run beside it.
            raise FailedPrecondition(
                f"container {container_id} has lost its shim (killed?): no exec; stop or delete it"
            )
        if not process.args or not process.args[0]:
            raise InvalidArgument("the command is empty: give the program to run")
        directory = self._dir(container_id)
        plan = self._plan(directory)
        env = self._exec_env(state, process)
        check_exec_size(process.args, env, "the exec")
        spec = {
            "pid": state.pid,
            "start_time": state.pid_start_time,
            "cgroup_procs": self._cgroup(directory, container_id).join_files(),
            "args": list(process.args),
            "env": list(env),
            "cwd": process.cwd or plan.get("cwd") or "/",
            "terminal": process.terminal,
            "security": self.security.exec(plan.get("security"), process.user, process.privileged),
        }
        session = ExecSession(process.terminal, process.stdin, window)
        try:
            session.spawn([self._python, "-S", "-c", nsexec.BOOTSTRAP, json.dumps(spec)], self._helper_env())
            yield from session.run(events, is_active)
        finally:
            session.close()

    def _exec_env(self, state: ProcessState, process: ProcessSpec) -> tuple[str, ...]:
        """The container's environment (its PID 1's), then the exec's own values."""
        try:
            with open(f"/proc/{state.pid}/environ", "rb") as handle:
                raw = handle.read()
        except OSError:
            raw = None
        if raw is None or not statefiles.is_alive(state.pid, state.pid_start_time):
            raise FailedPrecondition(f"container {state.id} is not running")
        base = [entry.decode(errors="surrogateescape") for entry in raw.split(b"\0") if entry]
        if process.user:
            # Another user's HOME comes from its own passwd entry (nsexec adds it), not the container's.
            base = [entry for entry in base if not entry.startswith("HOME=")]
        env = merge_env(base, process.env)
        if process.terminal and not any(e.startswith("TERM=") for e in env):
            env = (*env, "TERM=xterm")
        for entry in env:
            if "=" not in entry or entry.startswith("="):
                raise InvalidArgument(f'invalid environment entry "{entry}": use KEY=VALUE')
        return env

    # -- attach -------------------------------------------------------------------------------

    def attach(
        self, container_id: str, events: Iterator[InputEvent], is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[OutputEvent]:
        directory = self._dir(container_id)
        plan = self._plan(directory)
        if plan.get("stdio_mode") != StdioMode.ATTACH.value:
            raise FailedPrecondition(f"container {container_id} runs detached: its output is in its log, not attachable")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.connect(str(directory / statefiles.ATTACH_SOCKET))
            except OSError:
                state = self._state(container_id)
                if state.status == ProcessStatus.EXITED:
                    yield Exited(state.exit_code, state.oom_killed)
                    return
                raise FailedPrecondition(f"container {container_id} has no attach socket: its shim is gone") from None
            threading.Thread(target=_feed_shim, args=(sock, events), name=f"attach-in-{container_id}", daemon=True).start()
            reader = framing.FrameReader()
            while is_active():
                readable, _, _ = select.select([sock], [], [], STREAM_POLL_SECONDS)
                if not readable:
                    continue
                try:
                    data = sock.recv(READ_SIZE)
                except OSError:
                    data = b""
                if not data:
                    break
                for kind, payload in reader.feed(data):
                    if kind == framing.EXIT:
                        yield self._attach_exit(container_id, framing.decode_int(payload))
                        return
                    yield Output("stdout" if kind == framing.STDOUT else "stderr", payload)
            if is_active():
                state = self.wait(container_id, SHIM_EXIT_WAIT)
                if state is None:
                    raise FailedPrecondition(f"lost the attach socket of container {container_id}")
                yield Exited(state.exit_code, state.oom_killed)
        finally:
            sock.close()

    def _attach_exit(self, container_id: str, exit_code: int) -> Exited:
        """The exit frame's code, with what the shim recorded before sending it (its OOM verdict)."""
        state = self._state(container_id)
        return Exited(exit_code, state.status == ProcessStatus.EXITED and state.oom_killed)


def _feed_shim(sock: socket.socket, events: Iterator[InputEvent]) -> None:
    """Client events to shim frames, until the client's stream ends or the shim goes away."""
    try:
        for event in events:
            if isinstance(event, Stdin):
                frame = framing.encode(framing.STDIN, event.data)
            elif isinstance(event, CloseStdin):
                frame = framing.encode(framing.CLOSE_STDIN)
            elif isinstance(event, Resize):
                frame = framing.encode(framing.RESIZE, framing.encode_resize(event.rows, event.cols))
            elif isinstance(event, Signal):
                frame = framing.encode(framing.SIGNAL, framing.encode_int(event.signum))
            else:
                continue
            sock.sendall(frame)
    except (OSError, ValueError):
        # The shim closed (container exited) or the call was cancelled: nothing left to feed.
        return
