"""Network helpers of the root tests: subnets no host route uses, free host ports, iptables snapshots."""

from __future__ import annotations

import ipaddress
import random
import re
import socket
import subprocess


def iptables_save() -> str:
    """iptables-save without its timestamp comments and packet counters: what two snapshots must agree on."""
    text = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    lines = [re.sub(r" \[\d+:\d+\]$", "", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines)


def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route's destination on this host, so test subnets never shadow a real one."""
    networks = []
    with open("/proc/net/route") as routes:
        next(routes)
        for line in routes:
            fields = line.split()
            destination = ipaddress.IPv4Address(int(fields[1], 16).to_bytes(4, "little"))
            mask = ipaddress.IPv4Address(int(fields[7], 16).to_bytes(4, "little"))
            networks.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return networks


def free_subnets(count: int, prefix: int = 24) -> list[str]:
    """`count` random private subnets overlapping no route of this host nor each other."""
    taken = [n for n in host_networks() if n.prefixlen > 0]
    chosen: list[ipaddress.IPv4Network] = []
    while len(chosen) < count:
        candidate = ipaddress.IPv4Network(
            f"10.{random.randrange(64, 250)}.{random.randrange(0, 256)}.0/{prefix}", strict=False
        )
        if not any(candidate.overlaps(n) for n in taken + chosen):
            chosen.append(candidate)
    return [str(n) for n in chosen]


def free_port() -> int:
    """A host port no program here listens on (tcp and udp)."""
    while True:
        port = random.randrange(20000, 40000)
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                tcp.bind(("0.0.0.0", port))
                udp.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
