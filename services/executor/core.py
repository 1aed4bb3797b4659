"""Logic of the executor: containers under per-container shims, found again from MYDOCKER_RUN/<id>/ after a restart."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import marshal
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import services
from services.common.config import VERSION, Config
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, MydockerError, NotFound
from services.executor import framing, logfmt, netfiles, nsexec, shim_launcher, statefiles
from services.executor import reconcile as reconcile_plan
from services.executor.cgroups import Cgroup, CgroupLayout, cgroup_from_record
from services.executor.networking import Networking
from services.executor.model import (
    CloseStdin,
    CreateSpec,
    Exited,
    InputEvent,
    LogEntry,
    Output,
    OutputEvent,
    ProcessSpec,
    ProcessState,
    ProcessStatus,
    Resize,
    ServiceInfo,
    Signal,
    Started,
    Stdin,
    StdioMode,
)
from services.executor.plan import NETWORK_DIR, PYCACHE_DIR, ContainerPlan, build_plan, check_container_id, is_container_id, merge_env, validate

log = logging.getLogger(__name__)

REPO_ROOT = str(Path(services.__file__).resolve().parent.parent)
# Exit code reported when the shim and the process vanished without recording one.
LOST_EXIT_CODE = 255
POLL_SECONDS = 0.02
# Longest wait for a notify-fifo wakeup before the state is read again anyway.
NOTIFY_FALLBACK = 0.05
CREATE_TIMEOUT = 30.0
START_TIMEOUT = 30.0
KILL_WAIT = 10.0
SHIM_EXIT_WAIT = 2.0
LOG_POLL_SECONDS = 0.05
STREAM_POLL_SECONDS = 0.1
READ_SIZE = 64 * 1024
MAX_SIGNAL = 64
# How long a stopping executor waits for its shim launcher to see end of file and exit.
LAUNCHER_EXIT_WAIT = 5.0
# Files only a container's state dir holds: a directory of MYDOCKER_RUN with none of them is not ours.
STATE_DIR_MARKERS = (
    statefiles.PLAN,
    statefiles.CGROUP,
    statefiles.SHIM_PID,
    statefiles.PID,
    statefiles.START_FIFO,
    statefiles.NOTIFY_FIFO,
    statefiles.SHIM_LOG,
)
LOST_ERROR = (
    "the shim died without recording the exit (it was killed, or the host rebooted): "
    f"the exit code is lost, {LOST_EXIT_CODE} stands for it"
)


def _error_for(text: str) -> Exception:
    kind, message = statefiles.parse_error(text)
    if kind == statefiles.ERROR_INVALID:
        return InvalidArgument(message)
    return FailedPrecondition(message)


def _send_signal(pid: int, start_time: int, signum: int) -> bool:
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


def _kill_members(cgroup: Cgroup, container_id: str) -> None:
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


def _await_exit(pid: int, start_time: int, deadline: float) -> None:
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


class _Notifier:
    """The read side of a container's notify fifo, held while waiting for the shim's next status change.

    Opened before the state is checked, so a change made after the check always leaves a byte to wake on.
    Read-write, so it never reports end-of-file when the shim closes its side. A state dir made before
    the fifo existed, or a shim that dies without a word, falls back to waking every NOTIFY_FALLBACK seconds.
    """

    def __init__(self, directory: Path):
        self._path = directory / statefiles.NOTIFY_FIFO
        self._fd = -1

    def __enter__(self) -> _Notifier:
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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


class ExecutorCore:
    def __init__(self, config: Config, layout: CgroupLayout, cgroup_mode: str, python: str = sys.executable):
        self._config = config
        self._layout = layout
        self._cgroup_mode = cgroup_mode
        self._python = python
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._launcher = ShimLauncher(python, self._helper_env)
        self.networking = Networking(self.network_state_dir(), self.get, self._dir)

    @property
    def launcher_pid(self) -> int:
        """The shim launcher's pid, 0 before the first create (or warm_up) and after close."""
        return self._launcher.pid

    def warm_up(self) -> None:
        """Start the shim launcher now rather than on the first create."""
        self._launcher.ensure_started()

    def close(self) -> None:
        """Stop the shim launcher (shims are left running); a later create starts a new one."""
        self._launcher.close()

    @property
    def layout(self) -> CgroupLayout:
        return self._layout

    # -- paths and records -------------------------------------------------------------------

    def _dir(self, container_id: str) -> Path:
        check_container_id(container_id)
        return self._config.run / container_id

    def network_state_dir(self) -> Path:
        """Where the firewall keeps what iptables looked like before mydocker's first network."""
        return self._config.run / NETWORK_DIR

    def log_path(self, container_id: str) -> Path:
        return self._config.root / "containers" / container_id / f"{container_id}-json.log"

    def _lock(self, container_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(container_id, threading.Lock())

    def _helper_env(self) -> dict[str, str]:
        # Helpers get only what Python needs: nothing of ours reaches the container. Their bytecode
        # is cached under MYDOCKER_RUN, never in the source tree, since every start imports them.
        return {"PYTHONPATH": REPO_ROOT, "PYTHONPYCACHEPREFIX": str(self._config.run / PYCACHE_DIR), "PATH": os.defpath}

    def _cgroup(self, directory: Path, container_id: str) -> Cgroup:
        text = statefiles.read_text(str(directory / statefiles.CGROUP))
        if text:
            return cgroup_from_record(json.loads(text))
        return self._layout.container(container_id)

    def _plan(self, directory: Path) -> dict:
        text = statefiles.read_text(str(directory / statefiles.PLAN))
        if text is None:
            raise NotFound(f"no such container: {directory.name}")
        return json.loads(text)

    def _state(self, container_id: str) -> ProcessState:
        directory = self._dir(container_id)
        if not (directory / statefiles.PLAN).exists():
            raise NotFound(f"no such container: {container_id} (the executor has no state for it under {self._config.run})")

        def read(name: str) -> str | None:
            return statefiles.read_text(str(directory / name))

        status = (read(statefiles.STATUS) or statefiles.CREATING).strip()
        shim_pid, shim_start = statefiles.parse_pid(read(statefiles.SHIM_PID))
        shim_alive = statefiles.is_alive(shim_pid, shim_start)
        pid, start = statefiles.parse_pid(read(statefiles.PID))
        exit_text = read(statefiles.EXIT)
        common = {
            "id": container_id,
            "shim_pid": shim_pid if shim_alive else 0,
            "cgroup_path": str(self._cgroup(directory, container_id).path()),
            "log_path": str(self.log_path(container_id)),
        }
        if exit_text:
            record = statefiles.parse_exit(exit_text)
            return ProcessState(
                status=ProcessStatus.EXITED,
                exit_code=record["exit_code"],
                oom_killed=record["oom_killed"],
                exited_at_ns=record["exited_at_ns"] or None,
                **common,
            )
        process_alive = statefiles.is_alive(pid, start)
        if not shim_alive and not process_alive and (shim_pid or status != statefiles.CREATING):
            # Shim and process are both gone without an exit record (killed, or the host rebooted).
            return ProcessState(status=ProcessStatus.EXITED, exit_code=LOST_EXIT_CODE, **common)
        if status == statefiles.RUNNING or (status == statefiles.EXITED and process_alive):
            return ProcessState(status=ProcessStatus.RUNNING, pid=pid, pid_start_time=start, **common)
        return ProcessState(status=ProcessStatus.CREATED, pid=pid, pid_start_time=start, **common)

    def _container_ids(self) -> list[str]:
        try:
            entries = sorted(os.scandir(self._config.run), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [
            e.name
            for e in entries
            if e.is_dir() and is_container_id(e.name) and os.path.exists(os.path.join(e.path, statefiles.PLAN))
        ]

    # -- queries ------------------------------------------------------------------------------

    def info(self) -> ServiceInfo:
        live = 0
        for container_id in self._container_ids():
            shim_pid, shim_start = statefiles.parse_pid(
                statefiles.read_text(str(self._config.run / container_id / statefiles.SHIM_PID))
            )
            live += statefiles.is_alive(shim_pid, shim_start)
        return ServiceInfo(
            version=VERSION,
            run_root=str(self._config.run),
            cgroup_version=self._cgroup_mode,
            kernel=os.uname().release,
            containers_running=live,
            pid=os.getpid(),
        )

    def get(self, container_id: str) -> ProcessState:
        return self._settle_lost_shim(self._state(container_id))

    def list(self) -> list[ProcessState]:
        states = []
        for container_id in self._container_ids():
            with contextlib.suppress(NotFound):
                states.append(self._settle_lost_shim(self._state(container_id)))
        return states

    def _settle_lost_shim(self, state: ProcessState) -> ProcessState:
        """A container whose shim died while this executor ran is settled as a restart would settle it.

        Without its shim nobody collects its output or its exit status: what is left of it is killed
        and the exit recorded as lost (255), so it never reads as running unsupervised.
        """
        if state.status is ProcessStatus.EXITED or state.shim_pid:
            return state
        directory = self._dir(state.id)
        with self._lock(state.id):
            entry = self._scan_state_dir(state.id, directory)
            action = reconcile_plan.plan_state_dir(entry) if entry.has_plan else None
            if not isinstance(action, reconcile_plan.RecordLost):
                return state
            self._apply(action)
        return self._state(state.id)

    def list_cgroups(self) -> tuple[list[str], str]:
        """Ids of every container cgroup below the parent (with or without state), and the parent itself."""
        return [name for name in self._layout.child_names() if is_container_id(name)], self._layout.parent_path()

    # -- create and start ---------------------------------------------------------------------

    def create(self, spec: CreateSpec) -> ProcessState:
        directory = self._dir(spec.id)
        cgroup = self._layout.container(spec.id)
        plan = validate(
            build_plan(
                spec.id,
                spec.hostname,
                spec.rootfs_path,
                spec.process.args,
                spec.process.env,
                cwd=spec.process.cwd,
                terminal=spec.process.terminal,
                stdin=spec.process.stdin,
                stdio_mode=spec.stdio_mode.value,
                limits=spec.limits,
                cgroup_procs=cgroup.procs_files(),
                cgroup_namespace=os.path.exists("/proc/self/ns/cgroup"),
            )
        )
        if not os.path.isdir(plan.rootfs):
            raise InvalidArgument(f"rootfs_path {plan.rootfs} is not a directory")
        with self._lock(spec.id):
            if directory.exists():
                self._check_reusable(spec.id, directory)
            try:
                plan = self._prepare(plan, spec.ip_address, directory, cgroup)
                plan_json = plan.to_json()
                statefiles.write_atomic(str(directory / statefiles.PLAN), plan_json)
                self._spawn_shim(plan, plan_json, directory, cgroup, spec.window)
                return self._await_created(spec.id, directory)
            except BaseException as err:
                # Leave nothing behind: no shim, no parked init, no cgroup, no state dir.
                try:
                    self._destroy(spec.id, directory)
                except MydockerError as cleanup:
                    raise FailedPrecondition(f"{err} (and cleaning up failed: {cleanup})") from err
                raise

    def _check_reusable(self, container_id: str, directory: Path) -> None:
        """An id whose shim or init lives, or whose command ran and exited, belongs to a container.

        Anything else is the debris of a create that never finished (the executor or the shim died
        half-way, or the host rebooted before the start): cleaned, so a retried create succeeds.
        """
        shim_pid, shim_start = statefiles.parse_pid(statefiles.read_text(str(directory / statefiles.SHIM_PID)))
        pid, start = statefiles.parse_pid(statefiles.read_text(str(directory / statefiles.PID)))
        exit_text = statefiles.read_text(str(directory / statefiles.EXIT))
        never_ran = exit_text is not None and not statefiles.parse_exit(exit_text)["started"]
        if statefiles.is_alive(shim_pid, shim_start) or statefiles.is_alive(pid, start) or (exit_text and not never_ran):
            raise AlreadyExists(f"container {container_id} already exists in the executor: delete it first")
        self._destroy(container_id, directory)

    def _prepare(self, plan: ContainerPlan, ip_address: str, directory: Path, cgroup: Cgroup) -> ContainerPlan:
        """Cgroup, state dir, fifos, log file and /etc files; returns the plan with those files' bind mounts."""
        try:
            self._layout.shims().create()
            cgroup.create()
            cgroup.apply(plan.limits)
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ERANGE):
                raise InvalidArgument(f"the host refused the cgroup limits: {err}") from None
            raise FailedPrecondition(f"cannot set up the cgroup: {err}") from None
        directory.mkdir(mode=0o700, parents=True)
        statefiles.write_atomic(str(directory / statefiles.CGROUP), json.dumps(cgroup.to_record()))
        os.mkfifo(directory / statefiles.START_FIFO, 0o600)
        os.mkfifo(directory / statefiles.NOTIFY_FIFO, 0o600)
        log_path = self.log_path(plan.id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch(mode=0o640)
        # Bind-mounted from here, as docker does: the image's own files stay as they are.
        network_files = netfiles.write_network_files(directory, plan.hostname, ip_address)
        return dataclasses.replace(plan, mounts=(*plan.mounts, *network_files))

    def _spawn_shim(
        self, plan, plan_json: str, directory: Path, cgroup: Cgroup, window: tuple[int, int] | None
    ) -> None:
        options = {
            "state": str(directory),
            "log": str(self.log_path(plan.id)),
            "stdio": plan.stdio_mode,
            "terminal": plan.terminal,
            "stdin": plan.stdin,
            "oom": cgroup.oom_file(),
            "shim_procs": self._layout.shims().procs_files(),
            "window": (window[0], window[1]) if window and plan.terminal else None,
            # JSON's types only (dicts, lists, str, int, bool, None), so the init's marshal.loads sees what json would.
            "plan": marshal.dumps(json.loads(plan_json)),
        }
        status = self._launcher.spawn(options)
        if status != 0:
            raise FailedPrecondition(f"the shim did not start (status {status}): see {directory / statefiles.SHIM_LOG}")

    def _await_created(self, container_id: str, directory: Path) -> ProcessState:
        with _Notifier(directory) as notifier:
            return self._await_created_notified(container_id, directory, notifier)

    def _await_created_notified(self, container_id: str, directory: Path, notifier: _Notifier) -> ProcessState:
        deadline = time.monotonic() + CREATE_TIMEOUT
        while True:
            error = statefiles.read_text(str(directory / statefiles.ERROR))
            if error:
                raise _error_for(error)
            state = self._state(container_id)
            if state.status == ProcessStatus.CREATED and state.pid:
                return state
            if state.status != ProcessStatus.CREATED:
                raise FailedPrecondition(
                    f"container {container_id} exited while being created: see {directory / statefiles.SHIM_LOG}"
                )
            if time.monotonic() > deadline:
                raise FailedPrecondition(f"container {container_id} was not ready after {CREATE_TIMEOUT:.0f}s")
            notifier.wait(deadline)

    def start(self, container_id: str) -> ProcessState:
        directory = self._dir(container_id)
        with self._lock(container_id):
            state = self._state(container_id)
            if state.status == ProcessStatus.RUNNING:
                raise FailedPrecondition(f"container {container_id} is already started (running): only a created container starts")
            if state.status != ProcessStatus.CREATED or not state.pid:
                raise FailedPrecondition(f"container {container_id} is {state.status.value}: only a created container starts")
            with _Notifier(directory) as notifier:
                return self._start_notified(container_id, directory, state, notifier)

    def _start_notified(
        self, container_id: str, directory: Path, state: ProcessState, notifier: _Notifier
    ) -> ProcessState:
        try:
            fd = os.open(directory / statefiles.START_FIFO, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            # ENXIO: nobody holds the fifo for reading, i.e. the parked init is gone.
            raise FailedPrecondition(f"container {container_id} cannot start: its init is gone ({err.strerror})") from None
        try:
            os.write(fd, b"s")
        finally:
            os.close(fd)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            error = statefiles.read_text(str(directory / statefiles.ERROR))
            if error:
                raise _error_for(error)
            current = self._state(container_id)
            if current.status != ProcessStatus.CREATED:
                # It did exec: report the process that started, even if it has already exited since;
                # WaitContainer tells how it ended.
                return dataclasses.replace(
                    current,
                    status=ProcessStatus.RUNNING,
                    pid=state.pid,
                    pid_start_time=state.pid_start_time,
                    exit_code=0,
                    oom_killed=False,
                    exited_at_ns=None,
                )
            if time.monotonic() > deadline:
                raise FailedPrecondition(f"container {container_id} did not start within {START_TIMEOUT:.0f}s")
            notifier.wait(deadline)

    # -- signals, wait, delete ----------------------------------------------------------------

    def kill(self, container_id: str, signum: int, all_processes: bool) -> None:
        signum = signum or signal.SIGTERM
        if not 0 < signum <= MAX_SIGNAL:
            raise InvalidArgument(f"invalid signal {signum}")
        state = self._state(container_id)
        if state.status != ProcessStatus.RUNNING:
            raise FailedPrecondition(f"container {container_id} is not running")
        if all_processes:
            cgroup = self._cgroup(self._dir(container_id), container_id)
            for pid in cgroup.pids():
                start = statefiles.proc_start_time(pid)
                if start is not None:
                    _send_signal(pid, start, signum)
            return
        if not _send_signal(state.pid, state.pid_start_time, signum):
            raise FailedPrecondition(f"container {container_id} is not running")

    def wait(
        self, container_id: str, timeout: float | None, is_active: Callable[[], bool] = lambda: True
    ) -> ProcessState | None:
        """The exited state, or None when `timeout` seconds pass or the caller goes away first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Several waiters may share the fifo and one may take another's wakeup: none sleeps longer than before.
        with _Notifier(self._dir(container_id)) as notifier:
            while True:
                state = self._state(container_id)
                if state.status == ProcessStatus.EXITED:
                    return state
                remaining = None if deadline is None else deadline - time.monotonic()
                if (remaining is not None and remaining <= 0) or not is_active():
                    return None
                notifier.wait(deadline, cap=POLL_SECONDS, fallback=POLL_SECONDS)

    def delete(self, container_id: str, force: bool) -> ProcessState | None:
        directory = self._dir(container_id)
        with self._lock(container_id):
            if not (directory / statefiles.PLAN).exists():
                # Nothing recorded: finish a half-done delete, then report nothing.
                self._destroy(container_id, directory)
                return None
            state = self._state(container_id)
            if state.status != ProcessStatus.EXITED:
                if not force:
                    raise FailedPrecondition(f"container {container_id} is {state.status.value}: stop it first or force")
                if state.pid:
                    _send_signal(state.pid, state.pid_start_time, signal.SIGKILL)
                    final = self.wait(container_id, KILL_WAIT)
                    if final is None:
                        raise FailedPrecondition(f"container {container_id} did not exit after SIGKILL")
                    state = final
            self._destroy(container_id, directory)
            return state

    def _destroy(self, container_id: str, directory: Path) -> None:
        """Shim, cgroup, state dir and log dir, in that order; each step tolerates what is already gone.

        With a state dir, the container's cgroup is ours: whatever is left in it is killed. Without one
        (an orphan cgroup: a create cut short before its state dir, or a run dir lost to a reboot), its
        processes are nobody's we know: they are never killed, and the delete is refused while they live.
        """
        shim_pid, shim_start = statefiles.parse_pid(statefiles.read_text(str(directory / statefiles.SHIM_PID)))
        pid, start = statefiles.parse_pid(statefiles.read_text(str(directory / statefiles.PID)))
        # A shim lingering for an attach client, or a half-created container: neither is wanted any more.
        _send_signal(pid, start, signal.SIGKILL)
        _send_signal(shim_pid, shim_start, signal.SIGKILL)
        deadline = time.monotonic() + SHIM_EXIT_WAIT
        _await_exit(shim_pid, shim_start, deadline)
        _await_exit(pid, start, deadline)
        cgroup = self._cgroup(directory, container_id)
        if directory.is_dir():
            _kill_members(cgroup, container_id)
        else:
            members = cgroup.pids()
            if members:
                raise FailedPrecondition(
                    f"cgroup {cgroup.path()} of container {container_id} still holds processes "
                    f"{' '.join(map(str, members))} and the executor has no state for it: they are not ours to "
                    "kill; stop them, then delete again"
                )
        cgroup.remove()
        # The veth went with the network namespace; the container's port rules are removed here.
        self.networking.disconnect(container_id)
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(self.log_path(container_id).parent, ignore_errors=True)

    # -- reconcile ----------------------------------------------------------------------------

    def reconcile(self, grace: float = reconcile_plan.ORPHAN_GRACE_SECONDS) -> list[reconcile_plan.Action]:
        """Settle what a dead executor, dead shims or a reboot left behind; run before serving, idempotent.

        Debris of cut-short creates and deletes goes; containers whose shim died get their lost exit
        recorded (and any process left of them is killed), so Wait and Delete work as usual; empty orphan
        cgroups go. Whatever belongs to a live shim, parked (created) containers included, stays.
        """
        actions = reconcile_plan.plan(self._scan(), grace)
        for action in actions:
            with self._lock(action.id):
                self._apply(action)
        return actions

    def _scan(self) -> reconcile_plan.Scan:
        state_dirs = []
        try:
            entries = sorted(os.scandir(self._config.run), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and is_container_id(entry.name):
                directory = Path(entry.path)
                if any((directory / name).exists() for name in STATE_DIR_MARKERS):
                    state_dirs.append(self._scan_state_dir(entry.name, directory))
        now = time.time()
        cgroups = []
        for container_id in self.list_cgroups()[0]:
            cgroup = self._layout.container(container_id)
            cgroups.append(reconcile_plan.CgroupDir(container_id, len(cgroup.pids()), max(0.0, now - cgroup.last_change())))
        return reconcile_plan.Scan(tuple(state_dirs), tuple(cgroups))

    def _scan_state_dir(self, container_id: str, directory: Path) -> reconcile_plan.StateDir:
        def recorded(name: str) -> reconcile_plan.Recorded:
            pid, start = statefiles.parse_pid(statefiles.read_text(str(directory / name)))
            return reconcile_plan.Recorded(pid, start, statefiles.is_alive(pid, start))

        status = (statefiles.read_text(str(directory / statefiles.STATUS)) or "").strip()
        return reconcile_plan.StateDir(
            id=container_id,
            has_plan=(directory / statefiles.PLAN).exists(),
            shim=recorded(statefiles.SHIM_PID),
            init=recorded(statefiles.PID),
            has_exit=(directory / statefiles.EXIT).exists(),
            started=status == statefiles.RUNNING,
            cgroup_members=len(self._cgroup(directory, container_id).pids()),
        )

    def _apply(self, action: reconcile_plan.Action) -> None:
        try:
            if isinstance(action, reconcile_plan.Destroy):
                self._destroy(action.id, self._config.run / action.id)
            elif isinstance(action, reconcile_plan.RecordLost):
                self._record_lost(action)
            elif isinstance(action, reconcile_plan.RemoveCgroup):
                self._remove_orphan_cgroup(action.id)
        except FailedPrecondition as err:
            # One stuck container must not keep the executor from serving the others; it stays listed
            # (ListContainers, ListCgroups) for `system check` and a later DeleteContainer.
            log.warning("reconcile: %s: %s: could not finish: %s", action.id, action.reason, err)
            return
        log.info("reconcile: %s: %s: %s", action.id, action.reason, type(action).__name__)

    def _record_lost(self, action: reconcile_plan.RecordLost) -> None:
        """Kill what is left of the container (only what its state dir records or its cgroup holds), then write its exit."""
        directory = self._config.run / action.id
        shim_pid, shim_start = statefiles.parse_pid(statefiles.read_text(str(directory / statefiles.SHIM_PID)))
        if statefiles.is_alive(shim_pid, shim_start) or (directory / statefiles.EXIT).exists():
            return
        pid, start = statefiles.parse_pid(statefiles.read_text(str(directory / statefiles.PID)))
        if _send_signal(pid, start, signal.SIGKILL):
            _await_exit(pid, start, time.monotonic() + KILL_WAIT)
        _kill_members(self._cgroup(directory, action.id), action.id)
        if not (directory / statefiles.ERROR).exists():
            statefiles.write_atomic(str(directory / statefiles.ERROR), statefiles.format_error(statefiles.ERROR_FAILED, LOST_ERROR))
        exited_at = time.time_ns() if action.kill_init or action.kill_members else 0
        statefiles.write_atomic(str(directory / statefiles.EXIT), statefiles.format_lost_exit(LOST_EXIT_CODE, action.started, exited_at))
        statefiles.write_atomic(str(directory / statefiles.STATUS), statefiles.EXITED + "\n")
        statefiles.notify(str(directory))

    def _remove_orphan_cgroup(self, container_id: str) -> None:
        directory = self._config.run / container_id
        if directory.exists():
            return
        cgroup = self._layout.container(container_id)
        if not cgroup.pids():
            cgroup.remove(timeout=0)

    # -- logs ---------------------------------------------------------------------------------

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
        spec = {
            "pid": state.pid,
            "start_time": state.pid_start_time,
            "cgroup_procs": self._cgroup(directory, container_id).procs_files(),
            "args": list(process.args),
            "env": list(env),
            "cwd": process.cwd or plan.get("cwd") or "/",
            "terminal": process.terminal,
        }
        session = _ExecSession(process.terminal, process.stdin, window)
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
                    yield Exited(state.exit_code)
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
                        yield Exited(framing.decode_int(payload))
                        return
                    yield Output("stdout" if kind == framing.STDOUT else "stderr", payload)
            if is_active():
                state = self.wait(container_id, SHIM_EXIT_WAIT)
                if state is None:
                    raise FailedPrecondition(f"lost the attach socket of container {container_id}")
                yield Exited(state.exit_code)
        finally:
            sock.close()


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


class _ExecSession:
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
            raise _error_for(self.error or "failed the exec helper exited before entering the container")
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
            raise _error_for(self.error)
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
                        _set_window(self.master, *self.window)
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
                            _write_all(self.stdin_fd, event.data)
                elif isinstance(event, CloseStdin):
                    self._close_stdin()
                elif isinstance(event, Resize):
                    with self._stdin_lock:
                        if self.master >= 0:
                            _set_window(self.master, event.rows, event.cols)
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
                _write_all(self.master, b"\x04")
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


def _set_window(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

