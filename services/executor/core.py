"""Logic of the executor: containers under per-container shims, found again from MYDOCKER_RUN/<id>/ after a restart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
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
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.executor import reconcile as reconcile_plan
from services.executor import statefiles
from services.executor.cgroup_layout import CgroupLayout
from services.executor.cgroups import Cgroup, cgroup_from_record
from services.executor.core_create import CreateMixin
from services.executor.core_reconcile import ReconcileMixin
from services.executor.core_streams import StreamsMixin
from services.executor.records import RecordsMixin
from services.executor.launcher_client import ShimLauncher
from services.executor.model import ProcessState, ProcessStatus, ServiceInfo
from services.executor.networking import Networking
from services.executor.plan import NETWORK_DIR, PYCACHE_DIR, SECCOMP_DIR, check_container_id, is_container_id
from services.executor.processes import KILL_WAIT, LOST_EXIT_CODE, POLL_SECONDS, Notifier, await_exit, kill_members, send_signal
from services.executor.profile import SecurityProfile
from services.executor.security_setup import SecuritySetup
from services.executor.trash import Trash

log = logging.getLogger(__name__)

REPO_ROOT = str(Path(services.__file__).resolve().parent.parent)
SHIM_EXIT_WAIT = 2.0
MAX_SIGNAL = 64


class ExecutorCore(CreateMixin, ReconcileMixin, StreamsMixin, RecordsMixin):
    def __init__(self, config: Config, layout: CgroupLayout, cgroup_mode: str, python: str = sys.executable):
        self._config = config
        self._layout = layout
        self._cgroup_mode = cgroup_mode
        self._python = python
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._launcher = ShimLauncher(python, self._helper_env)
        # State dirs of deleted containers: renamed aside in the delete, unlinked after its reply.
        self._trash = Trash(config.run)
        self._trash.sweep()
        self.networking = Networking(self.network_state_dir(), self.get, self._dir, instance=config.instance)
        self.security = SecuritySetup(config.run / SECCOMP_DIR)

    @property
    def launcher_pid(self) -> int:
        """The shim launcher's pid, 0 before the first create (or warm_up) and after close."""
        return self._launcher.pid

    def warm_up(self) -> None:
        """Start the shim launcher now rather than on the first create."""
        self._launcher.ensure_started()

    def close(self) -> None:
        """Stop the shim launcher (shims are left running) and finish deleting state dirs; a later create starts a new one."""
        self._launcher.close()
        self._trash.close()

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
        # Plain strings, not Path joins: `ps` reads this for every container (1,000 on a busy host).
        base = f"{directory}/"
        if not os.path.exists(base + statefiles.PLAN):
            raise NotFound(f"no such container: {container_id} (the executor has no state for it under {self._config.run})")

        def read(name: str) -> str | None:
            return statefiles.read_text(base + name)

        status = (read(statefiles.STATUS) or statefiles.CREATING).strip()
        shim_pid, shim_start = statefiles.parse_pid(read(statefiles.SHIM_PID))
        shim_alive = statefiles.is_alive(shim_pid, shim_start)
        pid, start = statefiles.parse_pid(read(statefiles.PID))
        exit_text = read(statefiles.EXIT)
        common = {
            "id": container_id,
            "shim_pid": shim_pid if shim_alive else 0,
            "cgroup_path": str(self._cgroup(directory, container_id).path()),
            "log_path": f"{self._config.root}/containers/{container_id}/{container_id}-json.log",
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
        # The usual case, the init reaped and its pid namespace with it: an rmdir finds the cgroup empty.
        if not cgroup.remove_if_empty():
            if directory.is_dir():
                kill_members(cgroup, container_id)
            else:
                members = cgroup.pids()
                if members:
                    raise FailedPrecondition(
                        f"cgroup {cgroup.path()} of container {container_id} still holds processes "
                        f"{' '.join(map(str, members))} and the executor has no state for it: they are not ours "
                        "to kill; stop them, then delete again"
                    )
            cgroup.remove()
        # The veth went with the network namespace; the container's port rules are removed here.
        self.networking.disconnect(container_id)
        self._trash.discard(directory)
        shutil.rmtree(self.log_path(container_id).parent, ignore_errors=True)

    # -- reconcile ----------------------------------------------------------------------------
