"""The network half of the state service's logic: bridge network records and the IP addresses held in them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.netnames import bridge_name
from services.state import ipam
from services.state.model import (
    GATEWAY_OWNER,
    AddressAllocation,
    AddressAssignment,
    Network,
    validate_network_name,
)
from services.state.require import require as _require
from services.state.require import require_container as _require_container
from services.state.require import require_network as _require_network

NETWORK_DRIVER = "bridge"


class NetworksMixin:
    """StateCore's network RPCs; uses its `_store`, `_clock` and `instance`."""

    def create_network(
        self,
        name: str,
        driver: str = "",
        subnet: str = "",
        gateway: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Network:
        validate_network_name(name)
        driver = driver or NETWORK_DRIVER
        if driver != NETWORK_DRIVER:
            raise InvalidArgument(f'unsupported network driver "{driver}": use "{NETWORK_DRIVER}"')
        if not subnet:
            raise InvalidArgument("the subnet is empty: give one in CIDR form such as 10.20.0.0/24")
        parsed_subnet = ipam.parse_subnet(subnet)
        gateway_address = (
            ipam.parse_gateway(parsed_subnet, gateway) if gateway else ipam.default_gateway(parsed_subnet)
        )
        with self._store.write() as transaction:
            if transaction.get_network(name) is not None:
                raise AlreadyExists(
                    f'network name "{name}" is already in use: choose another name or remove that network'
                )
            bridge = bridge_name(name, self.instance)
            for other in transaction.list_networks():
                if other.bridge(self.instance) == bridge:
                    raise AlreadyExists(
                        f'network name "{name}" maps to bridge {bridge}, already used by network {other.name}: '
                        "choose another name"
                    )
                if ipam.subnets_overlap(parsed_subnet, ipam.parse_subnet(other.subnet)):
                    raise FailedPrecondition(
                        f"subnet {parsed_subnet} overlaps subnet {other.subnet} of network {other.name}: "
                        "choose a subnet outside it"
                    )
            network = Network(
                name=name,
                driver=driver,
                subnet=str(parsed_subnet),
                gateway=str(gateway_address),
                labels=dict(labels or {}),
                created_at=self._clock(),
            )
            transaction.insert_network(network)
            transaction.insert_allocation(name, int(gateway_address), GATEWAY_OWNER)
        return network

    def get_network(self, name: str) -> tuple[Network, list[AddressAllocation]]:
        """The network and its allocations, gateway included, lowest address first."""
        _require(name, "network name")
        with self._store.read() as transaction:
            return _require_network(transaction, name), transaction.list_allocations(name)

    def list_networks(self) -> list[Network]:
        with self._store.read() as transaction:
            return transaction.list_networks()

    def delete_network(self, name: str) -> Network:
        """Delete a network and its gateway reservation; returns the record as it was."""
        _require(name, "network name")
        with self._store.write(may_use_reserve=True) as transaction:
            network = _require_network(transaction, name)
            holders = [
                allocation.owner
                for allocation in transaction.list_allocations(name)
                if allocation.owner != GATEWAY_OWNER
            ]
            if holders:
                raise FailedPrecondition(
                    f"network {name} is in use by containers {', '.join(holders)}: "
                    "remove them or release their addresses first"
                )
            transaction.delete_allocations_of_network(name)
            transaction.delete_network(name)
        return network

    # IP allocations.

    def allocate_address(self, network: str, container_id: str) -> AddressAssignment:
        """Give the container the lowest free host address of the network and record it as its ip."""
        _require(network, "network name")
        _require(container_id, "container id")
        with self._store.write() as transaction:
            network_record = _require_network(transaction, network)
            container = _require_container(transaction, container_id)
            held = transaction.get_allocation(network, container_id)
            if held is not None:
                raise FailedPrecondition(
                    f"container {container_id} already holds {held.address} in network {network}: release it first"
                )
            subnet = ipam.parse_subnet(network_record.subnet)
            address = ipam.lowest_free_address(subnet, transaction.used_addresses(network))
            if address is None:
                raise FailedPrecondition(
                    f"network {network} ({network_record.subnet}) has no free address: "
                    "remove a container from it or use a larger subnet"
                )
            allocation = transaction.insert_allocation(network, address, container_id)
            transaction.update_container(dataclasses.replace(container, ip=allocation.address))
        return AddressAssignment(
            allocation=allocation, prefix_length=subnet.prefixlen, gateway=network_record.gateway
        )

    def release_address(self, network: str, container_id: str) -> AddressAllocation:
        """Free the address a container holds in a network and clear its ip; returns what was freed."""
        _require(network, "network name")
        _require(container_id, "container id")
        if container_id == GATEWAY_OWNER:
            raise InvalidArgument("the gateway address cannot be released: delete the network instead")
        with self._store.write(may_use_reserve=True) as transaction:
            allocation = transaction.get_allocation(network, container_id)
            if allocation is None:
                raise NotFound(f"container {container_id} holds no address in network {network}")
            transaction.delete_allocation(network, container_id)
            container = transaction.get_container(container_id)
            if container is not None and container.ip == allocation.address:
                transaction.update_container(dataclasses.replace(container, ip=""))
        return allocation

    def list_addresses(self, network: str) -> list[AddressAllocation]:
        """Allocations of one network, gateway included, lowest address first."""
        _require(network, "network name")
        with self._store.read() as transaction:
            _require_network(transaction, network)
            return transaction.list_allocations(network)
