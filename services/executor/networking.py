"""The executor's network plumbing: bridges, a veth pair per container and its port rules, without gRPC."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common import procinfo
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.netnames import NETWORK_PATTERN, link_alias, veth_name
from services.executor import netlink, statefiles
from services.executor.firewall import Firewall
from services.executor.firewall_rules import Port
from services.executor.model import ProcessState, ProcessStatus
from services.executor.plan import check_container_id

IFNAME_MAX = 15
MIN_PREFIX_LENGTH = 8
MAX_PREFIX_LENGTH = 30
PROTOCOLS = ("tcp", "udp")
# Under the executor's network state dir: one JSON file per bridge it created.
BRIDGES_DIR = "bridges"


@dataclass(frozen=True)
class BridgeSpec:
    """A network's bridge: the interface, the subnet and the gateway address it holds."""

    network: str
    bridge: str
    subnet: str
    gateway: str = ""


@dataclass(frozen=True)
class BridgeRecord:
    """A bridge this executor created, and whether its interface exists now."""

    network: str
    bridge: str
    subnet: str
    present: bool
    # "" for a bridge recorded by an older version.
    gateway: str = ""


@dataclass(frozen=True)
class ConnectSpec:
    """Where a container joins: its bridge, its address and the ports it publishes."""

    container_id: str
    bridge: str
    address: str
    prefix_length: int
    gateway: str
    ports: tuple[Port, ...] = ()


def _check_ifname(name: str, what: str) -> None:
    if not name or len(name) > IFNAME_MAX or "/" in name or any(c.isspace() for c in name):
        raise InvalidArgument(f'invalid {what} "{name}": use 1-{IFNAME_MAX} characters without "/" or spaces')


def _check_address(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f'invalid {what} "{text}": use an IPv4 address such as 10.20.0.2') from None


def validate_bridge(spec: BridgeSpec, need_gateway: bool) -> ipaddress.IPv4Network:
    """Raise InvalidArgument for the first bad field; returns the parsed subnet."""
    if not NETWORK_PATTERN.fullmatch(spec.network):
        raise InvalidArgument(f'invalid network name "{spec.network}": use 1-64 letters, digits, "_", "." or "-"')
    _check_ifname(spec.bridge, "bridge name")
    try:
        subnet = ipaddress.IPv4Network(spec.subnet)
    except ValueError:
        raise InvalidArgument(f'invalid subnet "{spec.subnet}": use IPv4 CIDR form such as 10.20.0.0/24') from None
    if need_gateway and _check_address(spec.gateway, "gateway") not in subnet:
        raise InvalidArgument(f"gateway {spec.gateway} is outside subnet {subnet}")
    return subnet


def validate_connect(spec: ConnectSpec) -> None:
    """Raise InvalidArgument for the first bad field of a connect request."""
    check_container_id(spec.container_id)
    _check_ifname(spec.bridge, "bridge name")
    if not MIN_PREFIX_LENGTH <= spec.prefix_length <= MAX_PREFIX_LENGTH:
        raise InvalidArgument(
            f"invalid prefix length {spec.prefix_length}: use {MIN_PREFIX_LENGTH} to {MAX_PREFIX_LENGTH}"
        )
    address = _check_address(spec.address, "address")
    gateway = _check_address(spec.gateway, "gateway")
    network = ipaddress.IPv4Network(f"{address}/{spec.prefix_length}", strict=False)
    if gateway not in network or address == gateway:
        raise InvalidArgument(f"gateway {gateway} must be another address of {network}")
    seen: set[tuple[int, str]] = set()
    for port in spec.ports:
        if port.protocol not in PROTOCOLS:
            raise InvalidArgument(f'invalid port protocol "{port.protocol}": use tcp or udp')
        for value in (port.host_port, port.container_port):
            if not 1 <= value <= 65535:
                raise InvalidArgument(f"invalid port {value}: use a port from 1 to 65535")
        if port.host_ip:
            _check_address(port.host_ip, "host IP")
        if (port.host_port, port.protocol) in seen:
            raise InvalidArgument(f"host port {port.host_port}/{port.protocol} is published twice")
        seen.add((port.host_port, port.protocol))


