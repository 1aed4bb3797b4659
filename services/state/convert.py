"""Conversions between state protos and the state service's dataclasses (containerd's helpers.go)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from protos.state.v1 import state_pb2
from protos.types.v1 import types_pb2
from services.common.errors import InvalidArgument
from services.common.security_convert import security_from_proto, security_to_proto
from services.state.model import (
    AddressAllocation,
    Container,
    ContainerSpec,
    ContainerStatus,
    Network,
    Owner,
    PortMapping,
    Resources,
    Volume,
)

STATUS_TO_PROTO = {
    ContainerStatus.CREATED: state_pb2.CONTAINER_STATUS_CREATED,
    ContainerStatus.RUNNING: state_pb2.CONTAINER_STATUS_RUNNING,
    ContainerStatus.STOPPED: state_pb2.CONTAINER_STATUS_STOPPED,
    ContainerStatus.EXITED: state_pb2.CONTAINER_STATUS_EXITED,
    ContainerStatus.REMOVING: state_pb2.CONTAINER_STATUS_REMOVING,
}
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}
PROTOCOL_TO_PROTO = {"tcp": types_pb2.PROTOCOL_TCP, "udp": types_pb2.PROTOCOL_UDP}
PROTOCOL_FROM_PROTO = {
    types_pb2.PROTOCOL_UNSPECIFIED: "tcp",
    types_pb2.PROTOCOL_TCP: "tcp",
    types_pb2.PROTOCOL_UDP: "udp",
}


def status_from_proto(value: int) -> ContainerStatus:
    try:
        return STATUS_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(
            f"invalid container status {value}: use created, running, stopped, exited or removing"
        ) from None


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def volume_to_proto(volume: Volume) -> types_pb2.Volume:
    return types_pb2.Volume(host_path=volume.host_path, container_path=volume.container_path, read_only=volume.read_only)


def volume_from_proto(message: types_pb2.Volume) -> Volume:
    return Volume(host_path=message.host_path, container_path=message.container_path, read_only=message.read_only)


def resources_to_proto(resources: Resources) -> types_pb2.Resources:
    return types_pb2.Resources(
        memory_bytes=resources.memory_bytes,
        nano_cpus=resources.nano_cpus,
        cpuset_cpus=resources.cpuset_cpus,
        pids_limit=resources.pids_limit,
    )


def resources_from_proto(message: types_pb2.Resources) -> Resources:
    return Resources(
        memory_bytes=message.memory_bytes,
        nano_cpus=message.nano_cpus,
        cpuset_cpus=message.cpuset_cpus,
        pids_limit=message.pids_limit,
    )


def port_to_proto(port: PortMapping) -> types_pb2.PortMapping:
    return types_pb2.PortMapping(
        host_ip=port.host_ip,
        host_port=port.host_port,
        container_port=port.container_port,
        protocol=PROTOCOL_TO_PROTO[port.protocol],
    )


def port_from_proto(message: types_pb2.PortMapping) -> PortMapping:
    if message.protocol not in PROTOCOL_FROM_PROTO:
        raise InvalidArgument(f"invalid port protocol {message.protocol}: use tcp or udp")
    return PortMapping(
        host_ip=message.host_ip,
        host_port=message.host_port,
        container_port=message.container_port,
        protocol=PROTOCOL_FROM_PROTO[message.protocol],
    )


def owner_from_proto(message: state_pb2.Owner) -> Owner:
    return Owner(pid=message.pid, pid_start_time=message.pid_start_time)


def owner_of(request: state_pb2.CreateContainerRequest | state_pb2.UpdateContainerStatusRequest) -> Owner | None:
    """The request's owner; None when the field is unset (an owner of zeros is given, and refused later)."""
    return owner_from_proto(request.owner) if request.HasField("owner") else None


def owner_to_proto(owner: Owner | None) -> state_pb2.Owner | None:
    if owner is None:
        return None
    return state_pb2.Owner(pid=owner.pid, pid_start_time=owner.pid_start_time)


