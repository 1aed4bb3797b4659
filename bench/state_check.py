"""What the state database's check costs at start-up: quick_check against integrity_check, 1,000 and 10,000 records."""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from services.state.core import StateCore
from services.state.model import ContainerSpec
from services.state.store import Store


def filled(path: Path, containers: int) -> None:
    """`containers` records about the size of a real run's (argv, env, volumes), checkpointed into the main file."""
    with Store(path) as store:
        core = StateCore(store)
        for index in range(containers):
            core.create_container(
                ContainerSpec(
                    image="busybox", command=["sh", "-c", "sleep 1000; echo " + "x" * 200], env=["A=B"] * 10, name=f"c{index}"
                )
            )
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def best_of(path: Path, pragma: str, rounds: int) -> float:
    connection = sqlite3.connect(path)
    try:
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            connection.execute(f"PRAGMA {pragma}").fetchall()
            best = min(best, time.perf_counter() - started)
        return best
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="mdk-bench-check-") as base:
            path = Path(base) / "state.db"
            filled(path, size)
            quick = best_of(path, "quick_check(1)", args.rounds)
            full = best_of(path, "integrity_check(1)", args.rounds)
            print(
                f"{size} containers ({path.stat().st_size / 1e6:.1f} MB): "
                f"quick_check {quick * 1000:.1f} ms, integrity_check {full * 1000:.1f} ms (best of {args.rounds})"
            )


if __name__ == "__main__":
    main()