def overlapping_route(subnet: ipaddress.IPv4Network, bridge: str, routes: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The first host route (destination, interface) that overlaps `subnet`, other than the bridge's own."""
    for destination, interface in routes:
        if interface != bridge and subnet.overlaps(ipaddress.IPv4Network(destination, strict=False)):
            return destination, interface
    return None


def ensure_port_is_free(port: Port) -> None:
    """Refuse a host port another program on this host listens on: DNAT would silently steal its traffic."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:
            # Connections in TIME_WAIT hold no port anyone listens on; a listener still makes bind fail.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((port.host_ip or "0.0.0.0", port.host_port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise AlreadyExists(
                    f"host port {port.host_port}/{port.protocol} is in use by another program on this host: "
                    "choose another host port"
                ) from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"host IP {port.host_ip} of port {port.host_port}/{port.protocol} is not an address of this host"
                ) from None
            raise


class Networking:
    """Bridges and container links; `process_of(id)` gives a container's live process."""

    def __init__(
        self,
        state_dir: Path,
        process_of: Callable[[str], ProcessState],
        container_dir: Callable[[str], Path],
        firewall: Firewall | None = None,
        instance: str = "",
    ):
        self._firewall = firewall or Firewall(state_dir, instance)
        # On every bridge and host-side veth: which instance's they are (Config.instance).
        self._alias = link_alias(instance)
        self._bridges_dir = Path(state_dir) / BRIDGES_DIR
        self._process_of = process_of
        self._container_dir = container_dir
        # One plumbing change at a time: netlink and iptables read-modify-write would race otherwise.
        self._lock = threading.Lock()

    def create_bridge(self, spec: BridgeSpec) -> None:
        subnet = validate_bridge(spec, need_gateway=True)
        with self._lock:
            clash = overlapping_route(subnet, spec.bridge, netlink.host_routes())
            if clash is not None:
                # The host would send part of its own traffic into the bridge (or the containers could not answer).
                raise FailedPrecondition(
                    f"subnet {subnet} overlaps the host's route to {clash[0]} via {clash[1] or 'no interface'}: "
                    "choose a subnet the host does not use"
                )
            existed = netlink.link_exists(spec.bridge)
            # Recorded first: a crash after the bridge leaves it listed, so `system check` can find it.
            self._bridges_dir.mkdir(parents=True, exist_ok=True)
            record = {"network": spec.network, "bridge": spec.bridge, "subnet": str(subnet), "gateway": spec.gateway}
            statefiles.write_atomic(str(self._bridge_record(spec.network)), json.dumps(record))
            try:
                netlink.ensure_bridge(spec.bridge, spec.gateway, subnet.prefixlen, self._alias)
                self._firewall.add_network(spec.network, spec.bridge, str(subnet))
            except BaseException:
                if not existed:
                    netlink.delete_bridge(spec.bridge)
                    self._bridge_record(spec.network).unlink(missing_ok=True)
                raise

    def remove_bridge(self, spec: BridgeSpec) -> None:
        subnet = validate_bridge(spec, need_gateway=False)
        with self._lock:
            attached = netlink.attached_links(spec.bridge)
            if attached:
                raise FailedPrecondition(
                    f"bridge {spec.bridge} still has containers plugged in ({', '.join(attached)}): remove them first"
                )
            self._firewall.remove_network(spec.network, spec.bridge, str(subnet))
            netlink.delete_bridge(spec.bridge)
            self._bridge_record(spec.network).unlink(missing_ok=True)

    def list_bridges(self) -> list[BridgeRecord]:
        """The bridges created here and not removed yet, by network name."""
        found = []
        for entry in sorted(self._bridges_dir.glob("*.json")):
            text = statefiles.read_text(str(entry))
            if not text:
                continue
            record = json.loads(text)
            found.append(
                BridgeRecord(
                    record["network"], record["bridge"], record["subnet"], netlink.link_exists(record["bridge"]),
                    record.get("gateway", ""),
                )
            )
        return found

    def _bridge_record(self, network: str) -> Path:
        return self._bridges_dir / f"{network}.json"

    def connect(self, spec: ConnectSpec) -> str:
        """Plug the container in and publish its ports; returns the host end's name. All or nothing."""
        validate_connect(spec)
        process = self._process_of(spec.container_id)
        if process.status not in (ProcessStatus.CREATED, ProcessStatus.RUNNING) or process.pid <= 0:
            raise FailedPrecondition(f"container {spec.container_id} has no process: its network namespace is gone")
        host_end = veth_name(spec.container_id)
        with self._lock:
            if not netlink.is_bridge(spec.bridge):
                raise NotFound(f"bridge {spec.bridge} does not exist: create the network again or run system check --repair")
            for port in spec.ports:
                ensure_port_is_free(port)
            marker = self._marker(spec.container_id)
            if marker.exists() or netlink.link_exists(host_end):
                raise AlreadyExists(f"container {spec.container_id} is connected already: disconnect it first")
            netns_fd = self._open_netns(spec.container_id, process)
            try:
                # Before any plumbing: a delete of the state dir, even after a crash right here, unplugs first.
                # The ports too, so a lost state record can be rebuilt with them (system check --rebuild-state).
                connection = {"bridge": spec.bridge, "address": spec.address, "ports": [asdict(p) for p in spec.ports]}
                statefiles.write_atomic(str(marker), json.dumps(connection))
                netlink.connect(netns_fd, host_end, spec.bridge, spec.address, spec.prefix_length, spec.gateway, self._alias)
            except BaseException:
                marker.unlink(missing_ok=True)
                raise
            finally:
                os.close(netns_fd)
            try:
                self._firewall.publish(spec.container_id, spec.bridge, spec.address, spec.ports)
            except BaseException:
                self._unplug(spec.container_id)
                raise
        return host_end

    def disconnect(self, container_id: str) -> None:
        """Remove the veth pair (if the container still has it) and every rule of the container.

        Nothing to do without the marker: it is written before any plumbing and removed after the last
        of it, so a container never plugged in, or already unplugged, costs no netlink or iptables call.
        """
        check_container_id(container_id)
        with self._lock:
            if self._marker(container_id).exists():
                self._unplug(container_id)

    def _unplug(self, container_id: str) -> None:
        netlink.disconnect(veth_name(container_id))
        self._firewall.unpublish(container_id)
        self._marker(container_id).unlink(missing_ok=True)

    def _marker(self, container_id: str) -> Path:
        return self._container_dir(container_id) / statefiles.NETWORK

    @staticmethod
    def _open_netns(container_id: str, process: ProcessState) -> int:
        try:
            fd = os.open(f"/proc/{process.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FailedPrecondition(f"container {container_id} exited: its network namespace is gone") from None
        # Checked after the open: the fd pins the namespace, so a recycled pid cannot slip in afterwards.
        if procinfo.proc_start_time(process.pid) != process.pid_start_time:
            os.close(fd)
            raise FailedPrecondition(f"container {container_id} exited: its network namespace is gone")
        return fd

