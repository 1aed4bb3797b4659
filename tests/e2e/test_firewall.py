"""The firewall against the real iptables: rules appear as planned and the last network leaves the host as it was.

Bridges are dummy names (rules only name interfaces), and no packet is sent.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import AlreadyExists, MydockerError
from services.executor.firewall import BASELINE_FILE, IP_FORWARD, SEARCH_PATH, Firewall, Port, _delete_nft_tables, parse_save

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _iptables_installed() -> None:
    if shutil.which("iptables-restore", path=SEARCH_PATH) is None:
        pytest.fail("needs iptables-restore: apt-get install iptables (scripts/test installs it)")

_COUNTERS = re.compile(r"\[[0-9]+:[0-9]+\]")


def iptables_save() -> str:
    """iptables-save without its date comments and with every counter zeroed."""
    text = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return "".join(_COUNTERS.sub("[0:0]", line) for line in text.splitlines(keepends=True) if not line.startswith("#"))


def restore(text: str) -> None:
    subprocess.run(["iptables-restore", "-w", "--noflush"], input=text, text=True, check=True, capture_output=True)


@contextlib.contextmanager
def names() -> Iterator[dict[str, str]]:
    """Unique names for one test, and a state directory removed afterwards."""
    suffix = uuid.uuid4().hex[:8]
    number = int(suffix, 16)
    state = tempfile.mkdtemp(prefix="mdk-", dir="/tmp")
    try:
        yield {
            "a": f"fwa-{suffix}",
            "b": f"fwb-{suffix}",
            "bridge_a": f"mdka{suffix}",
            "bridge_b": f"mdkb{suffix}",
            "subnet_a": f"10.251.{number % 250}.0/24",
            "subnet_b": f"10.252.{number % 250}.0/24",
            "address_a": f"10.251.{number % 250}.2",
            "ctr1": f"{number % 10**10:010d}",
            "ctr2": f"{(number + 1) % 10**10:010d}",
            "port": str(20000 + number % 20000),
            "state": state,
        }
    finally:
        shutil.rmtree(state, ignore_errors=True)


def cleanup(firewall: Firewall, n: dict[str, str]) -> None:
    """Remove whatever a failed test left; each step is idempotent."""
    for container_id in (n["ctr1"], n["ctr2"]):
        with contextlib.suppress(MydockerError):
            firewall.unpublish(container_id)
    for network in ("a", "b"):
        with contextlib.suppress(MydockerError):
            firewall.remove_network(n[network], n[f"bridge_{network}"], n[f"subnet_{network}"])


def test_two_networks_and_ports_come_and_go_leaving_iptables_as_before() -> None:
    before = iptables_save()
    forward_before = IP_FORWARD.read_text()
    with names() as n:
        firewall = Firewall(Path(n["state"]))
        host_port = int(n["port"])
        ports = [Port("", host_port, 80, "tcp"), Port("127.0.0.1", host_port, 53, "udp")]
        try:
            firewall.add_network(n["a"], n["bridge_a"], n["subnet_a"])
            firewall.add_network(n["b"], n["bridge_b"], n["subnet_b"])
            assert {n["a"], n["b"]} <= firewall.networks()
            assert IP_FORWARD.read_text().strip() == "1"
            if not before:
                assert (Path(n["state"]) / BASELINE_FILE).exists()

            firewall.publish(n["ctr1"], n["bridge_a"], n["address_a"], ports)
            assert sorted(firewall.published()[n["ctr1"]], key=lambda p: p.protocol) == ports
            saved = iptables_save()
            tag = f'"mydocker ctr={n["ctr1"]} port={host_port}/tcp"'
            assert f"-A MYDOCKER-DNAT -p tcp -m tcp --dport {host_port} -m comment --comment {tag} -j DNAT --to-destination {n['address_a']}:80" in saved
            assert f"-A MYDOCKER-FORWARD -d {n['address_a']}/32 -o {n['bridge_a']} -p tcp -m tcp --dport 80" in saved
            assert f"-d 127.0.0.1/32 -p udp -m udp --dport {host_port}" in saved
            assert "-A OUTPUT -m addrtype --dst-type LOCAL -j MYDOCKER-DNAT" in saved
            assert f"-A MYDOCKER-ISOLATION -o {n['bridge_b']}" in saved

            with pytest.raises(AlreadyExists, match=f"host port {host_port}/tcp is already published by container {n['ctr1']}"):
                firewall.publish(n["ctr2"], n["bridge_b"], "10.252.0.9", [Port("127.0.0.1", host_port, 8080, "tcp")])
            assert iptables_save() == saved

            firewall.unpublish(n["ctr1"])
            assert n["ctr1"] not in firewall.published()
            firewall.remove_network(n["a"], n["bridge_a"], n["subnet_a"])
            assert n["a"] not in firewall.networks()
            firewall.remove_network(n["b"], n["bridge_b"], n["subnet_b"])

            assert iptables_save() == before
            assert IP_FORWARD.read_text() == forward_before
            assert not (Path(n["state"]) / BASELINE_FILE).exists()
        finally:
            cleanup(firewall, n)


def test_every_operation_is_idempotent() -> None:
    before = iptables_save()
    with names() as n:
        firewall = Firewall(Path(n["state"]))
        ports = [Port("", int(n["port"]), 80, "udp")]
        try:
            firewall.add_network(n["a"], n["bridge_a"], n["subnet_a"])
            added = iptables_save()
            firewall.add_network(n["a"], n["bridge_a"], n["subnet_a"])
            assert iptables_save() == added

            firewall.publish(n["ctr1"], n["bridge_a"], n["address_a"], ports)
            published = iptables_save()
            firewall.publish(n["ctr1"], n["bridge_a"], n["address_a"], ports)
            assert iptables_save() == published

            firewall.unpublish(n["ctr1"])
            firewall.unpublish(n["ctr1"])
            assert iptables_save() == added

            firewall.remove_network(n["a"], n["bridge_a"], n["subnet_a"])
            firewall.remove_network(n["a"], n["bridge_a"], n["subnet_a"])
            assert iptables_save() == before
        finally:
            cleanup(firewall, n)


def test_host_rules_keep_their_place_and_a_table_the_host_had_stays() -> None:
    before_test = iptables_save()
    host_rule = "-A FORWARD -s 192.0.2.1/32 -m comment --comment mdk-test-host -j DROP"
    with names() as n:
        firewall = Firewall(Path(n["state"]))
        try:
            restore(f"*filter\n{host_rule}\nCOMMIT\n")
            before = iptables_save()
            firewall.add_network(n["a"], n["bridge_a"], n["subnet_a"])
            forward = [line for line in iptables_save().splitlines() if line.startswith("-A FORWARD ")]
            assert forward[0] == "-A FORWARD -j MYDOCKER-FORWARD"
            assert host_rule in forward
            firewall.remove_network(n["a"], n["bridge_a"], n["subnet_a"])
            assert iptables_save() == before
        finally:
            cleanup(firewall, n)
            with contextlib.suppress(subprocess.CalledProcessError):
                restore(f"*filter\n-D{host_rule[2:]}\nCOMMIT\n")
            # The filter table may be ours to remove: it did not exist before this test.
            nf_tables = "nf_tables" in subprocess.run(["iptables", "-V"], capture_output=True, text=True).stdout
            if nf_tables and "*filter" not in before_test and "*filter" in iptables_save():
                tables = parse_save(iptables_save())
                if not tables["filter"].rules:
                    _delete_nft_tables(["filter"])
    assert iptables_save() == before_test
