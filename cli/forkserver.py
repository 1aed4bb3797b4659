"""The warm CLI server: a process that has imported the whole CLI and forks one worker per command line.

`python -m cli.forkserver` (started by `scripts/up`) listens on <MYDOCKER_RUN>/cli.sock (root only).
It never creates a gRPC channel or a thread, so forking it is safe; one spare worker is forked ahead
of time and initialises gRPC, and each command line goes to the spare, which becomes a copy of the
in-process CLI: the client's stdio, directory, umask and environment, then `cli.main.run_command`.
The server reports the worker's exit status, and kills the worker when its client disappears
(as a killed in-process CLI would be gone). When the CLI's source changes under it, it answers
"fallback" (the client runs the CLI itself) and exits, so no command ever runs stale code.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from cli import forkclient as proto
from cli.forkworker import Worker, preload, send
from services.common.config import Config
from services.common.runfiles import WATCH_SECONDS, Identity, RunFiles, SocketKeeper, identity_of

REPO = Path(__file__).resolve().parent.parent
# The code a worker runs: a change to any of it makes this server stale.
SOURCE_DIRS = ("cli", "services/common", "protos")
SERVICE = "cli"
BACKLOG = 64


class SourceWatch:
    """Tells whether the CLI's source changed since it was loaded: a .py file edited, added or removed."""

    def __init__(self, repo: Path = REPO, dirs: tuple[str, ...] = SOURCE_DIRS):
        # Bytecode caches come and go as modules get compiled (a directory's mtime with them): not source.
        self._dirs = [
            str(path)
            for directory in dirs
            for path in [repo / directory, *(repo / directory).rglob("*")]
            if path.is_dir() and "__pycache__" not in path.parts
        ]
        self._stamp = self._snapshot()

    def _snapshot(self) -> list[tuple[str, int, int]]:
        stamps = []
        for directory in self._dirs:
            with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.endswith(".py"):
                        with contextlib.suppress(FileNotFoundError):
                            info = entry.stat()
                            stamps.append((entry.path, info.st_size, info.st_mtime_ns))
        return sorted(stamps)

    def changed(self) -> bool:
        return self._snapshot() != self._stamp


