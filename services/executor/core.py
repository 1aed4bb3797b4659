"""Logic of the executor: containers under per-container shims, found again from MYDOCKER_RUN/<id>/ after a restart."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import marshal
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import services
from services.common.config import VERSION, Config
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, MydockerError, NotFound
from services.executor import netfiles, statefiles
from services.executor import reconcile as reconcile_plan
from services.executor.cgroups import Cgroup, CgroupLayout, cgroup_from_record
from services.executor.core_reconcile import ReconcileMixin
from services.executor.core_streams import StreamsMixin
from services.executor.launcher_client import CREATE_TIMEOUT, ShimLauncher
from services.executor.model import CreateSpec, ProcessState, ProcessStatus, ServiceInfo
from services.executor.networking import Networking
from services.executor import devices
from services.executor.plan import (
    NETWORK_DIR,
    PYCACHE_DIR,
    SECCOMP_DIR,
    ContainerPlan,
    build_plan,
    check_container_id,
    is_container_id,
    tmpfs_mount,
    validate,
)
from services.executor.profile import SecurityProfile
from services.executor.security_setup import SecuritySetup
from services.executor.processes import KILL_WAIT, LOST_EXIT_CODE, POLL_SECONDS, Notifier, await_exit, error_for, kill_members, send_signal

log = logging.getLogger(__name__)

REPO_ROOT = str(Path(services.__file__).resolve().parent.parent)
START_TIMEOUT = 30.0
SHIM_EXIT_WAIT = 2.0
MAX_SIGNAL = 64


class ExecutorCore(ReconcileMixin, StreamsMixin):
    def __init__(self, config: Config, layout: CgroupLayout, cgroup_mode: str, python: str = sys.executable):
        self._config = config
        self._layout = layout
        self._cgroup_mode = cgroup_mode
        self._python = python
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._launcher = ShimLauncher(python, self._helper_env)
        self.networking = Networking(self.network_state_dir(), self.get, self._dir)
        self.security = SecuritySetup(config.run / SECCOMP_DIR)

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
        """The live state, with the container's security profile."""
        state = self._settle_lost_shim(self._state(container_id))
        return dataclasses.replace(state, security=self._profile(self._dir(container_id)))

    def _profile(self, directory: Path) -> SecurityProfile | None:
        security = self._plan(directory).get("security")
        return SecurityProfile.from_dict(security) if security else None

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
        confinement = self.security.container(spec.security)
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
                extra_mounts=[tmpfs_mount(mount) for mount in spec.security.tmpfs],
                security=confinement.profile,
                extra_devices=confinement.device_nodes,
            )
        )
        self._check_rootfs(plan.rootfs)
        with self._lock(spec.id):
            if directory.exists():
                self._check_reusable(spec.id, directory)
            try:
                plan = self._prepare(plan, spec.ip_address, directory, cgroup, confinement.device_rules)
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

    def _check_rootfs(self, rootfs: str) -> None:
        """Only a rootfs storage prepared: a directory below <root>/overlay2, symlinks resolved, never / or the host's."""
        if not os.path.isdir(rootfs):
            raise InvalidArgument(f"rootfs_path {rootfs} is not a directory")
        allowed = os.path.realpath(self._config.root / "overlay2")
        if not os.path.realpath(rootfs).startswith(allowed + os.sep):
            raise InvalidArgument(
                f"rootfs_path {rootfs} is not below {allowed}: the executor runs only root filesystems storage prepared"
            )

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

    def _prepare(
        self, plan: ContainerPlan, ip_address: str, directory: Path, cgroup: Cgroup, device_rules: tuple
    ) -> ContainerPlan:
        """Cgroup, state dir, fifos, log file and /etc files; returns the plan with those files' bind mounts."""
        try:
            self._layout.shims().create()
            cgroup.create()
            cgroup.apply(plan.limits)
            # Before init joins: no process of the container ever sees the host's devices.
            if device_rules:
                devices.apply(cgroup, device_rules)
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
        with Notifier(directory) as notifier:
            return self._await_created_notified(container_id, directory, notifier)

    def _await_created_notified(self, container_id: str, directory: Path, notifier: Notifier) -> ProcessState:
        deadline = time.monotonic() + CREATE_TIMEOUT
        while True:
            error = statefiles.read_text(str(directory / statefiles.ERROR))
            if error:
                raise error_for(error)
            state = self._state(container_id)
            if state.status == ProcessStatus.CREATED and state.pid:
                return dataclasses.replace(state, security=self._profile(directory))
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
            with Notifier(directory) as notifier:
                return self._start_notified(container_id, directory, state, notifier)

    def _start_notified(
        self, container_id: str, directory: Path, state: ProcessState, notifier: Notifier
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
                raise error_for(error)
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
                    send_signal(pid, start, signum)
            return
        if not send_signal(state.pid, state.pid_start_time, signum):
            raise FailedPrecondition(f"container {container_id} is not running")

    def wait(
        self, container_id: str, timeout: float | None, is_active: Callable[[], bool] = lambda: True
    ) -> ProcessState | None:
        """The exited state, or None when `timeout` seconds pass or the caller goes away first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        # Several waiters may share the fifo and one may take another's wakeup: none sleeps longer than before.
        with Notifier(self._dir(container_id)) as notifier:
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
                    send_signal(state.pid, state.pid_start_time, signal.SIGKILL)
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
        send_signal(pid, start, signal.SIGKILL)
        send_signal(shim_pid, shim_start, signal.SIGKILL)
        deadline = time.monotonic() + SHIM_EXIT_WAIT
        await_exit(shim_pid, shim_start, deadline)
        await_exit(pid, start, deadline)
        cgroup = self._cgroup(directory, container_id)
        if directory.is_dir():
            kill_members(cgroup, container_id)
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
