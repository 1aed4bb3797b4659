"""Multi-service sequences of the container verbs, each undoing what it did when a later step fails."""

from __future__ import annotations

import os
import signal as signals
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2

from cli.services import DEFAULT_TIMEOUT, CliError, Refused, Services
from protos.executor.v1 import executor_pb2 as ex
from protos.state.v1 import state_pb2 as st
from protos.storage.v1 import storage_pb2 as sto
from protos.types.v1 import types_pb2
from services.common import procinfo
from services.common.client import describe_rpc_error
from services.common.netnames import bridge_name

# Exit code recorded when the executor has no trace of a process the record calls running.
LOST_EXIT_CODE = 255
STOP_KILL_WAIT = 10.0


class Rollback:
    """Undo steps run in reverse order when the block raises; undo failures are named in the error."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, description: str, undo: Callable[[], object]) -> None:
        self._steps.append((description, undo))

    def __enter__(self) -> "Rollback":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            return
        failed = []
        for description, undo in reversed(self._steps):
            try:
                undo()
            except CliError as undo_error:
                failed.append(f"{description} failed: {undo_error}")
        if failed and isinstance(exc, CliError):
            raise CliError(f"{exc} (and while undoing: {'; '.join(failed)})") from exc


@dataclass
class RunRequest:
    """Everything `mydocker run` was asked for, already parsed."""

    image: str
    # None: the image's default (Cmd, after its Entrypoint).
    command: list[str] | None
    name: str = ""
    env: list[str] = field(default_factory=list)
    volumes: list[types_pb2.Volume] = field(default_factory=list)
    resources: types_pb2.Resources = field(default_factory=types_pb2.Resources)
    hostname: str = ""
    network: str = ""
    ports: list[types_pb2.PortMapping] = field(default_factory=list)
    working_dir: str = ""
    tty: bool = False
    stdin_open: bool = False
    detach: bool = False
    auto_remove: bool = False
    # (rows, cols) of the caller's terminal, for a -t container's first instant.
    window: tuple[int, int] | None = None
    security: types_pb2.SecurityOptions = field(default_factory=types_pb2.SecurityOptions)
    # --entrypoint: None keeps the image's, "" clears it.
    entrypoint: str | None = None
    # -P: publish the image's ExposedPorts on free host ports.
    publish_all: bool = False


def this_process() -> st.Owner:
    """This CLI as the owner of a record it is creating or removing: while it lives, repair leaves the record alone."""
    pid = os.getpid()
    return st.Owner(pid=pid, pid_start_time=procinfo.proc_start_time(pid) or 0)


def step(what: str, call: Callable[[], object]):
    """Run one step of a sequence; a failure names the step, so the user knows how far it got."""
    try:
        return call()
    except CliError as err:
        raise CliError(f"{what} failed: {err}") from None


def resolve(services: Services, reference: str) -> st.Container:
    return services.call("state", "GetContainer", st.GetContainerRequest(reference=reference)).container


def record_exit(
    services: Services, container: st.Container, process: ex.ContainerProcess, stopped: bool = False, then_removing: bool = False
) -> st.Container:
    """Move a RUNNING record to EXITED (or STOPPED) with what the executor saw; the record as it is if another CLI did first.

    With `then_removing`, the same write starts the removal (REMOVING, owned by this CLI), for
    remove_stopped to finish.

    The network is torn down first: the state service frees the address with the move, and it
    must not be handed out while rules still send a host port to it. No read before the move: the
    state service refuses it once the record is no longer running (an attached `run` and a `stop`
    both saw the same exit), and then the other party's record stands.
    """
    disconnect(services, container)
    status = st.CONTAINER_STATUS_STOPPED if stopped else st.CONTAINER_STATUS_EXITED
    request = st.UpdateContainerStatusRequest(
        id=container.id, status=status, exit_code=process.exit_code, oom_killed=process.oom_killed,
        then_removing=then_removing, owner=this_process() if then_removing else None,
    )
    try:
        return services.call("state", "UpdateContainerStatus", request).container
    except Refused:
        current = resolve(services, container.id)
        if current.status == st.CONTAINER_STATUS_RUNNING:
            raise
        return current


def sync(services: Services, containers: list[st.Container], auto_remove: bool = True) -> list[st.Container]:
    """Records that say RUNNING but whose process is gone become EXITED, so ps never lies.

    A container run with --rm that is found exited is removed here (nothing else watches detached
    containers) and left out of the result, unless `auto_remove` is False.
    """
    running = [c for c in containers if c.status == st.CONTAINER_STATUS_RUNNING]
    if not running:
        return containers
    live = live_processes(services, [c.id for c in running])
    fresh: dict[str, st.Container | None] = {}
    for container in running:
        process = live.get(container.id)
        if process is None:
            process = ex.ContainerProcess(id=container.id, exit_code=LOST_EXIT_CODE)
        elif process.status != ex.PROCESS_STATUS_EXITED:
            continue
        exited = record_exit(services, container, process, then_removing=auto_remove and container.auto_remove)
        if auto_remove and exited.auto_remove:
            remove_stopped(services, exited, unplugged=True)
            fresh[container.id] = None
        else:
            fresh[container.id] = exited
    result = [fresh.get(c.id, c) if c.id in fresh else c for c in containers]
    return [c for c in result if c is not None]


# Up to this many containers are asked for one by one: listing all costs time in proportion to how
# many the executor holds (1,000 on a busy host), which a command about one container must not pay.
FEW_CONTAINERS = 8


def live_processes(services: Services, ids: list[str]) -> dict[str, ex.ContainerProcess]:
    """The executor's process of each of `ids` that it still has, by id."""
    if len(ids) > FEW_CONTAINERS:
        return {p.id: p for p in services.call("executor", "ListContainers", ex.ListContainersRequest()).processes}
    found = {}
    for container_id in ids:
        reply = services.call("executor", "GetContainer", ex.GetContainerRequest(id=container_id), missing_ok=True)
        if reply is not None:
            found[container_id] = reply.process
    return found


