"""Wall time of CLI invocations: `mydocker version` (no service) and `mydocker ps -a` (one state call).

Each through the warm CLI server, and in-process (MYDOCKER_CLI_SERVER=off), interleaved run by run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from bench.common import REPO, summary, temp_roots


def run_times(commands: dict[str, tuple[list[str], dict[str, str]]], runs: int) -> dict[str, list[float]]:
    """{label: (argv, env)} run in turn, one of each per round, so both see the same host conditions."""
    for argv, env in commands.values():
        subprocess.run(argv, env=env, check=True, capture_output=True)  # warm caches and bytecode
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, (argv, env) in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, env=env, check=True, capture_output=True)
            times[label].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    launcher = str(REPO / "mydocker")
    with temp_roots() as (root, run):
        env = {**os.environ, "MYDOCKER_ROOT": str(root), "MYDOCKER_RUN": str(run)}
        served = {**env, "MYDOCKER_CLI_SERVER": "require"}
        alone = {**env, "MYDOCKER_CLI_SERVER": "off"}
        python = str(REPO / ".venv" / "bin" / "python")
        subprocess.run([python, "-m", "services.common.ctl", "up", "state", "cli"], env=env, cwd=REPO, check=True)
        try:
            commands = {
                "mydocker version (CLI server)": ([launcher, "version"], served),
                "mydocker version (in-process)": ([launcher, "version"], alone),
                "mydocker ps -a (CLI server)": ([launcher, "ps", "-a"], served),
                "mydocker ps -a (in-process)": ([launcher, "ps", "-a"], alone),
            }
            for label, times in run_times(commands, args.runs).items():
                print(summary(label, times))
        finally:
            subprocess.run([python, "-m", "services.common.ctl", "down", "cli", "state"], env=env, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
