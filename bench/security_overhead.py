"""What the security profile costs a run: `run --rm busybox /bin/true` before issue #10 and after, interleaved.

Each checkout given with --before (default: none) gets its own services on private roots (its own
scripts/up and .venv), and the current checkout runs with the default profile, with seccomp
unconfined, and with --privileged; round by round, so every variant sees the same host. Also the
executor's cost of compiling a seccomp filter (first container of a profile) against a cache hit.
As root; removes its roots, containers and cgroups.

    .venv/bin/python -m bench.security_overhead --before /path/to/older/checkout --runs 30
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, summary, temp_roots
from services.executor.cgroup_layout import CgroupLayout


@dataclass
class Checkout:
    """One tree's launcher and the environment pointing it at its own services."""

    tree: Path
    env: dict[str, str]

    def mydocker(self, *args: str) -> None:
        subprocess.run([str(self.tree / "mydocker"), *args], env=self.env, check=True, capture_output=True)

    def script(self, name: str) -> None:
        subprocess.run([str(self.tree / "scripts" / name)], env=self.env, check=True, capture_output=True)


def checkout(tree: Path, root: Path, run: Path, parent: str) -> Checkout:
    env = {**os.environ, "MYDOCKER_ROOT": str(root), "MYDOCKER_RUN": str(run), "MYDOCKER_CGROUP_PARENT": parent}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return Checkout(tree, env)


def timed_run(target: Checkout, options: tuple[str, ...]) -> float:
    start = time.perf_counter()
    target.mydocker("run", "--rm", *options, "busybox", "/bin/true")
    return time.perf_counter() - start


def compile_cost(repetitions: int = 20) -> tuple[float, float]:
    """Median seconds of compiling Docker's default profile, and of a SeccompCache hit."""
    import tempfile

    from services.executor import seccomp
    from services.executor.seccomp_default import default_profile

    profile = default_profile()
    caps = frozenset({"CAP_CHOWN", "CAP_KILL"})
    compiles = []
    for _ in range(repetitions):
        start = time.perf_counter()
        seccomp.compile_programs(profile, caps, strict_names=False)
        compiles.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="mdk-bench-") as directory:
        cache = seccomp.SeccompCache(Path(directory))
        cache.program_file(profile, caps, strict_names=False)
        hits = []
        for _ in range(repetitions):
            start = time.perf_counter()
            cache.program_file(profile, caps, strict_names=False)
            hits.append(time.perf_counter() - start)
    return statistics.median(compiles), statistics.median(hits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, action="append", default=[], help="an older checkout to compare with")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    parent = f"mdk-bench-{uuid.uuid4().hex[:8]}"
    trees = [(f"before ({tree.name})", tree.resolve()) for tree in args.before] + [("after", REPO)]
    checkouts: dict[str, Checkout] = {}
    with contextlib.ExitStack() as cleanup:
        for index, (label, tree) in enumerate(trees):
            root, run = cleanup.enter_context(temp_roots())
            cleanup.callback(CgroupLayout.from_host(parent=f"{parent}-{index}").remove_parent)
            target = checkout(tree, root, run, f"{parent}-{index}")
            # Registered before the start, so a half-started tree is stopped too.
            cleanup.callback(subprocess.run, [str(tree / "scripts" / "down")], env=target.env, capture_output=True)
            target.script("up")
            checkouts[label] = target
        variants = {label: (target, ()) for label, target in checkouts.items()}
        variants["after, seccomp=unconfined"] = (checkouts["after"], ("--security-opt", "seccomp=unconfined"))
        variants["after, --privileged"] = (checkouts["after"], ("--privileged",))
        times: dict[str, list[float]] = {label: [] for label in variants}
        for round_number in range(args.warmup + args.runs):
            for label, (target, options) in variants.items():
                took = timed_run(target, options)
                if round_number >= args.warmup:
                    times[label].append(took)
        print(f"run --rm busybox /bin/true, {args.runs} interleaved rounds:")
        for label, seconds in times.items():
            print(f"  {summary(label, seconds)}  median={statistics.median(seconds) * 1000:7.2f} ms")
        compile_seconds, hit_seconds = compile_cost()
        print(f"seccomp: compiling Docker's default profile {compile_seconds * 1000:.1f} ms (once per profile "
              f"and capability set), a cache hit {hit_seconds * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
