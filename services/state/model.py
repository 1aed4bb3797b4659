"""Records of the state service, its container state machine and the validation of create requests."""

from __future__ import annotations

import enum
import ipaddress
import posixpath
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from services.common.errors import InvalidArgument, InvalidTransition
from services.common.limits import check_exec_size
from services.common.netnames import bridge_name
from services.common.security import SecurityOptions, check_options
from services.common.types import Volume


class ContainerStatus(str, enum.Enum):
    """Lifecycle status of a container record; the value is what the database stores."""

    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    EXITED = "exited"
    REMOVING = "removing"

    def __str__(self) -> str:
        return self.value


ALLOWED_TRANSITIONS: Mapping[ContainerStatus, frozenset[ContainerStatus]] = {
    ContainerStatus.CREATED: frozenset(
        {ContainerStatus.RUNNING, ContainerStatus.EXITED, ContainerStatus.REMOVING}
    ),
    ContainerStatus.RUNNING: frozenset({ContainerStatus.STOPPED, ContainerStatus.EXITED}),
    ContainerStatus.STOPPED: frozenset({ContainerStatus.RUNNING, ContainerStatus.REMOVING}),
    ContainerStatus.EXITED: frozenset({ContainerStatus.RUNNING, ContainerStatus.REMOVING}),
    ContainerStatus.REMOVING: frozenset(),
}


def check_transition(
    current: ContainerStatus, target: ContainerStatus, what: str = "container"
) -> None:
    """Raise InvalidTransition unless the state machine allows moving from current to target."""
    if target not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(what, current.value, target.value)


@dataclass(frozen=True)
class Resources:
    """Cgroup limits; zero (or "" for cpuset_cpus) means no limit."""

    memory_bytes: int = 0
    nano_cpus: int = 0
    cpuset_cpus: str = ""
    pids_limit: int = 0


