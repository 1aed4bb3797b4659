"""Interface names from network names and container ids: short, deterministic, never colliding."""

from __future__ import annotations

import hashlib
import random
import string

import pytest

from services.common.errors import InvalidArgument
from services.common.netnames import BRIDGE_HASH_PREFIX, IFNAME_MAX, PREFIXES, bridge_name, veth_name


def test_short_names_are_kept_literally():
    assert bridge_name("mynet") == "mdb-mynet"
    assert bridge_name("a" * 11) == "mdb-" + "a" * 11
    assert veth_name("1234567890") == "mdv1234567890"
    assert veth_name("b" * 12) == "mdv" + "b" * 12


def test_long_names_are_hashed_under_another_prefix():
    network = "a" * 12
    assert bridge_name(network) == "mdh-" + hashlib.sha256(network.encode()).hexdigest()[:11]
    container_id = "c" * 13
    assert veth_name(container_id) == "mdw" + hashlib.sha256(container_id.encode()).hexdigest()[:12]


def test_a_literal_never_spells_a_hash():
    # An 11-character network made of hex digits would equal a hash were the prefixes the same.
    hashed = bridge_name("n" * 40)
    literal = bridge_name(hashed[4:])
    assert literal != hashed and literal.startswith("mdb-") and hashed.startswith("mdh-")
    hashed_veth = veth_name("x" * 40)
    assert veth_name(hashed_veth[3:]) != hashed_veth


@pytest.mark.parametrize("length", [1, 11, 12, 13, 63, 64])
def test_every_name_fits_ifnamsiz(length):
    assert len(bridge_name("n" * length)) <= IFNAME_MAX
    assert len(veth_name("i" * length)) <= IFNAME_MAX


def test_names_are_deterministic():
    assert bridge_name("some.long-network_name") == bridge_name("some.long-network_name")
    assert veth_name("x" * 64) == veth_name("x" * 64)


def test_many_ids_and_networks_never_collide():
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "_-"
    ids = {str(n).zfill(10) for n in rng.sample(range(10**10), 20000)}
    ids |= {rng.choice(string.ascii_letters) + "".join(rng.choices(alphabet, k=rng.randint(0, 63))) for _ in range(20000)}
    names = {veth_name(i) for i in ids}
    assert len(names) == len(ids)
    networks = {rng.choice(string.ascii_letters) + "".join(rng.choices(alphabet + ".", k=rng.randint(0, 63))) for _ in range(20000)}
    bridges = {bridge_name(n) for n in networks}
    assert len(bridges) == len(networks)
    # Bridges and veths never share a name either.
    assert not bridges & names


def test_prefixes_cover_every_name():
    assert bridge_name("x").startswith(PREFIXES) and bridge_name("x" * 30).startswith(PREFIXES)
    assert veth_name("1").startswith(PREFIXES) and veth_name("1" * 30).startswith(PREFIXES)


@pytest.mark.parametrize("bad", ["", "-x", "a/b", "a b", "x" * 65, "é"])
def test_invalid_names_are_refused(bad):
    with pytest.raises(InvalidArgument):
        bridge_name(bad)
    with pytest.raises(InvalidArgument):
        veth_name(bad)


def test_container_ids_take_no_dots():
    with pytest.raises(InvalidArgument, match="invalid container id"):
        veth_name("a.b")
    assert bridge_name("a.b") == "mdb-a.b"


def test_other_instances_get_their_own_bridge_names():
    assert bridge_name("mynet", "") == "mdb-mynet"
    first, second = bridge_name("mynet", "0123abcd"), bridge_name("mynet", "89abcdef")
    assert first.startswith(BRIDGE_HASH_PREFIX) and len(first) <= IFNAME_MAX
    assert len({first, second, bridge_name("mynet")}) == 3
    assert first == BRIDGE_HASH_PREFIX + hashlib.sha256(b"0123abcd/mynet").hexdigest()[:11]
