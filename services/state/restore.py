"""RestoreContainer: store a whole record as given, its address reserved again, for rebuilding a lost database."""

from __future__ import annotations

import re

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.state import ipam
from services.state.model import Container, ContainerSpec, ContainerStatus, validate_spec
from services.state.store import Store

CONTAINER_ID_PATTERN = re.compile(r"[1-9][0-9]{9}")
# SQLite's INTEGER is signed 64-bit; a larger uint64 from the wire would fail inside the insert instead.
SQLITE_INTEGER_LIMIT = 1 << 63


def spec_of(container: Container) -> ContainerSpec:
    """The create request a record answers, so a restored record passes the checks a created one did."""
    return ContainerSpec(
        image=container.image,
        command=container.command,
        name=container.name,
        env=container.env,
        volumes=container.volumes,
        resources=container.resources,
        network=container.network,
        ports=container.ports,
        labels=container.labels,
        hostname=container.hostname,
        working_dir=container.working_dir,
        tty=container.tty,
        stdin_open=container.stdin_open,
        auto_remove=container.auto_remove,
        security=container.security,
        image_id=container.image_id,
        stop_signal=container.stop_signal,
    )


def validate_restored(container: Container) -> None:
    """What a stored record always satisfies: a ten-digit id, a valid spec, and pids when it runs."""
    if not CONTAINER_ID_PATTERN.fullmatch(container.id):
        raise InvalidArgument(f'invalid container id "{container.id}": expected ten digits, the first not 0')
    if not container.name:
        raise InvalidArgument(f"container {container.id} has no name: give its name, or its id as the name")
    validate_spec(spec_of(container))
    if container.status is ContainerStatus.RUNNING and (container.pid <= 0 or container.pid_start_time <= 0):
        raise InvalidArgument(
            f"container {container.id} is restored as running without its pid and pid start time: give both"
        )
    for name in ("pid", "pid_start_time", "shim_pid"):
        value = getattr(container, name)
        if not 0 <= value < SQLITE_INTEGER_LIMIT:
            raise InvalidArgument(f"invalid {name} {value} of container {container.id}: use 0 or a positive value")
    if container.ip and not container.network:
        raise InvalidArgument(f"container {container.id} has address {container.ip} but no network: give the network")


def restore_container(store: Store, container: Container) -> Container:
    """Insert the record and, when it holds an address, reserve exactly that address; all in one transaction."""
    validate_restored(container)
    with store.write() as transaction:
        if transaction.get_container(container.id) is not None:
            raise AlreadyExists(f"container {container.id} already has a record: nothing to restore")
        holder = transaction.get_container_by_name(container.name) or transaction.get_container(container.name)
        if holder is not None:
            raise AlreadyExists(
                f'container name "{container.name}" is already in use by container {holder.id}: '
                "rename or remove that container first"
            )
        if container.ip:
            network = transaction.get_network(container.network)
            if network is None:
                raise NotFound(
                    f"no such network: {container.network} (container {container.id} holds {container.ip} in it): "
                    "restore the network first"
                )
            address = _host_address(ipam.parse_subnet(network.subnet), container)
            if address in transaction.used_addresses(network.name):
                raise AlreadyExists(
                    f"address {container.ip} of network {network.name} is held already: "
                    f"container {container.id} cannot have it back"
                )
            transaction.insert_allocation(network.name, address, container.id)
        transaction.insert_container(container)
    return container


def _host_address(subnet, container: Container) -> int:
    try:
        address = ipam.address_to_int(container.ip)
    except ValueError:
        raise InvalidArgument(
            f'invalid address "{container.ip}" of container {container.id}: use an IPv4 address'
        ) from None
    if not int(subnet.network_address) < address < int(subnet.broadcast_address):
        raise InvalidArgument(f"address {container.ip} of container {container.id} is not a host address of {subnet}")
    return address