def resolve_synced(services: Services, reference: str) -> st.Container:
    """The record, with its status brought up to date; an exited --rm container is gone by now."""
    container = resolve(services, reference)
    synced = sync(services, [container])
    if not synced:
        raise CliError(f"container {container.id} ({container.name}) exited and was removed (--rm)")
    return synced[0]


def create_and_start(services: Services, request: RunRequest, attach: Callable[[str], Callable[[], ex.ContainerProcess]] | None):
    """Record, rootfs, process, start: returns (container, wait) where wait() blocks for the exit (a ContainerProcess).

    `attach(id)` is called after the process exists but before it starts, so no output is lost;
    it returns the function that pumps the stream until the exit arrives.
    """
    from cli.image_run import apply_image_config

    # The image comes from storage first; the record's and the process's services connect meanwhile.
    services.connect_ahead("state", "executor")
    image_id, stop_signal, _ = apply_image_config(services, request)
    spec = st.CreateContainerRequest(
        image_id=image_id,
        stop_signal=stop_signal,
        name=request.name,
        image=request.image,
        command=request.command,
        env=request.env,
        volumes=request.volumes,
        resources=request.resources,
        hostname=request.hostname,
        network=request.network,
        ports=request.ports,
        working_dir=request.working_dir,
        tty=request.tty,
        stdin_open=request.stdin_open,
        auto_remove=request.auto_remove,
        owner=this_process(),
        security=request.security,
    )
    container = step("creating the record", lambda: services.call("state", "CreateContainer", spec).container)
    with Rollback() as undo:
        # Deleting the record also releases its address.
        undo.add("deleting the record", lambda: services.call("state", "DeleteContainer", st.DeleteContainerRequest(id=container.id)))
        address = None
        if container.network:
            allocate = st.AllocateAddressRequest(network=container.network, container_id=container.id)
            address = step("allocating an address", lambda: services.call("state", "AllocateAddress", allocate))
        prepare = sto.PrepareRootfsRequest(
            container_id=container.id, image=container.image, volumes=container.volumes, image_id=container.image_id
        )
        rootfs = step(
            "preparing the rootfs", lambda: services.call("storage", "PrepareRootfs", prepare, timeout=600).rootfs
        )
        undo.add("removing the rootfs", lambda: services.call("storage", "RemoveRootfs", sto.RemoveRootfsRequest(container_id=container.id)))
        create = ex.CreateContainerRequest(
            id=container.id,
            hostname=container.hostname,
            rootfs_path=rootfs.path,
            process=ex.ProcessSpec(
                args=container.command,
                env=container.env,
                cwd=container.working_dir,
                terminal=container.tty,
                stdin=container.stdin_open,
            ),
            resources=container.resources,
            stdio_mode=ex.STDIO_MODE_LOG if request.detach else ex.STDIO_MODE_ATTACH,
            window_size=ex.WindowSize(rows=request.window[0], cols=request.window[1]) if request.window else None,
            ip_address=address.allocation.address if address else "",
            security=container.security,
            # Kept by the executor, so `system check --repair --rebuild-state` can rebuild a lost record.
            record=packed(container),
        )
        created = step("creating the process", lambda: services.call("executor", "CreateContainer", create)).process
        undo.add("deleting the process", lambda: services.call("executor", "DeleteContainer", ex.DeleteContainerRequest(id=container.id, force=True)))
        if address is not None:
            # Before the start, so the command finds its network ready from its first instruction.
            step("connecting to the network", lambda: connect(services, container, address))
            undo.add("disconnecting from the network", lambda: disconnect(services, container))
        wait = attach(container.id) if attach is not None else None
        # The start and its record at once: the parked init already has the pid it will run as.
        # A failed start leaves the record RUNNING or CREATED; either may move to EXITED before its deletion.
        undo.add("recording the failed start", lambda: record_failed_start(services, container.id))
        running = st.UpdateContainerStatusRequest(
            id=container.id,
            status=st.CONTAINER_STATUS_RUNNING,
            pid=created.pid,
            pid_start_time=created.pid_start_time,
            shim_pid=created.shim_pid,
        )
        _, recorded = services.call_together(
            [
                ("starting the process", "executor", "StartContainer", ex.StartContainerRequest(id=container.id), DEFAULT_TIMEOUT),
                ("recording the start", "state", "UpdateContainerStatus", running, DEFAULT_TIMEOUT),
            ]
        )
        container = recorded.container
    return container, wait


