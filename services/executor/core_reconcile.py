"""The executor's reconcile: settling what a dead executor, dead shims or a reboot left under MYDOCKER_RUN."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.executor import reconcile as reconcile_plan
from services.executor import statefiles
from services.executor.plan import is_container_id
from services.executor.processes import KILL_WAIT, LOST_EXIT_CODE, await_exit, kill_members, send_signal

log = logging.getLogger(__name__)
LOST_ERROR = (
    "the shim died without recording the exit (it was killed, or the host rebooted): "
    f"the exit code is lost, {LOST_EXIT_CODE} stands for it"
)
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


class ReconcileMixin:
    """ExecutorCore's reconcile methods; they use its _config, _layout, _lock, _cgroup and _destroy."""

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
        if send_signal(pid, start, signal.SIGKILL):
            await_exit(pid, start, time.monotonic() + KILL_WAIT)
        kill_members(self._cgroup(directory, action.id), action.id)
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