@dataclass(frozen=True)
class PortMapping:
    """A container port published on the host; protocol is "tcp" or "udp"."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


def ports_clash(a: PortMapping, b: PortMapping) -> bool:
    """Same host port and protocol on the same host address, or on every address (empty) for either."""
    return (
        a.host_port == b.host_port
        and a.protocol == b.protocol
        and (not a.host_ip or not b.host_ip or a.host_ip == b.host_ip)
    )


@dataclass(frozen=True)
class ContainerSpec:
    """Everything immutable about a container, as given to CreateContainer; empty means default."""

    image: str
    command: Sequence[str]
    name: str = ""
    env: Sequence[str] = ()
    volumes: Sequence[Volume] = ()
    resources: Resources = Resources()
    network: str = ""
    ports: Sequence[PortMapping] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    working_dir: str = ""
    tty: bool = False
    stdin_open: bool = False
    auto_remove: bool = False
    security: SecurityOptions = SecurityOptions()
    image_id: str = ""
    stop_signal: str = ""


@dataclass(frozen=True)
class Owner:
    """The process doing a multi-step operation on a record (creating or removing it).

    pid_start_time is in clock ticks since boot, so that a recycled pid is never taken for the owner.
    """

    pid: int
    pid_start_time: int


def validate_owner(owner: Owner | None) -> None:
    """Raise InvalidArgument unless the owner is absent or names a process exactly (both fields positive)."""
    if owner is None:
        return
    if owner.pid <= 0 or owner.pid_start_time <= 0:
        raise InvalidArgument(
            f"invalid owner: pid {owner.pid} and pid start time {owner.pid_start_time} must both be positive "
            "(leave the owner unset for none)"
        )


@dataclass(frozen=True)
class Container:
    """One container record. Only status, times, process fields, owner and ip ever change."""

    id: str
    name: str
    image: str
    command: tuple[str, ...]
    env: tuple[str, ...]
    volumes: tuple[Volume, ...]
    resources: Resources
    network: str
    ports: tuple[PortMapping, ...]
    labels: dict[str, str]
    hostname: str
    working_dir: str
    tty: bool
    stdin_open: bool
    auto_remove: bool
    status: ContainerStatus
    created_at: float
    # Unix timestamps; None until the first start or the first exit.
    started_at: float | None = None
    finished_at: float | None = None
    # Process fields are 0 unless RUNNING; pid_start_time guards against pid reuse.
    pid: int = 0
    pid_start_time: int = 0
    shim_pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    error: str = ""
    ip: str = ""
    # Set only while CREATED (the creator) or REMOVING (the remover): work in progress while it lives.
    owner: Owner | None = None
    security: SecurityOptions = SecurityOptions()
    # The image id `image` named at creation ("" for older records) and the image's StopSignal.
    image_id: str = ""
    stop_signal: str = ""


@dataclass(frozen=True)
class Network:
    """One bridge network record; subnet is normalized CIDR, gateway a dotted quad inside it."""

    name: str
    driver: str
    subnet: str
    gateway: str
    labels: dict[str, str]
    created_at: float

    def bridge(self, instance: str) -> str:
        """The host bridge interface in mydocker instance `instance`; derived, so it needs no column of its own."""
        return bridge_name(self.name, instance)


@dataclass(frozen=True)
class AddressAllocation:
    """One IPv4 address held in a network by a container id, or by GATEWAY_OWNER."""

    network: str
    address: str
    owner: str


GATEWAY_OWNER = "gateway"


@dataclass(frozen=True)
class AddressAssignment:
    """What AllocateAddress returns: the allocation plus what is needed to configure the interface."""

    allocation: AddressAllocation
    prefix_length: int
    gateway: str


@dataclass(frozen=True)
class ServiceInfo:
    """What GetInfo reports about the running state service."""

    version: str
    database_path: str
    schema_version: int
    containers: int
    networks: int
    pid: int
    # Where a damaged database was moved at start (--set-aside-damaged-db); "" when none was.
    damaged_database: str = ""


CONTAINER_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
NETWORK_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
# An image reference as the user gave it (name[:tag], name@sha256:..., an id or id prefix); storage
# resolves it, this only keeps out what no reference can hold.
IMAGE_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.:/@+-]{0,319}")
IMAGE_ID_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
SIGNAL_NAME_PATTERN = re.compile(r"[A-Z0-9+-]{1,16}")
# Same alphabet as container names so that the default hostname (the name) is always valid.
HOSTNAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
HOSTNAME_MAX_LENGTH = 63
CPUSET_PATTERN = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
PORT_PROTOCOLS = ("tcp", "udp")


def validate_container_name(name: str) -> None:
    if not CONTAINER_NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f'invalid container name "{name}": use 1-128 characters [a-zA-Z0-9_.-], starting with a letter or digit'
        )


def validate_network_name(name: str) -> None:
    if not NETWORK_NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f'invalid network name "{name}": use 1-64 characters [a-zA-Z0-9_.-], starting with a letter or digit'
        )


def validate_image_name(image: str) -> None:
    if not IMAGE_NAME_PATTERN.fullmatch(image) or ".." in image or "//" in image:
        raise InvalidArgument(
            f'invalid image reference "{image}": use 1-320 characters [a-zA-Z0-9_.:/@+-], '
            'starting with a letter or digit, without ".." or "//"'
        )


def validate_image_id(image_id: str) -> None:
    if not IMAGE_ID_PATTERN.fullmatch(image_id):
        raise InvalidArgument(f'invalid image id "{image_id}": expected sha256:<64 hex digits>')


def validate_stop_signal(name: str) -> None:
    if not SIGNAL_NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f'invalid stop signal "{name}": use a signal name like SIGTERM or a number')


def validate_command(command: Sequence[str]) -> None:
    if not command or not command[0]:
        raise InvalidArgument("the command is empty: give at least the program to run")
    for argument in command:
        if "\0" in argument:
            raise InvalidArgument(f"command argument {argument!r} contains a NUL byte: remove it")


def validate_env(env: Sequence[str]) -> None:
    for entry in env:
        key, separator, _ = entry.partition("=")
        if not separator or not key:
            raise InvalidArgument(f'invalid environment entry "{entry}": use KEY=VALUE with a non-empty KEY')
        if "\0" in entry:
            raise InvalidArgument(f"environment entry {entry!r} contains a NUL byte: remove it")


def validate_volumes(volumes: Sequence[Volume]) -> None:
    seen_container_paths: set[str] = set()
    for volume in volumes:
        for path in (volume.host_path, volume.container_path):
            if not path.startswith("/") or "\0" in path:
                raise InvalidArgument(
                    f"invalid volume path {path!r}: both paths must be absolute and free of NUL bytes"
                )
        container_path = posixpath.normpath(volume.container_path)
        if container_path == "/":
            raise InvalidArgument(
                f'invalid volume "{volume.host_path}:{volume.container_path}": a volume cannot be mounted on "/"'
            )
        if container_path in seen_container_paths:
            raise InvalidArgument(
                f'container path "{container_path}" is used by two volumes: give each volume its own path'
            )
        seen_container_paths.add(container_path)


def validate_resources(resources: Resources) -> None:
    for limit_name in ("memory_bytes", "nano_cpus", "pids_limit"):
        value = getattr(resources, limit_name)
        if value < 0:
            raise InvalidArgument(f"invalid {limit_name} {value}: use 0 for no limit or a positive value")
    if resources.cpuset_cpus and not CPUSET_PATTERN.fullmatch(resources.cpuset_cpus):
        raise InvalidArgument(
            f'invalid cpuset_cpus "{resources.cpuset_cpus}": use a CPU list such as "0-1" or "0,2"'
        )


def validate_ports(ports: Sequence[PortMapping]) -> None:
    seen_host_ports: set[tuple[str, int]] = set()
    for port in ports:
        for port_name in ("host_port", "container_port"):
            value = getattr(port, port_name)
            if not 1 <= value <= 65535:
                raise InvalidArgument(f"invalid {port_name} {value}: use a port from 1 to 65535")
        if port.protocol not in PORT_PROTOCOLS:
            raise InvalidArgument(f'invalid port protocol "{port.protocol}": use "tcp" or "udp"')
        if port.host_ip:
            try:
                ipaddress.IPv4Address(port.host_ip)
            except ValueError:
                raise InvalidArgument(
                    f'invalid host IP "{port.host_ip}": use an IPv4 address, or nothing for every address'
                ) from None
        key = (port.protocol, port.host_port)
        if key in seen_host_ports:
            raise InvalidArgument(
                f"host port {port.host_port}/{port.protocol} is published twice: publish each host port once"
            )
        seen_host_ports.add(key)


def validate_hostname(hostname: str) -> None:
    if not HOSTNAME_PATTERN.fullmatch(hostname):
        raise InvalidArgument(
            f'invalid hostname "{hostname}": use 1-63 characters [a-zA-Z0-9_.-], starting with a letter or digit'
        )


def validate_working_dir(working_dir: str) -> None:
    if not working_dir.startswith("/") or "\0" in working_dir:
        raise InvalidArgument(f"invalid working directory {working_dir!r}: use an absolute path")


# (field, check, empty value means "use the default"), run in order like runc's validator checks.
_SPEC_CHECKS: tuple[tuple[str, Callable[[object], None], bool], ...] = (
    ("name", validate_container_name, True),
    ("image", validate_image_name, False),
    ("image_id", validate_image_id, True),
    ("stop_signal", validate_stop_signal, True),
    ("command", validate_command, False),
    ("env", validate_env, False),
    ("volumes", validate_volumes, False),
    ("resources", validate_resources, False),
    ("network", validate_network_name, True),
    ("ports", validate_ports, False),
    ("hostname", validate_hostname, True),
    ("working_dir", validate_working_dir, True),
)


def validate_mount_points(spec: ContainerSpec) -> None:
    """A tmpfs and a volume (or --device node) never share a container path: one would hide the other."""
    volume_paths = {posixpath.normpath(volume.container_path) for volume in spec.volumes}
    for mount in spec.security.tmpfs:
        if posixpath.normpath(mount.path) in volume_paths:
            raise InvalidArgument(f'"{mount.path}" is both a volume and a --tmpfs: give each its own path')


def validate_spec(spec: ContainerSpec) -> None:
    """Raise InvalidArgument for the first bad field of a create request."""
    for field_name, check, empty_means_default in _SPEC_CHECKS:
        value = getattr(spec, field_name)
        if empty_means_default and not value:
            continue
        check(value)
    # Before any record: a command execve could not take would only fail in the shim, after everything was made.
    check_exec_size(spec.command, spec.env)
    check_options(spec.security)
    validate_mount_points(spec)
