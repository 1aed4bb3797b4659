"""Address allocation at scale: the lowest free address in a crowded /16, and 300 allocations through the state core."""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
import time
from pathlib import Path

from bench.common import summary
from services.state import ipam
from services.state.core import StateCore
from services.state.model import ContainerSpec
from services.state.store import Store


def lowest_free_in_crowded_slash_16(rounds: int) -> list[float]:
    """Each round: the one free address after 65,000 used ones (the worst case short of a full /16)."""
    subnet = ipaddress.ip_network("10.1.0.0/16")
    first = int(subnet.network_address) + 1
    used = set(range(first, first + 65_000))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        assert ipam.lowest_free_address(subnet, used) == first + 65_000
        times.append(time.perf_counter() - started)
    return times


def allocations_on_slash_16(count: int) -> list[float]:
    """`count` containers each given an address in one /16 network, on a real (fsynced) SQLite store."""
    with tempfile.TemporaryDirectory(prefix="mdk-bench-ipam-") as base:
        with Store(Path(base) / "state.db") as store:
            core = StateCore(store)
            core.create_network("big", subnet="10.8.0.0/16")
            containers = [core.create_container(ContainerSpec(image="busybox", command=["sh"])) for _ in range(count)]
            times = []
            for container in containers:
                started = time.perf_counter()
                core.allocate_address("big", container.id)
                times.append(time.perf_counter() - started)
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--allocations", type=int, default=300)
    args = parser.parse_args()
    print(summary("lowest free address, /16 with 65,000 used", lowest_free_in_crowded_slash_16(args.rounds)))
    print(summary(f"AllocateAddress x{args.allocations} on a /16 (core, real store)", allocations_on_slash_16(args.allocations)))


if __name__ == "__main__":
    main()
