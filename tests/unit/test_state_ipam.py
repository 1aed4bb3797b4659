"""Unit tests of the state service's pure IPv4 arithmetic."""

import ipaddress

import pytest

from services.common.errors import InvalidArgument
from services.state import ipam


def net(text):
    return ipaddress.IPv4Network(text)


def ip(text):
    return int(ipaddress.IPv4Address(text))


@pytest.mark.parametrize(
    "text,normalized",
    [("10.20.0.0/24", "10.20.0.0/24"), ("10.0.0.0/8", "10.0.0.0/8"), ("192.168.1.4/30", "192.168.1.4/30"),
     ("172.16.0.0/255.255.0.0", "172.16.0.0/16")],
)
def test_good_subnets_are_normalized(text, normalized):
    assert ipam.normalize_subnet(text) == normalized


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "invalid subnet"),
        ("banana", "invalid subnet"),
        ("10.0.0.0/33", "invalid subnet"),
        ("fd00::/64", "not IPv4"),
        ("10.0.0.0/7", "prefix length 7"),
        ("10.0.0.0/31", "prefix length 31"),
        ("10.0.0.0", "prefix length 32"),
    ],
)
def test_bad_subnets(text, message):
    with pytest.raises(InvalidArgument, match=message):
        ipam.parse_subnet(text)


def test_host_bits_set_names_the_normalized_form():
    with pytest.raises(InvalidArgument, match=r"host bits set: use 10\.0\.0\.0/24"):
        ipam.parse_subnet("10.0.0.5/24")


def test_default_gateway_is_first_host():
    assert str(ipam.default_gateway(net("10.20.0.0/24"))) == "10.20.0.1"
    assert str(ipam.default_gateway(net("10.0.0.4/30"))) == "10.0.0.5"


def test_gateway_validation():
    subnet = net("10.0.0.0/24")
    assert str(ipam.parse_gateway(subnet, "10.0.0.254")) == "10.0.0.254"
    for bad in ["10.0.0.0", "10.0.0.255", "10.0.1.1"]:
        with pytest.raises(InvalidArgument, match="not a host address of 10.0.0.0/24"):
            ipam.parse_gateway(subnet, bad)
    with pytest.raises(InvalidArgument, match="invalid gateway"):
        ipam.parse_gateway(subnet, "gateway")


def test_subnets_overlap():
    assert ipam.subnets_overlap(net("10.0.0.0/16"), net("10.0.5.0/24"))
    assert ipam.subnets_overlap(net("10.0.5.0/24"), net("10.0.0.0/16"))
    assert ipam.subnets_overlap(net("10.0.0.0/24"), net("10.0.0.0/24"))
    assert not ipam.subnets_overlap(net("10.0.0.0/24"), net("10.0.1.0/24"))
    assert not ipam.subnets_overlap(net("10.0.0.0/30"), net("10.0.0.4/30"))


def test_lowest_free_on_slash_30():
    subnet = net("10.0.0.0/30")
    assert ipam.lowest_free_address(subnet, set()) == ip("10.0.0.1")
    assert ipam.lowest_free_address(subnet, {ip("10.0.0.1")}) == ip("10.0.0.2")
    assert ipam.lowest_free_address(subnet, {ip("10.0.0.1"), ip("10.0.0.2")}) is None


def test_lowest_free_on_slash_24_skips_network_and_broadcast():
    subnet = net("10.0.0.0/24")
    all_hosts = {ip(f"10.0.0.{n}") for n in range(1, 255)}
    assert ipam.lowest_free_address(subnet, all_hosts) is None
    # Addresses outside the subnet or the network address in `used` change nothing.
    assert ipam.lowest_free_address(subnet, {ip("10.0.0.0"), ip("9.9.9.9")}) == ip("10.0.0.1")
    assert ipam.lowest_free_address(subnet, all_hosts - {ip("10.0.0.77")}) == ip("10.0.0.77")


def test_lowest_free_on_a_crowded_slash_16():
    # Its speed is measured in bench/ipam.py.
    subnet = net("10.1.0.0/16")
    first = int(subnet.network_address) + 1
    used = set(range(first, first + 65_000))
    assert ipam.lowest_free_address(subnet, used) == first + 65_000
    full = set(range(first, int(subnet.broadcast_address)))
    assert ipam.lowest_free_address(subnet, full) is None


def test_address_int_round_trip():
    assert ipam.int_to_address(ipam.address_to_int("10.20.30.40")) == "10.20.30.40"
