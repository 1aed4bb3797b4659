"""Pure IPv4 subnet arithmetic for networks and address allocation; no I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Set

from services.common.errors import InvalidArgument

MIN_PREFIX_LENGTH = 8
# A /31 or /32 has no room for a gateway plus a container besides network and broadcast.
MAX_PREFIX_LENGTH = 30


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """Parse an IPv4 CIDR subnet with prefix length 8..30 and no host bits set."""
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f'invalid subnet "{text}": use IPv4 CIDR form such as 10.20.0.0/24') from None
    if not isinstance(loose, ipaddress.IPv4Network):
        raise InvalidArgument(f'subnet "{text}" is not IPv4: only IPv4 subnets are supported')
    if not MIN_PREFIX_LENGTH <= loose.prefixlen <= MAX_PREFIX_LENGTH:
        raise InvalidArgument(
            f'subnet "{text}" has prefix length {loose.prefixlen}: '
            f"use a prefix length from {MIN_PREFIX_LENGTH} to {MAX_PREFIX_LENGTH}"
        )
    if ipaddress.ip_interface(text).ip != loose.network_address:
        raise InvalidArgument(f'subnet "{text}" has host bits set: use {loose}')
    return loose


def normalize_subnet(text: str) -> str:
    """Return the canonical CIDR text of a valid subnet, e.g. "10.20.0.0/24"."""
    return str(parse_subnet(text))


def default_gateway(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The first host address of the subnet."""
    return subnet.network_address + 1


def parse_gateway(subnet: ipaddress.IPv4Network, text: str) -> ipaddress.IPv4Address:
    """Parse a gateway address; it must be a host address of the subnet."""
    try:
        gateway = ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f'invalid gateway "{text}": use an IPv4 address inside {subnet}') from None
    if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(
            f"gateway {gateway} is not a host address of {subnet}: "
            f"use an address from {subnet.network_address + 1} to {subnet.broadcast_address - 1}"
        )
    return gateway


def subnets_overlap(a: ipaddress.IPv4Network, b: ipaddress.IPv4Network) -> bool:
    return a.overlaps(b)


def lowest_free_address(subnet: ipaddress.IPv4Network, used: Set[int]) -> int | None:
    """Return the lowest host address (as an int) not in used, or None when every one is taken.

    Each probe is a set lookup and at most len(used) + 1 probes are made, so one
    call is linear in the number of used addresses whatever the subnet size.
    """
    first_host = int(subnet.network_address) + 1
    last_host = int(subnet.broadcast_address) - 1
    candidate = first_host
    while candidate <= last_host:
        if candidate not in used:
            return candidate
        candidate += 1
    return None


def address_to_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def int_to_address(value: int) -> str:
    return str(ipaddress.IPv4Address(value))
