"""Bridges, veth pairs and the network files against the real kernel, in network namespaces the tests create."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.common.ctl import REPO
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.executor import netlink
from services.executor.netfiles import write_network_files
from services.executor.plan import build_plan

pytestmark = pytest.mark.root

IFF_UP = 0x1
# A process that sits in a network namespace of its own until its stdin closes.
HOLDER = (
    "import sys\n"
    "from services.common import linux\n"
    "linux.unshare(linux.CLONE_NEWNET)\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"
)


@dataclass
class Netns:
    """A namespace held by a child process; `fd` is an open /proc/<pid>/ns/net."""

    process: subprocess.Popen
    fd: int

    @property
    def path(self) -> str:
        return f"/proc/{self.process.pid}/ns/net"


@pytest.fixture
def make_netns() -> Iterator[Callable[[], Netns]]:
    made: list[Netns] = []

    def make() -> Netns:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert process.stdout.readline() == "ready\n"
            fd = os.open(f"/proc/{process.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            process.kill()
            process.wait()
            raise
        made.append(Netns(process, fd))
        return made[-1]

    try:
        yield make
    finally:
        for netns in made:
            os.close(netns.fd)
            netns.process.kill()
            netns.process.wait()
            netns.process.stdin.close()
            netns.process.stdout.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique link name prefix for one test (9 characters); every link it names is gone afterwards."""
    name = "mdt" + uuid.uuid4().hex[:6]
    try:
        yield name
    finally:
        leftovers = netlink.link_names(name)
        with IPRoute() as ipr:
            for link in leftovers:
                with contextlib.suppress(NetlinkError):
                    ipr.link("del", ifname=link)
        assert not leftovers, f"links left behind: {leftovers}"


def free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that overlaps none of the host's routes."""
    with IPRoute() as ipr:
        taken = [
            ipaddress.ip_network(f"{r.get('RTA_DST')}/{r['dst_len']}")
            for r in ipr.get_routes(family=socket.AF_INET)
            if r.get("RTA_DST") and r["dst_len"] > 0
        ]
    rng = random.Random()
    while True:
        subnet = ipaddress.ip_network(f"10.{rng.randint(128, 254)}.{rng.randint(0, 255)}.0/24")
        if not any(subnet.overlaps(route) for route in taken):
            return subnet


def container_view(fd: int) -> dict:
    """eth0's IPv4 addresses, the default gateway and whether lo and eth0 are up, read inside the netns."""
    with netlink.netns_iproute(fd) as ipr:
        eth0 = ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0]
        lo = ipr.get_links(ipr.link_lookup(ifname="lo")[0])[0]
        addresses = [
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(family=socket.AF_INET, index=eth0["index"])
        ]
        defaults = [r for r in ipr.get_routes(family=socket.AF_INET, table=254) if r["dst_len"] == 0]
        return {
            "addresses": addresses,
            "gateways": [r.get("RTA_GATEWAY") for r in defaults],
            "default_oif": [r.get("RTA_OIF") for r in defaults],
            "eth0_index": eth0["index"],
            "eth0_up": bool(eth0["flags"] & IFF_UP),
            "lo_up": bool(lo["flags"] & IFF_UP),
        }


def links_in(fd: int) -> list[str]:
    with netlink.netns_iproute(fd) as ipr:
        return sorted(link.get("IFLA_IFNAME") for link in ipr.get_links())


def ping_from(netns_path: str, address: str) -> None:
    """One ping from inside a namespace of the test's own, with the host's static busybox."""
    ping = subprocess.run(
        ["nsenter", f"--net={netns_path}", "busybox", "ping", "-c", "1", "-W", "2", address],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr


def test_two_namespaces_on_one_bridge_ping_each_other(prefix, make_netns):
    bridge = prefix + "br"
    subnet = free_subnet()
    gateway, first, second = (str(subnet.network_address + n) for n in (1, 2, 3))
    one, two = make_netns(), make_netns()
    try:
        netlink.ensure_bridge(bridge, gateway, subnet.prefixlen)
        # Idempotent: a second call changes nothing and raises nothing.
        netlink.ensure_bridge(bridge, gateway, subnet.prefixlen)
        assert Path(netlink.ROUTE_LOCALNET.format(bridge)).read_text() == "1\n"
        netlink.connect(one.fd, prefix + "a", bridge, first, subnet.prefixlen, gateway)
        netlink.connect(two.fd, prefix + "b", bridge, second, subnet.prefixlen, gateway)
        assert netlink.link_names(prefix) == [prefix + "a", prefix + "b", bridge]
        assert netlink.attached_links(bridge) == [prefix + "a", prefix + "b"]
        assert netlink.is_bridge(bridge) and netlink.link_exists(bridge)

        with IPRoute() as ipr:
            bridge_index = ipr.link_lookup(ifname=bridge)[0]
            bridge_addresses = [f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=bridge_index)]
            assert bridge_addresses.count(f"{gateway}/{subnet.prefixlen}") == 1
            for host_end in (prefix + "a", prefix + "b"):
                link = ipr.get_links(ipr.link_lookup(ifname=host_end)[0])[0]
                assert link.get("IFLA_MASTER") == bridge_index
                assert link["flags"] & IFF_UP

        for netns, address in ((one, first), (two, second)):
            view = container_view(netns.fd)
            assert view["addresses"] == [f"{address}/{subnet.prefixlen}"]
            assert view["gateways"] == [gateway]
            assert view["default_oif"] == [view["eth0_index"]]
            assert view["eth0_up"] and view["lo_up"]
            assert links_in(netns.fd) == ["eth0", "lo"]

        ping_from(one.path, second)
        # And the gateway answers: the bridge's address is reachable from a container.
        ping_from(two.path, gateway)

        netlink.disconnect(prefix + "a")
        netlink.disconnect(prefix + "a")
        assert links_in(one.fd) == ["lo"]
        netlink.disconnect(prefix + "b")
        assert links_in(two.fd) == ["lo"]
        assert netlink.attached_links(bridge) == []
    finally:
        netlink.disconnect(prefix + "a")
        netlink.disconnect(prefix + "b")
        netlink.delete_bridge(bridge)
    netlink.delete_bridge(bridge)
    assert not netlink.link_exists(bridge) and not netlink.is_bridge(bridge)
    assert netlink.attached_links(bridge) == []
    assert netlink.link_names(prefix) == []
    assert not Path(netlink.ROUTE_LOCALNET.format(bridge)).exists()