def record_failed_start(services: Services, container_id: str) -> None:
    """A start that failed: its record EXITED (if the start was recorded meanwhile), so it can be deleted."""
    failed = st.UpdateContainerStatusRequest(id=container_id, status=st.CONTAINER_STATUS_EXITED, exit_code=LOST_EXIT_CODE)
    try:
        services.call("state", "UpdateContainerStatus", failed)
    except Refused:
        pass


def packed(container: st.Container) -> any_pb2.Any:
    record = any_pb2.Any()
    record.Pack(container)
    return record


def connect(services: Services, container: st.Container, address: st.AllocateAddressResponse) -> None:
    """Plug a created container into its network; a bridge lost with a reboot is made again first."""
    request = ex.ConnectContainerRequest(
        container_id=container.id,
        bridge_name=bridge_name(container.network, services.config.instance),
        address=address.allocation.address,
        prefix_length=address.prefix_length,
        gateway=address.gateway,
        ports=container.ports,
    )
    try:
        services.executor.ConnectContainer(request, timeout=DEFAULT_TIMEOUT)
        return
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND or "bridge" not in (err.details() or ""):
            raise CliError(describe_rpc_error("executor", services.config, err)) from None
    ensure_bridge(services, container.network)
    services.call("executor", "ConnectContainer", request)


def ensure_bridge(services: Services, network: str) -> None:
    """The executor side of a network record: its bridge and rules (idempotent)."""
    record = services.call("state", "GetNetwork", st.GetNetworkRequest(name=network)).network
    bridge = ex.CreateBridgeRequest(network=record.name, bridge_name=record.bridge, subnet=record.subnet, gateway=record.gateway)
    services.call("executor", "CreateBridge", bridge)


def disconnect(services: Services, container: st.Container) -> None:
    """Unplug a container from its network: veth and port rules (idempotent; fine once it exited)."""
    if container.network:
        services.call("executor", "DisconnectContainer", ex.DisconnectContainerRequest(container_id=container.id))


