"""Bridge networks end to end, as root: ping, isolation, -p over tcp and udp, teardown, IPAM under load, iptables restored."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from services.common.config import Config
from services.common.ctl import REPO, read_pidfile
from services.common.netnames import veth_name
from tests.e2e.conftest import both_cli_modes, one_line_error
from tests.netutil import free_port, free_subnets, host_networks, iptables_save

pytestmark = pytest.mark.root

# The host's Python, run inside a busybox container through read-only volumes: busybox has no UDP server.
HOST_PYTHON_VOLUMES = ("-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro")
UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('', 53))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(512)\n"
    "    s.sendto(b'echo:' + data, peer)\n"
)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def inspect(host, container_id: str) -> dict:
    return json.loads(host.mydocker("inspect", container_id).stdout)[0]


@contextmanager
def network(host, name: str, subnet: str):
    host.mydocker("network", "create", "--subnet", subnet, name)
    try:
        yield name
    finally:
        host.mydocker("network", "rm", name, check=False)


@contextmanager
def forward_policy_drop():
    """FORWARD policy DROP for the block; the policy (and a filter table this made) restored after."""
    before = iptables_save()
    had_filter = "*filter" in before.splitlines()
    policy = "ACCEPT"
    for line in before.splitlines():
        if line.startswith(":FORWARD "):
            policy = line.split()[1]
    subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-P", "FORWARD", policy], check=True)
        if not had_filter:
            from pyroute2.nftables.main import NFTables

            nft = NFTables(nfgen_family=socket.AF_INET)
            try:
                nft.table("del", name="filter")
            finally:
                nft.close()
        assert iptables_save() == before


@contextmanager
def client_namespace(address: str, peer: str):
    """A network namespace of the test's own, linked to the host by a veth pair: host end `peer`, its end `address`."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    suffix = uuid.uuid4().hex[:6]
    host_end, client_end = f"mdt-h{suffix}", f"mdt-c{suffix}"
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not enter a new network namespace"
            time.sleep(0.01)
        netns = f"/proc/{holder.pid}/ns/net"
        for command in (
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", client_end],
            ["ip", "link", "set", client_end, "netns", str(holder.pid)],
            ["ip", "addr", "add", f"{peer}/30", "dev", host_end],
            ["ip", "link", "set", host_end, "up"],
            ["nsenter", f"--net={netns}", "ip", "addr", "add", f"{address}/30", "dev", client_end],
            ["nsenter", f"--net={netns}", "ip", "link", "set", client_end, "up"],
            ["nsenter", f"--net={netns}", "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
        yield netns
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def in_namespace(netns: str, *command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={netns}", *command], capture_output=True, text=True, timeout=timeout)


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def udp_echo(address: str, port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(2)
        for _ in range(10):
            udp.sendto(payload, (address, port))
            try:
                return udp.recvfrom(512)[0]
            except socket.timeout:
                continue
    raise AssertionError(f"no udp answer from {address}:{port}")


def wait_for(what: str, probe, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return probe()
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not answer within {timeout} s") from None
            time.sleep(0.1)


@both_cli_modes
def test_network_commands_and_clear_errors(host):
    name = unique("n")
    (subnet,) = free_subnets(1)
    assert one_line_error(host.mydocker("network", "create", name, check=False)).endswith("--subnet 10.20.0.0/24")
    for bad in ("10.1.2.3/24", "10.0.0.0/33", "banana", "10.0.0.0/31"):
        line = one_line_error(host.mydocker("network", "create", "--subnet", bad, name, check=False))
        assert "subnet" in line, line
    # A subnet the host routes already (its own LAN, say) would take the host's traffic: refused.
    routed = [n for n in host_networks() if 8 <= n.prefixlen <= 30]
    if routed:
        line = one_line_error(host.mydocker("network", "create", "--subnet", str(routed[0]), unique("n"), check=False))
        assert f"overlaps the host's route to {routed[0]}" in line, line
        assert host.mydocker("network", "ls", "-q").stdout == ""
    with network(host, name, subnet):
        listed = host.mydocker("network", "ls").stdout.splitlines()
        assert listed[0].split() == ["NAME", "DRIVER", "SUBNET", "GATEWAY", "BRIDGE"]
        gateway = str(ipaddress.IPv4Network(subnet).network_address + 1)
        assert [name, "bridge", subnet, gateway, host.bridge(name)] in [line.split() for line in listed[1:]]
        assert host.mydocker("network", "list").stdout.splitlines() == listed
        assert link_exists(host.bridge(name))
        (record,) = json.loads(host.mydocker("network", "inspect", name).stdout)
        assert record["gateway"] == gateway and record["allocations"][0]["owner"] == "gateway"
        overlap = one_line_error(host.mydocker("network", "create", "--subnet", subnet, unique("n"), check=False))
        assert "overlaps" in overlap
        assert "already in use" in one_line_error(
            host.mydocker("network", "create", "--subnet", free_subnets(1)[0], name, check=False)
        )
        for bad_port in ("80", "8080:80/sctp", "99999:80", "a:b"):
            line = one_line_error(host.mydocker("run", "--network", name, "-p", bad_port, "busybox", "true", check=False))
            assert "port" in line, line
        assert "needs a network" in one_line_error(host.mydocker("run", "-p", "8080:80", "busybox", "true", check=False))
        # --network none, as without the option: loopback only, but the files all the same.
        alone = host.mydocker("run", "--rm", "--network", "none", "busybox", "sh", "-c", "ls /sys/class/net; cat /etc/hosts")
        assert alone.stdout.split("\n")[0] == "lo" and "127.0.0.1\tlocalhost" in alone.stdout
        unknown = one_line_error(host.mydocker("run", "--network", "no-such-net", "busybox", "true", check=False))
        assert "no such network: no-such-net" in unknown
        assert host.mydocker("ps", "-a", "-q").stdout == ""

        container = host.mydocker("run", "-d", "-net", name, "busybox", "top").stdout.strip()
        refused = one_line_error(host.mydocker("network", "rm", name, check=False))
        assert f"in use by containers {container}" in refused
        host.mydocker("rm", "-f", container)
    assert not link_exists(host.bridge(name))
    assert name not in host.mydocker("network", "ls", "-q").stdout.split()
    # The seed's spelling removes several at once.
    first, second = unique("n"), unique("n")
    for network_name, subnet in zip((first, second), free_subnets(2)):
        host.mydocker("network", "create", "--driver", "bridge", "--subnet", subnet, network_name)
    assert host.mydocker("network", "remove", first, second).stdout.split() == [first, second]


@both_cli_modes
def test_containers_on_one_network_talk_and_two_networks_do_not(host):
    net_a, net_b = unique("a"), unique("b")
    subnet_a, subnet_b = free_subnets(2)
    with network(host, net_a, subnet_a), network(host, net_b, subnet_b):
        first = host.mydocker("run", "-d", "--name", unique("c"), "--network", net_a, "busybox", "top").stdout.strip()
        second = host.mydocker("run", "-d", "--network", net_a, "busybox", "top").stdout.strip()
        other = host.mydocker("run", "-d", "--network", net_b, "busybox", "top").stdout.strip()
        ips = {c: inspect(host, c)["ip"] for c in (first, second, other)}
        assert ipaddress.IPv4Address(ips[first]) in ipaddress.IPv4Network(subnet_a)
        assert ipaddress.IPv4Address(ips[other]) in ipaddress.IPv4Network(subnet_b)

        # ps shows the address; inspect shows the settings.
        ps = host.mydocker("ps").stdout
        assert all(ip in ps for ip in ips.values())
        settings = inspect(host, first)["network_settings"]
        assert settings["network"] == net_a and settings["ip_address"] == ips[first]
        assert settings["gateway"] == str(ipaddress.IPv4Network(subnet_a).network_address + 1)
        assert settings["bridge"] == host.bridge(net_a) and settings["host_interface"] == veth_name(first)

        # eth0, address, default route and lo inside; the files docker writes.
        shell = "ip addr show eth0; ip route; cat /etc/hosts /etc/hostname /etc/resolv.conf; ip link show lo"
        inside = host.mydocker("exec", first, "sh", "-c", shell).stdout
        assert f"inet {ips[first]}/24" in inside
        assert f"default via {settings['gateway']}" in inside
        assert "LOWER_UP" in inside.split("lo:")[1]
        hostname = inspect(host, first)["hostname"]
        assert f"{ips[first]}\t{hostname}" in inside and "127.0.0.1\tlocalhost" in inside

        ping = host.mydocker("exec", first, "ping", "-c", "1", "-W", "2", ips[second], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert host.mydocker("exec", second, "ping", "-c", "1", "-W", "2", settings["gateway"], check=False).returncode == 0
        isolated = host.mydocker("exec", other, "ping", "-c", "1", "-W", "1", ips[first], check=False)
        assert isolated.returncode != 0, "containers on different networks reached each other"

        host.mydocker("stop", "-t", "1", second)
        assert not link_exists(veth_name(second))
        assert "ip" not in inspect(host, second)
        host.mydocker("rm", "-f", first, second, other)
        for container in (first, second, other):
            assert not link_exists(veth_name(container))
        (record,) = json.loads(host.mydocker("network", "inspect", net_a).stdout)
        assert [a["owner"] for a in record["allocations"]] == ["gateway"]


# Once only: its scripts/up probes the CLI server, which the host fixture would count as a command.
def test_published_ports_over_tcp_and_udp_and_iptables_restored(host):
    net = unique("p")
    subnet, client_subnet = free_subnets(2, prefix=24)
    tcp_port, udp_port = free_port(), free_port()
    with forward_policy_drop():
        before = iptables_save()
        with network(host, net, subnet):
            web = host.mydocker(
                "run", "-d", "--network", net, "-p", f"{tcp_port}:80", "busybox",
                "sh", "-c", "mkdir /www && echo hello-from-mydocker > /www/index.html && exec httpd -f -p 80 -h /www",
            ).stdout.strip()
            echo = host.mydocker(
                "run", "-d", "--network", net, "-p", f"{udp_port}:53/udp", *HOST_PYTHON_VOLUMES,
                "busybox", "/usr/bin/python3", "-c", UDP_ECHO,
            ).stdout.strip()
            taken = one_line_error(
                host.mydocker("run", "-d", "--network", net, "-p", f"{tcp_port}:81", "busybox", "top", check=False)
            )
            assert f"host port {tcp_port}/tcp is already published by container {web}" in taken

            # From the host itself, over loopback (DNAT in OUTPUT).
            assert wait_for("httpd", lambda: http_get(f"http://127.0.0.1:{tcp_port}/")) == "hello-from-mydocker\n"
            assert udp_echo("127.0.0.1", udp_port, b"ping") == b"echo:ping"

            # From another namespace (DNAT in PREROUTING), through FORWARD with policy DROP.
            client_net = ipaddress.IPv4Network(client_subnet)
            peer, client = str(client_net.network_address + 1), str(client_net.network_address + 2)
            with client_namespace(client, peer) as netns:
                fetched = in_namespace(netns, "curl", "-s", "-m", "5", f"http://{peer}:{tcp_port}/")
                assert fetched.stdout == "hello-from-mydocker\n", fetched.stderr

            # Networking of running containers survives a restart of every service.
            for service in ("executor", "state", "storage"):
                pid = read_pidfile(Config.from_env(host.env).pid_path(service))
                assert pid, f"{service} has no pidfile"
                os.kill(pid, signal.SIGKILL)
            up = subprocess.run([str(REPO / "scripts/up")], env=host.env, capture_output=True, text=True, timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr
            assert http_get(f"http://127.0.0.1:{tcp_port}/") == "hello-from-mydocker\n"
            assert udp_echo("127.0.0.1", udp_port, b"again") == b"echo:again"

            # stop alone unplugs: no rule, no veth, no address.
            host.mydocker("stop", "-t", "1", web)
            assert f"ctr={web}" not in iptables_save() and not link_exists(veth_name(web))
            assert "ip" not in inspect(host, web)
            host.mydocker("rm", "-f", web, echo)
            saved = iptables_save()
            for container in (web, echo):
                assert f"ctr={container}" not in saved
                assert not link_exists(veth_name(container))
            (record,) = json.loads(host.mydocker("network", "inspect", net).stdout)
            assert [a["owner"] for a in record["allocations"]] == ["gateway"]
        # The last network gone: iptables exactly as before the first.
        assert iptables_save() == before


@both_cli_modes
def test_twenty_parallel_runs_get_distinct_addresses(host):
    net = unique("q")
    (subnet,) = free_subnets(1)
    with network(host, net, subnet):
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda _: host.mydocker("run", "-d", "--network", net, "busybox", "top", check=False), range(20)))
        ids = [r.stdout.strip() for r in results if r.returncode == 0]
        try:
            assert len(ids) == 20, [r.stderr for r in results if r.returncode != 0]
            addresses = {inspect(host, container)["ip"] for container in ids}
            assert len(addresses) == 20
            assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network(subnet) for a in addresses)
        finally:
            if ids:
                host.mydocker("rm", "-f", *ids)
        (record,) = json.loads(host.mydocker("network", "inspect", net).stdout)
        assert [a["owner"] for a in record["allocations"]] == ["gateway"]


@both_cli_modes
def test_publish_all_maps_the_image_exposed_ports_to_free_host_ports(host):
    net = unique("pa")
    (subnet,) = free_subnets(1, prefix=24)
    with network(host, net, subnet):
        base = host.mydocker("run", "-d", "busybox", "sleep", "60").stdout.strip()
        try:
            host.mydocker(
                "commit", "-c", "EXPOSE 80", "-c", "EXPOSE 53/udp",
                "-c", 'CMD ["sh", "-c", "mkdir /www && echo exposed > /www/index.html && exec httpd -f -p 80 -h /www"]',
                base, f"exposed-{net}",
            )
        finally:
            host.mydocker("rm", "-f", base)
        web = host.mydocker("run", "-d", "-P", "--network", net, f"exposed-{net}").stdout.strip()
        try:
            ports = {(p["container_port"], p.get("protocol", "PROTOCOL_TCP")): p["host_port"] for p in inspect(host, web)["ports"]}
            assert set(ports) == {(80, "PROTOCOL_TCP"), (53, "PROTOCOL_UDP")}
            assert all(1024 < port < 65536 for port in ports.values())
            assert wait_for("httpd", lambda: http_get(f"http://127.0.0.1:{ports[(80, 'PROTOCOL_TCP')]}/")) == "exposed\n"
            # -P and -p together: the explicit mapping wins for its port.
            fixed = free_port()
            both = host.mydocker("run", "-d", "-P", "-p", f"{fixed}:80", "--network", net, f"exposed-{net}", "sleep", "60").stdout.strip()
            mapped = {(p["container_port"], p.get("protocol", "PROTOCOL_TCP")): p["host_port"] for p in inspect(host, both)["ports"]}
            assert mapped[(80, "PROTOCOL_TCP")] == fixed and (53, "PROTOCOL_UDP") in mapped
            host.mydocker("rm", "-f", both)
            # Publishing needs a network, with -P as with -p.
            assert "needs a network" in one_line_error(host.mydocker("run", "-d", "-P", f"exposed-{net}", check=False))
        finally:
            host.mydocker("rm", "-f", web)
            host.mydocker("rmi", f"exposed-{net}")