def test_connect_refuses_a_taken_name_and_a_missing_bridge(prefix, make_netns):
    bridge = prefix + "br"
    subnet = free_subnet()
    gateway, address = str(subnet.network_address + 1), str(subnet.network_address + 2)
    one, two = make_netns(), make_netns()
    with pytest.raises(NotFound, match="bridge"):
        netlink.connect(one.fd, prefix + "a", bridge, address, subnet.prefixlen, gateway)
    assert links_in(one.fd) == ["lo"]
    try:
        netlink.ensure_bridge(bridge, gateway, subnet.prefixlen)
        netlink.connect(one.fd, prefix + "a", bridge, address, subnet.prefixlen, gateway)
        with pytest.raises(AlreadyExists, match=prefix + "a"):
            netlink.connect(two.fd, prefix + "a", bridge, address, subnet.prefixlen, gateway)
        # The failed attempt touched neither the first pair nor the second namespace.
        assert links_in(two.fd) == ["lo"]
        assert container_view(one.fd)["addresses"] == [f"{address}/{subnet.prefixlen}"]
    finally:
        netlink.disconnect(prefix + "a")
        netlink.delete_bridge(bridge)


def test_a_failed_connect_leaves_nothing(prefix, make_netns):
    bridge = prefix + "br"
    subnet = free_subnet()
    gateway, address = str(subnet.network_address + 1), str(subnet.network_address + 2)
    unreachable_gateway = str(ipaddress.ip_address(gateway) + 256)
    one = make_netns()
    try:
        netlink.ensure_bridge(bridge, gateway, subnet.prefixlen)
        # The route's gateway is off eth0's subnet: the kernel refuses it after the pair exists.
        with pytest.raises(FailedPrecondition, match=r"cannot configure eth0 .*\[Errno \d+\]"):
            netlink.connect(one.fd, prefix + "a", bridge, address, subnet.prefixlen, unreachable_gateway)
        assert netlink.link_names(prefix) == [bridge]
        assert links_in(one.fd) == ["lo"]
    finally:
        netlink.delete_bridge(bridge)


def test_ensure_bridge_refuses_a_link_that_is_not_a_bridge(prefix):
    name = prefix + "x"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=prefix + "y")
    try:
        assert netlink.link_exists(name) and not netlink.is_bridge(name)
        with pytest.raises(FailedPrecondition, match="not a bridge"):
            netlink.ensure_bridge(name, "10.254.254.1", 24)
        with pytest.raises(FailedPrecondition, match="not a bridge"):
            netlink.delete_bridge(name)
    finally:
        netlink.disconnect(name)
    netlink.delete_bridge(prefix + "absent")


def test_network_files_are_bind_mounted_by_init(tmp_path: Path):
    """init's mount_rootfs, in a child with a mount namespace of its own, puts the three files in place."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    # An image with a hosts file of its own, and no hostname or resolv.conf at all.
    (rootfs / "etc" / "hosts").write_text("image\n")
    state = tmp_path / "state"
    state.mkdir()
    host_resolv = tmp_path / "resolv.conf"
    host_resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch lan\n")
    mounts = write_network_files(state, "web", "10.88.0.2", str(host_resolv))
    plan = json.loads(build_plan("1234567890", "web", str(rootfs), ["sh"], []).to_json())
    # Only the file mounts: /proc, /dev and the rest are not what this test is about.
    plan["mounts"] = json.loads(build_plan("x", "web", str(rootfs), ["sh"], [], extra_mounts=mounts).to_json())["mounts"][-3:]
    plan["devices"], plan["symlinks"] = [], []
    script = (
        "import json, sys\n"
        "from services.common import linux\n"
        "from services.executor.init import mount_rootfs\n"
        "plan = json.loads(sys.argv[1])\n"
        "linux.unshare(linux.CLONE_NEWNS)\n"
        "mount_rootfs(plan)\n"
        "root = plan['rootfs']\n"
        "print(json.dumps({p: open(root + p).read() for p in ('/etc/hosts', '/etc/hostname', '/etc/resolv.conf')}))\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, json.dumps(plan)], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    assert seen["/etc/hosts"].endswith("10.88.0.2\tweb\n")
    assert seen["/etc/hostname"] == "web\n"
    assert seen["/etc/resolv.conf"] == "nameserver 192.0.2.53\nsearch lan\n"
    # The mounts died with the child's namespace; the empty targets init created stay in the image's tree.
    assert (rootfs / "etc" / "hosts").read_text() == "image\n"
    assert (rootfs / "etc" / "hostname").read_text() == ""