def stop(services: Services, reference: str, timeout: float) -> st.Container:
    """SIGTERM, wait up to `timeout`, then SIGKILL: a PID 1 that ignores TERM still stops.

    A container run with --rm is removed once stopped, as docker does.
    """
    container = resolve_synced(services, reference)
    if container.status != st.CONTAINER_STATUS_RUNNING:
        return container
    process = _terminate(services, container.id, timeout, stop_signal_number(container.stop_signal))
    container = record_exit(services, container, process, stopped=True, then_removing=container.auto_remove)
    if container.auto_remove:
        remove_stopped(services, container, unplugged=True)
    return container


def _kill(services: Services, container_id: str, signum: int) -> None:
    try:
        services.call("executor", "KillContainer", ex.KillContainerRequest(id=container_id, signal=signum))
    except CliError:
        # The process may have exited on its own meanwhile; the wait that follows tells.
        pass


def stop_signal_number(name: str) -> int:
    """The image's StopSignal as a number; SIGTERM when none (or one this host does not know)."""
    from services.common.errors import InvalidArgument
    from services.common.image_config import signal_number

    if not name:
        return signals.SIGTERM
    try:
        return signal_number(name)
    except InvalidArgument:
        return signals.SIGTERM


def _terminate(services: Services, container_id: str, timeout: float, first: int = signals.SIGTERM) -> ex.ContainerProcess:
    _kill(services, container_id, first)
    try:
        return _wait(services, container_id, timeout)
    except TimeoutError:
        _kill(services, container_id, signals.SIGKILL)
        return _wait(services, container_id, STOP_KILL_WAIT)


def _wait(services: Services, container_id: str, timeout: float) -> ex.ContainerProcess:
    stub = services.executor
    try:
        return stub.WaitContainer(ex.WaitContainerRequest(id=container_id), timeout=max(timeout, 0.1)).process
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError(container_id) from None
        raise CliError(describe_rpc_error("executor", services.config, err)) from None


def remove(services: Services, reference: str, force: bool) -> st.Container:
    """Kill (with force), then rootfs, process state and record; each step is idempotent, so a retry finishes a half-done rm."""
    container = sync(services, [resolve(services, reference)], auto_remove=False)[0]
    unplugged = False
    if container.status == st.CONTAINER_STATUS_RUNNING:
        if not force:
            raise CliError(
                f"container {container.id} ({container.name}) is running: stop it first or use rm -f"
            )
        _kill(services, container.id, signals.SIGKILL)
        process = _wait(services, container.id, STOP_KILL_WAIT)
        container = record_exit(services, container, process, stopped=True, then_removing=True)
        unplugged = True
    remove_stopped(services, container, unplugged=unplugged)
    return container


def remove_stopped(services: Services, container: st.Container, unplugged: bool = False) -> None:
    """The removal steps for a container whose process is gone: REMOVING, rootfs, process state, record.

    `unplugged` says the caller's record_exit has just torn the network down.
    """
    if not unplugged:
        # A repair may have recorded the exit without unplugging the network.
        step("disconnecting from the network", lambda: disconnect(services, container))
    if container.status != st.CONTAINER_STATUS_REMOVING:
        removing = st.UpdateContainerStatusRequest(id=container.id, status=st.CONTAINER_STATUS_REMOVING, owner=this_process())
        services.call("state", "UpdateContainerStatus", removing)
    # The process is gone, so neither needs the other: both at once (each is idempotent, and a REMOVING
    # record whose remover died is finished by the next rm or repair).
    services.call_together(
        [
            ("removing the rootfs", "storage", "RemoveRootfs", sto.RemoveRootfsRequest(container_id=container.id), 120),
            (
                "deleting the process state", "executor", "DeleteContainer",
                ex.DeleteContainerRequest(id=container.id, force=True), DEFAULT_TIMEOUT,
            ),
        ]
    )
    # Already gone is fine: a concurrent `system check --repair` may have finished this removal.
    services.call("state", "DeleteContainer", st.DeleteContainerRequest(id=container.id), missing_ok=True)
