"""The executor's create and start: confinement, cgroup, state dir and plan, the shim, the parked init, the start."""

from __future__ import annotations

import dataclasses
import errno
import json
import marshal
import os
import time
from pathlib import Path

from services.common import nospace
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, MydockerError
from services.executor import devices, netfiles, statefiles
from services.executor.cgroups import Cgroup
from services.executor.launcher_client import CREATE_TIMEOUT
from services.executor.model import CreateSpec, ProcessState, ProcessStatus
from services.executor.plan import ContainerPlan, build_plan, tmpfs_mount, validate
from services.executor.processes import Notifier, error_for

START_TIMEOUT = 30.0


class CreateMixin:
    """ExecutorCore's create and start; they use its _config, _layout, _launcher, security, _dir, _lock, _state,
    _profile, _destroy and log_path."""

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
                cgroup_procs=cgroup.join_files(),
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
                if spec.saved_request:
                    statefiles.write_atomic(str(directory / statefiles.REQUEST), spec.saved_request)
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
            shims = self._layout.shims()
            # A stat per hierarchy, where create() costs ~0.4 ms; it is there after the first create (a
            # standby shim or a live shim keeps it, and nothing of ours removes it while the executor runs).
            if not shims.exists_everywhere():
                shims.create()
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
        with nospace.converted(f"creating the log of container {plan.id}", log_path.parent.parent):
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
            "shim_procs": self._layout.shims().join_files(),
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
            if state.status == ProcessStatus.CREATED and not state.pid and state.shim_pid:
                # A create cut short (its executor killed) left a live shim still parking the init.
                state = self._await_created(container_id, directory)
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
