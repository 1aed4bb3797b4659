"""What a network costs a container: `run -d` and `rm -f` without a network, on one, and with a published port.

Interleaved round by round on private roots (scripts/up with MYDOCKER_ROOT/RUN), so all three see the
same host; also `network create` and `network rm`. As root; leaves no network, rule or cgroup behind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
import uuid

from bench.common import REPO, summary, temp_roots
from services.executor.cgroup_layout import CgroupLayout
from tests.netutil import free_port, free_subnets


def mydocker(env: dict[str, str], *args: str) -> str:
    return subprocess.run([str(REPO / "mydocker"), *args], env=env, check=True, capture_output=True, text=True).stdout


def timed(env: dict[str, str], *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    out = mydocker(env, *args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    parent = f"mdk-bench-{uuid.uuid4().hex[:8]}"
    with temp_roots() as (root, run):
        env = {**os.environ, "MYDOCKER_ROOT": str(root), "MYDOCKER_RUN": str(run), "MYDOCKER_CGROUP_PARENT": parent}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([str(REPO / "scripts/up")], env=env, check=True, capture_output=True)
        network = f"bench{uuid.uuid4().hex[:6]}"
        try:
            (subnet,) = free_subnets(1, prefix=16)
            create_times, remove_times = [], []
            for _ in range(5):
                create_times.append(timed(env, "network", "create", "--subnet", subnet, network)[0])
                remove_times.append(timed(env, "network", "rm", network)[0])
            mydocker(env, "network", "create", "--subnet", subnet, network)
            port = free_port()
            variants = {
                "no network": (),
                "--network": ("--network", network),
                "--network -p": ("--network", network, "-p", f"{port}:80"),
            }
            runs: dict[str, list[float]] = {label: [] for label in variants}
            removes: dict[str, list[float]] = {label: [] for label in variants}
            for round_number in range(args.runs + 2):
                for label, options in variants.items():
                    took, out = timed(env, "run", "-d", *options, "busybox", "top")
                    gone = timed(env, "rm", "-f", out.strip())[0]
                    if round_number >= 2:  # the first rounds warm caches
                        runs[label].append(took)
                        removes[label].append(gone)
            for label in variants:
                print(summary(f"run -d {label}", runs[label]), f" median={statistics.median(runs[label]) * 1000:.1f} ms")
                print(summary(f"rm -f ({label})", removes[label]), f" median={statistics.median(removes[label]) * 1000:.1f} ms")
            print(summary("network create", create_times), f" median={statistics.median(create_times) * 1000:.1f} ms")
            print(summary("network rm (the last one)", remove_times), f" median={statistics.median(remove_times) * 1000:.1f} ms")
        finally:
            subprocess.run([str(REPO / "mydocker"), "network", "rm", network], env=env, capture_output=True)
            subprocess.run([str(REPO / "scripts/down")], env=env, capture_output=True)
            CgroupLayout.from_host(parent=parent).remove_parent()


if __name__ == "__main__":
    main()
