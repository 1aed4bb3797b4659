"""What a process's move into a cgroup costs: cgroup.procs against v1's `tasks`, after a quiet spell and right after another move."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from services.executor.cgroups import DEFAULT_CGROUP_ROOT, detect_cgroup_mode, parse_proc_cgroup

HIERARCHY = "pids"


def move(directory: Path, name: str) -> float:
    """Milliseconds to move ourselves (we have one thread) into `directory` by writing "0" to its file `name`."""
    started = time.perf_counter()
    fd = os.open(directory / name, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
    return (time.perf_counter() - started) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quiet-ms", type=float, default=300.0, help="pause before each timed move")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: it makes two cgroups and moves itself between them", file=sys.stderr)
        return 1
    if detect_cgroup_mode() == "v2":
        print("cgroup v2 here: there is no `tasks` file to compare (v2 moves go through cgroup.procs)", file=sys.stderr)
        return 1
    hierarchy = DEFAULT_CGROUP_ROOT / HIERARCHY
    own = hierarchy / parse_proc_cgroup(Path("/proc/self/cgroup").read_text())[HIERARCHY].lstrip("/")
    base = own / f"mdk-bench-move-{uuid.uuid4().hex[:8]}"
    sides = (base / "a", base / "b")
    for directory in (base, *sides):
        directory.mkdir()
    figures: dict[str, list[float]] = {}
    try:
        for index in range(args.runs):
            for name in ("cgroup.procs", "tasks"):
                time.sleep(args.quiet_ms / 1e3)
                figures.setdefault(f"{name}, after {args.quiet_ms:.0f} ms quiet", []).append(move(sides[index % 2], name))
                figures.setdefault(f"{name}, right after another move", []).append(move(sides[(index + 1) % 2], name))
    finally:
        move(own, "cgroup.procs")
        for directory in (*sides, base):
            directory.rmdir()
    print(f"cgroup v1 ({hierarchy}), {args.runs} runs, load {os.getloadavg()[0]:.2f}")
    print(f"{'':40} {'median':>8} {'p90':>8}  (ms)")
    for label, values in figures.items():
        values.sort()
        print(f"{label:40} {statistics.median(values):8.2f} {values[max(int(len(values) * 0.9) - 1, 0)]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
