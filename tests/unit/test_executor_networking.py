"""The executor's network request checks: pure validation, and the host-port probe (no root needed)."""

from __future__ import annotations

import socket

import pytest

from services.common.errors import AlreadyExists, InvalidArgument
from services.executor.firewall_rules import Port
from services.executor.networking import BridgeSpec, ConnectSpec, ensure_port_is_free, validate_bridge, validate_connect

GOOD = ConnectSpec("5341624332", "mdb-web", "10.20.0.2", 24, "10.20.0.1", (Port("", 8080, 80, "tcp"),))


def test_a_good_connect_request_passes() -> None:
    validate_connect(GOOD)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"container_id": ""}, "container id"),
        ({"bridge": ""}, "bridge name"),
        ({"bridge": "b" * 16}, "bridge name"),
        ({"address": "10.20.0"}, "address"),
        ({"gateway": "10.21.0.1"}, "gateway"),
        ({"gateway": "10.20.0.2"}, "gateway"),
        ({"prefix_length": 31}, "prefix length"),
        ({"ports": (Port("", 8080, 80, "sctp"),)}, "protocol"),
        ({"ports": (Port("", 0, 80, "tcp"),)}, "port 0"),
        ({"ports": (Port("", 8080, 80, "tcp"), Port("127.0.0.1", 8080, 81, "tcp"))}, "published twice"),
        ({"ports": (Port("localhost", 8080, 80, "tcp"),)}, "host IP"),
    ],
)
def test_bad_connect_requests_name_the_field(fields, fragment) -> None:
    bad = ConnectSpec(**{**GOOD.__dict__, **fields})
    with pytest.raises(InvalidArgument, match=fragment):
        validate_connect(bad)


def test_bridge_requests() -> None:
    assert str(validate_bridge(BridgeSpec("web", "mdb-web", "10.20.0.0/24", "10.20.0.1"), need_gateway=True)) == "10.20.0.0/24"
    # Removal needs no gateway.
    validate_bridge(BridgeSpec("web", "mdb-web", "10.20.0.0/24"), need_gateway=False)
    with pytest.raises(InvalidArgument, match="outside"):
        validate_bridge(BridgeSpec("web", "mdb-web", "10.20.0.0/24", "10.30.0.1"), need_gateway=True)
    with pytest.raises(InvalidArgument, match="subnet"):
        validate_bridge(BridgeSpec("web", "mdb-web", "10.20.0.1/24", "10.20.0.1"), need_gateway=True)
    with pytest.raises(InvalidArgument, match="network"):
        validate_bridge(BridgeSpec("", "mdb-web", "10.20.0.0/24"), need_gateway=False)


@pytest.mark.parametrize(("kind", "protocol"), [(socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")])
def test_a_host_port_a_program_holds_is_refused(kind, protocol) -> None:
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(AlreadyExists, match=f"host port {port}/{protocol} is in use by another program"):
            ensure_port_is_free(Port("", port, 80, protocol))
    ensure_port_is_free(Port("127.0.0.1", port, 80, protocol))


def test_a_listener_with_reuseaddr_still_holds_its_port() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        with pytest.raises(AlreadyExists):
            ensure_port_is_free(Port("", holder.getsockname()[1], 80, "tcp"))


def test_a_subnet_overlapping_a_host_route_is_found_but_the_bridge_own_route_is_not() -> None:
    import ipaddress

    from services.executor.networking import overlapping_route

    routes = [("192.0.2.0/24", "eth0"), ("10.20.0.0/24", "mdb-web"), ("172.16.0.0/12", "vpn0")]
    subnet = ipaddress.IPv4Network("10.20.0.0/24")
    assert overlapping_route(subnet, "mdb-web", routes) is None
    assert overlapping_route(subnet, "mdb-other", routes) == ("10.20.0.0/24", "mdb-web")
    assert overlapping_route(ipaddress.IPv4Network("172.20.0.0/16"), "mdb-web", routes) == ("172.16.0.0/12", "vpn0")
    assert overlapping_route(ipaddress.IPv4Network("192.0.0.0/16"), "mdb-web", routes) == ("192.0.2.0/24", "eth0")
