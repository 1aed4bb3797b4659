"""The executor's side of the shim launcher (shim_launcher.py): a warm grpc-free helper that forks every shim."""

from __future__ import annotations

import socket
import subprocess
import threading
import weakref
from collections.abc import Callable

from services.common.errors import FailedPrecondition
from services.executor import shim_launcher

CREATE_TIMEOUT = 30.0
# How long a stopping executor waits for its shim launcher to see end of file and exit.
LAUNCHER_EXIT_WAIT = 5.0


def _stop_launcher(proc: subprocess.Popen, sock: socket.socket) -> None:
    # End of file on its stdin is the launcher's only stop signal: a kill could catch it mid-fork.
    sock.close()
    try:
        proc.wait(timeout=LAUNCHER_EXIT_WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ShimLauncher:
    """The executor's side of the shim launcher (shim_launcher.py): starts it, restarts it when dead, one request at a time."""

    def __init__(self, python: str, env: Callable[[], dict[str, str]]):
        self._python = python
        self._env = env
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def ensure_started(self) -> None:
        with self._lock:
            self._ensure()

    def close(self) -> None:
        with self._lock:
            self._discard()

    def spawn(self, options: dict) -> int:
        """Have the launcher fork a shim with these options; the intermediate child's exit status."""
        request = shim_launcher.encode_request(options)
        with self._lock:
            for _ in range(2):
                self._ensure()
                try:
                    self._sock.sendall(request)
                except OSError:
                    # Dead before reading a byte of it (EPIPE): a fresh launcher gets the request.
                    self._discard()
                    continue
                return self._reply()
            raise FailedPrecondition("the shim launcher died twice in a row: see the executor's log")

    def _reply(self, what: str = "starting the shim") -> int:
        data = b""
        try:
            while len(data) < shim_launcher.REPLY_SIZE:
                chunk = self._sock.recv(shim_launcher.REPLY_SIZE - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as err:
            self._discard()
            raise FailedPrecondition(f"the shim launcher did not answer while {what}: {err}") from None
        if len(data) < shim_launcher.REPLY_SIZE:
            # It died while serving the request: whether a shim started is unknown, so this create fails.
            self._discard()
            raise FailedPrecondition(f"the shim launcher died while {what}: see the executor's log")
        return shim_launcher.decode_reply(data)

    def _ensure(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        self._discard()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.settimeout(CREATE_TIMEOUT)
            # fork+exec of a fresh interpreter, never a fork of this gRPC server; no preexec_fn.
            proc = subprocess.Popen(
                [self._python, "-S", "-c", shim_launcher.BOOTSTRAP],
                stdin=theirs,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                cwd="/",
                env=self._env(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._proc, self._sock = proc, ours
        # Reaped as soon as it exits, so a launcher that dies between creates leaves no zombie.
        threading.Thread(target=proc.wait, name="shim-launcher-reaper", daemon=True).start()
        # Stopped with the executor: at interpreter exit, or when this object goes away first.
        self._finalizer = weakref.finalize(self, _stop_launcher, proc, ours)
        # Ready once its imports are done: from then on it writes nothing (no bytecode) under MYDOCKER_RUN.
        if self._reply("starting up") != shim_launcher.READY:
            self._discard()
            raise FailedPrecondition("the shim launcher did not start: see the executor's log")

    def _discard(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = self._sock = self._finalizer = None
