"""Scale: N running busybox containers; ps, ps -a, inspect, stop and rm -f of one at 10 and at N; rm -f of all in parallel; memory per container."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import LAUNCHER, pressure, remove_roots, run_bench, say, start_services, stop_services
from bench.shim_memory import pss_kib
from services.common.config import Config
from services.common.ctl import running_services

IDLE_COMMAND = ("busybox", "sleep", "100000000")


def timed(env: dict[str, str], *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    result = subprocess.run([LAUNCHER, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return time.perf_counter() - started, result


def checked(env: dict[str, str], *args: str) -> float:
    seconds, result = timed(env, *args)
    if result.returncode != 0:
        raise RuntimeError(f"mydocker {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return seconds


def start_many(env: dict[str, str], count: int, workers: int) -> list[str]:
    """`count` idle containers started by `workers` parallel CLIs; RuntimeError on the first failure."""

    def one(_: int) -> str:
        result = subprocess.run([LAUNCHER, "run", "-d", *IDLE_COMMAND], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"run -d failed: {result.stderr.strip()}")
        return result.stdout.strip()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def median_ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.1f} ms"


def single_ops(env: dict[str, str], some_id: str, rounds: int) -> dict[str, list[float]]:
    """ps, ps -a, inspect of one, stop of a fresh one, rm -f of a fresh one: `rounds` timings each."""
    found: dict[str, list[float]] = {"ps": [], "ps -a": [], "inspect": [], "stop": [], "rm -f": []}
    for _ in range(rounds):
        found["ps"].append(checked(env, "ps"))
        found["ps -a"].append(checked(env, "ps", "-a"))
        found["inspect"].append(checked(env, "inspect", some_id))
        # top ends on SIGTERM, so stop times the stop path rather than its timeout.
        fresh = subprocess.run([LAUNCHER, "run", "-d", "busybox", "top"], env=env, capture_output=True, text=True, check=True).stdout.strip()
        found["stop"].append(checked(env, "stop", fresh))
        checked(env, "rm", fresh)
        fresh = subprocess.run([LAUNCHER, "run", "-d", *IDLE_COMMAND], env=env, capture_output=True, text=True, check=True).stdout.strip()
        found["rm -f"].append(checked(env, "rm", "-f", fresh))
    return found


def services_rss_kib(config: Config) -> int:
    total = 0
    for pid in running_services(config).values():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def shim_pids(env: dict[str, str], ids: list[str]) -> list[int]:
    import json

    pids = []
    for start in range(0, len(ids), 100):
        out = subprocess.run([LAUNCHER, "inspect", *ids[start:start + 100]], env=env, capture_output=True, text=True, check=True).stdout
        pids += [int(entry["live"]["shim_pid"]) for entry in json.loads(out) if entry.get("live", {}).get("shim_pid")]
    return pids


def remove_all(env: dict[str, str], ids: list[str], workers: int, batch: int) -> tuple[float, list[str]]:
    """rm -f of every id, `batch` ids per CLI, `workers` CLIs at a time: (seconds, error lines)."""
    batches = [ids[i:i + batch] for i in range(0, len(ids), batch)]

    def one(chunk: list[str]) -> list[str]:
        _, result = timed(env, "rm", "-f", *chunk)
        return [] if result.returncode == 0 else result.stderr.strip().splitlines()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        errors = [line for lines in pool.map(one, batches) for line in lines]
    return time.perf_counter() - started, errors


def bench(args, base: Path, state: dict) -> None:
    root, run, env = start_services(base, state)
    config = Config(root=root, run=run)
    say(f"scale: {args.containers} containers ({' '.join(IDLE_COMMAND)}), {pressure()}")
    rss_before = services_rss_kib(config)
    ids = start_many(env, 10, args.workers)
    at_ten = single_ops(env, ids[0], args.rounds)
    rss_ten = services_rss_kib(config)
    started = time.perf_counter()
    ids += start_many(env, args.containers - 10, args.workers)
    say(f"started {args.containers - 10} more with {args.workers} parallel CLIs in {time.perf_counter() - started:.1f} s")
    at_n = single_ops(env, ids[0], args.rounds)
    rss_n = services_rss_kib(config)
    say(f"{'':10} {'at 10':>12} {'at ' + str(args.containers):>12}")
    for name in at_ten:
        say(f"{name:10} {median_ms(at_ten[name]):>12} {median_ms(at_n[name]):>12}")
    shims = shim_pids(env, ids)
    shim_pss = statistics.mean(pss_kib(pid) for pid in shims) if shims else 0.0
    services_share = (rss_n - rss_ten) / max(1, args.containers - 10)
    say(f"memory per idle container: shim PSS {shim_pss / 1024:.2f} MiB + services {services_share / 1024:.3f} MiB "
        f"(services' RSS {rss_before / 1024:.0f} MiB empty, {rss_ten / 1024:.0f} MiB at 10, {rss_n / 1024:.0f} MiB at {args.containers})")
    seconds, errors = remove_all(env, ids, args.workers, args.batch)
    say(f"rm -f of all {len(ids)}: {seconds:.1f} s ({seconds / len(ids) * 1000:.0f} ms each), {args.workers} CLIs x {args.batch} ids, "
        f"{len(errors)} errors" + (f": {errors[:3]}" if errors else ""))


def cleanup(base: Path, state: dict) -> None:
    stop_services(state.get("env"), state.get("up", False))
    remove_roots(base, state["parent"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4, help="parallel CLIs for starting and removing")
    parser.add_argument("--batch", type=int, default=25, help="ids per rm -f")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.containers < 10:
        parser.error("--containers must be at least 10")
    return run_bench(bench, cleanup, args)


if __name__ == "__main__":
    raise SystemExit(main())