def exit_code(wait_status: int) -> int:
    """A shell's view of a wait status: the exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


def peer_uid(conn: socket.socket) -> int:
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


@dataclass
class Spare:
    """A worker forked ahead of time, waiting for the connection it will serve."""

    pid: int
    handoff: socket.socket


class ForkServer:
    def __init__(
        self, config: Config, listener: socket.socket, keep_fds: list[int], run_files: RunFiles | None = None,
        source: SourceWatch | None = None,
    ):
        self.config = config
        self.listener = listener
        # fds only the server may hold (e.g. its lock): workers close them.
        self.keep_fds = keep_fds
        # A socket, pidfile or lock someone deleted is made again (as the services do theirs).
        path = config.socket_path(SERVICE)
        self.keeper = SocketKeeper(SERVICE, path, identity_of(path), self._rebind, kind=socket.SOCK_SEQPACKET)
        self.run_files = run_files
        self.next_watch = time.monotonic() + WATCH_SECONDS
        self.source = source or SourceWatch()
        self.clients: dict[int, socket.socket] = {}  # worker pid -> its client's connection
        self.spare: Spare | None = None
        self.stopping = False
        # Set when the source changed: main() re-executes the server after cleaning up.
        self.restart = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poll = select.poll()

    # -- the server's loop --------------------------------------------------------------------

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        # A stop asked for while main() was still setting up (the socket already answers health checks).
        self.stopping = self.stopping or bool(_EARLY_STOPS)
        self.poll.register(self.listener, select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)
        # Imported modules become permanent: the GC never touches their pages, so forks share them.
        gc.freeze()
        self._fork_spare()
        while not self.stopping:
            for fd, events in self.poll.poll(int(WATCH_SECONDS * 1000)):
                if fd == self.listener.fileno():
                    self._accept(self.listener)
                elif fd == self.wake_r:
                    self._drain_wakeups()
                else:
                    self._client_gone(fd)
            self._reap()
            self._watch()
        self._shutdown()

    def _watch(self) -> None:
        """At most once per WATCH_SECONDS: look at our socket, pidfile and lock."""
        now = time.monotonic()
        if now < self.next_watch or self.stopping:
            return
        self.next_watch = now + WATCH_SECONDS
        self.keeper.check()
        if self.run_files is not None:
            self.run_files.check()

    def _rebind(self) -> Identity | None:
        """Listen on a new socket at our path; connections that reached the old one first are still served."""
        path = self.keeper.path
        old, self.listener = self.listener, listen(path)
        self.poll.register(self.listener, select.POLLIN)
        while not self.stopping and self._accept(old):
            pass
        self.poll.unregister(old)
        old.close()
        return identity_of(path)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass

    def _accept(self, listener: socket.socket) -> bool:
        """Take one connection waiting on `listener`; False when none was waiting."""
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return False
        if peer_uid(conn) != os.getuid():
            conn.close()
            return True
        if self.source.changed():
            send(conn, (proto.FALLBACK, "the CLI's source changed since the server started"))
            conn.close()
            print(f"cli server: the CLI's source changed: restarting pid {os.getpid()} with it", flush=True)
            self.stopping = self.restart = True
            return True
        spare = self.spare or self._fork_spare()
        self.spare = None
        try:
            spare.handoff.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, proto.pack_fds([conn.fileno()]))])
        except OSError as err:
            # The spare died (it is reaped below); this client runs the CLI itself.
            send(conn, (proto.FALLBACK, f"no worker: {err}"))
            conn.close()
            spare.handoff.close()
            return True
        spare.handoff.close()
        self.clients[spare.pid] = conn
        # POLLRDHUP alone: the request's data is the worker's to read, only the client's hangup is ours.
        self.poll.register(conn, select.POLLRDHUP)
        self._fork_spare()
        return True

    def _client_gone(self, fd: int) -> None:
        """The client hung up before its command finished: end the worker, as a killed CLI would end."""
        for pid, conn in self.clients.items():
            if conn.fileno() == fd:
                self.poll.unregister(fd)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return
        self.poll.unregister(fd)

    def _reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.clients.pop(pid, None)
            if conn is not None:
                send(conn, (proto.EXIT, exit_code(wait_status)))
                with contextlib.suppress(KeyError):
                    self.poll.unregister(conn)
                conn.close()
            elif self.spare is not None and self.spare.pid == pid:
                # Not replaced here: a spare that cannot even start would be forked in a tight loop.
                # The next command forks one on demand.
                print(f"cli server: spare worker {pid} ended with status {exit_code(wait_status)} before any command", flush=True)
                self.spare.handoff.close()
                self.spare = None

    def _shutdown(self) -> None:
        """Stop taking commands; running workers finish and report their status themselves."""
        if self.spare is not None:
            self.spare.handoff.close()  # the spare sees EOF and exits
        for conn in self.clients.values():
            conn.close()

    # -- workers ------------------------------------------------------------------------------

    def _fork_spare(self) -> Spare:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            ours.close()
            status = 70  # EX_SOFTWARE
            try:
                self._become_worker()
                status = Worker(theirs).run()
            except BaseException:
                # A bug of ours: say where, on whichever stderr the worker has by now, then end.
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(status)
        theirs.close()
        self.spare = Spare(pid, ours)
        return self.spare

    def _become_worker(self) -> None:
        """In the forked child: drop everything of the server's, so it can exit or restart freely."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.listener.close()
        for conn in self.clients.values():
            conn.close()
        if self.spare is not None:
            self.spare.handoff.close()
        for fd in (self.wake_r, self.wake_w, *self.keep_fds):
            os.close(fd)


def listen(path: Path) -> socket.socket:
    from services.common.server import root_only_socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with root_only_socket(path):
            listener.bind(str(path))
        listener.listen(BACKLOG)
    except OSError:
        listener.close()
        raise
    listener.setblocking(False)
    return listener


# Signals that arrived before ForkServer.serve() installed its handlers: they still mean "stop".
_EARLY_STOPS: list[int] = []


def main() -> int:
    from services.common.server import single_instance, write_pidfile

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: _EARLY_STOPS.append(number))

    config = Config.from_env()
    config.run.mkdir(parents=True, exist_ok=True)
    os.chmod(config.run, 0o700)
    # Stamped before the imports: a file edited while they run is then seen as changed, not missed.
    source = SourceWatch()
    preload()
    with single_instance(config.lock_path(SERVICE), SERVICE) as lock_fd:
        socket_path = config.socket_path(SERVICE)
        listener = listen(socket_path)
        write_pidfile(config.pid_path(SERVICE))
        print(f"cli server: pid {os.getpid()} serving on {socket_path} ({time.strftime('%Y-%m-%d %H:%M:%S')})", flush=True)
        run_files = RunFiles(SERVICE, config.pid_path(SERVICE), config.lock_path(SERVICE), lock_fd)
        server = ForkServer(config, listener, [lock_fd], run_files, source)
        try:
            server.serve()
        finally:
            # Still under the lock, so the socket (unless another server took its path over since)
            # and pidfile are ours to remove. A restart keeps the pidfile (the pid stays), so
            # `scripts/down` finds the server even while it re-executes.
            server.listener.close()
            if identity_of(socket_path) == server.keeper.bound:
                socket_path.unlink(missing_ok=True)
            if not server.restart:
                config.pid_path(SERVICE).unlink(missing_ok=True)
    if server.restart:
        # Same pid, fresh code; meanwhile clients find no server and run the CLI themselves.
        os.execv(sys.executable, [sys.executable, "-m", "cli.forkserver"])
    print(f"cli server: pid {os.getpid()} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
