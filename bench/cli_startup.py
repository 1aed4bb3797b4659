"""Wall time of CLI invocations: `mydocker version` (no service) and `mydocker ps -a` (one state call)."""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from bench.common import REPO, summary, temp_roots


def run_times(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    subprocess.run(argv, env=env, check=True, capture_output=True)  # warm caches and bytecode
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    launcher = str(REPO / "mydocker")
    with temp_roots() as (root, run):
        env = {**os.environ, "MYDOCKER_ROOT": str(root), "MYDOCKER_RUN": str(run)}
        python = str(REPO / ".venv" / "bin" / "python")
        subprocess.run([python, "-m", "services.common.ctl", "up", "state"], env=env, cwd=REPO, check=True)
        try:
            print(summary("mydocker version", run_times([launcher, "version"], env, args.runs)))
            print(summary("mydocker ps -a", run_times([launcher, "ps", "-a"], env, args.runs)))
        finally:
            subprocess.run([python, "-m", "services.common.ctl", "down", "state"], env=env, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