def spec_from_proto(request: state_pb2.CreateContainerRequest) -> ContainerSpec:
    return ContainerSpec(
        image=request.image,
        command=tuple(request.command),
        name=request.name,
        env=tuple(request.env),
        volumes=tuple(volume_from_proto(volume) for volume in request.volumes),
        resources=resources_from_proto(request.resources),
        network=request.network,
        ports=tuple(port_from_proto(port) for port in request.ports),
        labels=dict(request.labels),
        hostname=request.hostname,
        working_dir=request.working_dir,
        tty=request.tty,
        stdin_open=request.stdin_open,
        auto_remove=request.auto_remove,
        security=security_from_proto(request.security),
        image_id=request.image_id,
        stop_signal=request.stop_signal,
    )


def container_to_proto(container: Container) -> state_pb2.Container:
    return state_pb2.Container(
        id=container.id,
        name=container.name,
        image=container.image,
        command=container.command,
        env=container.env,
        volumes=[volume_to_proto(volume) for volume in container.volumes],
        resources=resources_to_proto(container.resources),
        network=container.network,
        ports=[port_to_proto(port) for port in container.ports],
        ip=container.ip,
        labels=container.labels,
        hostname=container.hostname,
        working_dir=container.working_dir,
        tty=container.tty,
        stdin_open=container.stdin_open,
        auto_remove=container.auto_remove,
        status=STATUS_TO_PROTO[container.status],
        created_at=timestamp(container.created_at),
        started_at=timestamp(container.started_at),
        finished_at=timestamp(container.finished_at),
        pid=container.pid,
        pid_start_time=container.pid_start_time,
        shim_pid=container.shim_pid,
        exit_code=container.exit_code,
        oom_killed=container.oom_killed,
        error=container.error,
        owner=owner_to_proto(container.owner),
        security=security_to_proto(container.security),
        image_id=container.image_id,
        stop_signal=container.stop_signal,
    )


# google.protobuf.Timestamp's own range, 0001-01-01 to 9999-12-31: a record outside it could never be
# sent back (every later ListContainers would fail), so it is refused on the way in. The last second is
# left out: records keep float seconds, which round 9999-12-31 23:59:59.999999999 up past the end.
TIMESTAMP_SECONDS = range(-62135596800, 253402300799)


def seconds(stamp: Timestamp) -> float:
    if stamp.seconds not in TIMESTAMP_SECONDS or not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(
            f"invalid timestamp ({stamp.seconds} s, {stamp.nanos} ns): use a time from year 1 to 9999"
        )
    return stamp.ToNanoseconds() / 1e9


def container_from_proto(message: state_pb2.Container) -> Container:
    """A whole record from its proto (RestoreContainer); unset times stay None, an unset owner None."""
    return Container(
        id=message.id,
        name=message.name,
        image=message.image,
        command=tuple(message.command),
        env=tuple(message.env),
        volumes=tuple(volume_from_proto(volume) for volume in message.volumes),
        resources=resources_from_proto(message.resources),
        network=message.network,
        ports=tuple(port_from_proto(port) for port in message.ports),
        ip=message.ip,
        labels=dict(message.labels),
        hostname=message.hostname,
        working_dir=message.working_dir,
        tty=message.tty,
        stdin_open=message.stdin_open,
        auto_remove=message.auto_remove,
        status=status_from_proto(message.status),
        created_at=seconds(message.created_at),
        started_at=seconds(message.started_at) if message.HasField("started_at") else None,
        finished_at=seconds(message.finished_at) if message.HasField("finished_at") else None,
        pid=message.pid,
        pid_start_time=message.pid_start_time,
        shim_pid=message.shim_pid,
        exit_code=message.exit_code,
        oom_killed=message.oom_killed,
        error=message.error,
        owner=owner_from_proto(message.owner) if message.HasField("owner") else None,
        security=security_from_proto(message.security),
        image_id=message.image_id,
        stop_signal=message.stop_signal,
    )


def network_to_proto(network: Network, instance: str) -> state_pb2.Network:
    return state_pb2.Network(
        name=network.name,
        driver=network.driver,
        subnet=network.subnet,
        gateway=network.gateway,
        labels=network.labels,
        created_at=timestamp(network.created_at),
        bridge=network.bridge(instance),
    )


def allocation_to_proto(allocation: AddressAllocation) -> state_pb2.AddressAllocation:
    return state_pb2.AddressAllocation(network=allocation.network, address=allocation.address, owner=allocation.owner)
