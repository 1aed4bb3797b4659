"""Conversions between executor protos and the executor's dataclasses (containerd's helpers.go)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from protos.executor.v1 import executor_pb2 as pb
from protos.types.v1 import types_pb2
from services.common.errors import InvalidArgument
from services.common.security_convert import security_from_proto
from services.executor.cgroups import Limits
from services.executor.firewall_rules import Port
from services.executor.networking import BridgeSpec, ConnectSpec
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
    Signal,
    Started,
    Stdin,
    StdioMode,
)
from services.executor.profile import SecurityProfile
from services.executor.records import SavedContainer

STATUS_TO_PROTO = {
    ProcessStatus.CREATED: pb.PROCESS_STATUS_CREATED,
    ProcessStatus.RUNNING: pb.PROCESS_STATUS_RUNNING,
    ProcessStatus.EXITED: pb.PROCESS_STATUS_EXITED,
}
STDIO_FROM_PROTO = {
    pb.STDIO_MODE_UNSPECIFIED: StdioMode.LOG,
    pb.STDIO_MODE_LOG: StdioMode.LOG,
    pb.STDIO_MODE_ATTACH: StdioMode.ATTACH,
}
STREAM_TO_PROTO = {"stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR}


def process_from_proto(process: pb.ProcessSpec, user: str = "", privileged: bool = False) -> ProcessSpec:
    return ProcessSpec(
        args=tuple(process.args),
        env=tuple(process.env),
        cwd=process.cwd,
        terminal=process.terminal,
        stdin=process.stdin,
        user=user,
        privileged=privileged,
    )


def create_from_proto(request: pb.CreateContainerRequest) -> CreateSpec:
    try:
        stdio = STDIO_FROM_PROTO[request.stdio_mode]
    except KeyError:
        raise InvalidArgument(f"unknown stdio mode {request.stdio_mode}") from None
    resources = request.resources
    return CreateSpec(
        id=request.id,
        hostname=request.hostname,
        rootfs_path=request.rootfs_path,
        process=process_from_proto(request.process),
        limits=Limits(
            memory_bytes=resources.memory_bytes,
            nano_cpus=resources.nano_cpus,
            cpuset_cpus=resources.cpuset_cpus,
            pids_limit=resources.pids_limit,
        ),
        stdio_mode=stdio,
        network_namespace=request.network_namespace,
        window=(request.window_size.rows, request.window_size.cols) if request.HasField("window_size") else None,
        ip_address=request.ip_address,
        security=security_from_proto(request.security),
        saved_request=saved_request(request),
    )


def saved_request(request: pb.CreateContainerRequest) -> bytes:
    """What the state dir keeps of a create: the request without its window size, which is of the moment."""
    kept = pb.CreateContainerRequest()
    kept.CopyFrom(request)
    kept.ClearField("window_size")
    return kept.SerializeToString(deterministic=True)


def timestamp(time_ns: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time_ns)
    return stamp


def state_to_proto(state: ProcessState) -> pb.ContainerProcess:
    process = pb.ContainerProcess(
        id=state.id,
        status=STATUS_TO_PROTO[state.status],
        pid=state.pid,
        pid_start_time=state.pid_start_time,
        shim_pid=state.shim_pid,
        exit_code=state.exit_code,
        oom_killed=state.oom_killed,
        cgroup_path=state.cgroup_path,
        log_path=state.log_path,
    )
    if state.exited_at_ns is not None:
        process.exited_at.CopyFrom(timestamp(state.exited_at_ns))
    if state.security is not None:
        process.security.CopyFrom(profile_to_proto(state.security))
    return process


def profile_to_proto(profile: SecurityProfile) -> pb.SecurityProfile:
    return pb.SecurityProfile(
        privileged=profile.privileged,
        capabilities=[f"CAP_{name}" for name in profile.capabilities],
        seccomp=profile.seccomp,
        no_new_privileges=profile.no_new_privileges,
        masked_paths=profile.masked_paths,
        readonly_paths=profile.readonly_paths,
        read_only_rootfs=profile.read_only_rootfs,
        user=profile.user,
        group_add=profile.group_add,
        device_rules=profile.device_rules,
        ulimits=[types_pb2.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in profile.ulimits],
        oom_score_adj=profile.oom_score_adj,
    )


def log_entry_to_proto(entry: LogEntry) -> pb.LogsResponse:
    stream = STREAM_TO_PROTO.get(entry.stream, pb.LOG_STREAM_STDOUT)
    return pb.LogsResponse(stream=stream, data=entry.data, time=timestamp(entry.time_ns))


def input_event(message) -> InputEvent | None:
    """An ExecRequest's or AttachRequest's event after the first; None for a repeated first message."""
    kind = message.WhichOneof("event")
    if kind == "stdin":
        return Stdin(message.stdin)
    if kind == "close_stdin":
        return CloseStdin()
    if kind == "resize":
        return Resize(message.resize.rows, message.resize.cols)
    if kind == "signal":
        return Signal(message.signal)
    return None


def exec_response(event: OutputEvent) -> pb.ExecResponse:
    if isinstance(event, Started):
        return pb.ExecResponse(pid=event.pid)
    if isinstance(event, Exited):
        return pb.ExecResponse(exit_code=event.exit_code)
    assert isinstance(event, Output)
    if event.stream == "stderr":
        return pb.ExecResponse(stderr=event.data)
    return pb.ExecResponse(stdout=event.data)


def attach_response(event: OutputEvent) -> pb.AttachResponse | None:
    if isinstance(event, Exited):
        return pb.AttachResponse(exit_code=event.exit_code, oom_killed=event.oom_killed)
    if isinstance(event, Output):
        if event.stream == "stderr":
            return pb.AttachResponse(stderr=event.data)
        return pb.AttachResponse(stdout=event.data)
    return None


def request_from_plan(plan: dict) -> pb.CreateContainerRequest:
    """What a plan of an older version (no saved request) still tells of its create request."""
    limits = plan.get("limits") or {}
    security = plan.get("security") or {}
    return pb.CreateContainerRequest(
        id=plan["id"],
        hostname=plan.get("hostname", ""),
        rootfs_path=plan.get("rootfs", ""),
        process=pb.ProcessSpec(
            args=plan.get("args", ()),
            env=plan.get("env", ()),
            cwd=plan.get("cwd", "/"),
            terminal=bool(plan.get("terminal")),
            stdin=bool(plan.get("stdin")),
        ),
        resources=types_pb2.Resources(
            memory_bytes=limits.get("memory_bytes", 0),
            nano_cpus=limits.get("nano_cpus", 0),
            cpuset_cpus=limits.get("cpuset_cpus", ""),
            pids_limit=limits.get("pids_limit", 0),
        ),
        stdio_mode=pb.STDIO_MODE_ATTACH if plan.get("stdio_mode") == "attach" else pb.STDIO_MODE_LOG,
        security=types_pb2.SecurityOptions(user=security.get("user", "")),
    )


def saved_to_proto(saved: SavedContainer) -> pb.ContainerRecord:
    record = pb.ContainerRecord(
        id=saved.state.id,
        process=state_to_proto(saved.state),
        created_at=timestamp(saved.created_at_ns),
    )
    if saved.request is not None:
        record.request.ParseFromString(saved.request)
    else:
        record.request.CopyFrom(request_from_plan(saved.plan))
        record.request_from_plan = True
    if saved.connection:
        record.bridge_name = saved.connection.get("bridge", "")
        record.address = saved.connection.get("address", "")
        for port in saved.connection.get("ports", ()):
            protocol = types_pb2.PROTOCOL_UDP if port.get("protocol") == "udp" else types_pb2.PROTOCOL_TCP
            record.ports.add(
                host_ip=port.get("host_ip", ""), host_port=port["host_port"],
                container_port=port["container_port"], protocol=protocol,
            )
    return record


def _port_from_proto(port: types_pb2.PortMapping) -> Port:
    protocol = {types_pb2.PROTOCOL_TCP: "tcp", types_pb2.PROTOCOL_UDP: "udp", types_pb2.PROTOCOL_UNSPECIFIED: "tcp"}.get(port.protocol, "")
    return Port(host_ip=port.host_ip, host_port=port.host_port, container_port=port.container_port, protocol=protocol)


def bridge_from_proto(request) -> BridgeSpec:
    """CreateBridgeRequest or RemoveBridgeRequest (which has no gateway)."""
    return BridgeSpec(
        network=request.network,
        bridge=request.bridge_name,
        subnet=request.subnet,
        gateway=getattr(request, "gateway", ""),
    )


def connect_from_proto(request: pb.ConnectContainerRequest) -> ConnectSpec:
    return ConnectSpec(
        container_id=request.container_id,
        bridge=request.bridge_name,
        address=request.address,
        prefix_length=request.prefix_length,
        gateway=request.gateway,
        ports=tuple(_port_from_proto(port) for port in request.ports),
    )


def since_nanoseconds(request: pb.LogsRequest) -> int:
    """LogsRequest.since in nanoseconds, 0 when unset; a Timestamp out of its year 1-9999 range is refused."""
    if not request.HasField("since"):
        return 0
    try:
        return request.since.ToNanoseconds()
    except ValueError as err:
        raise InvalidArgument(f"invalid `since` time: {err}") from None
