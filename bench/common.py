"""Helpers shared by the benchmarks: timing summaries and a temp state service."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def summary(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    spread = statistics.stdev(ms) if len(ms) > 1 else 0.0
    return f"{label:<40} n={len(ms):<5} mean={statistics.mean(ms):8.2f} ms  sd={spread:7.2f}  p95={p95:8.2f}"


def pressure() -> str:
    """The load average and the IO pressure (some avg60): other work on the host skews every figure."""
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with contextlib.suppress(FileNotFoundError):
        io = Path("/proc/pressure/io").read_text().split()[2].removeprefix("avg60=")
        return f"load {load}, io pressure {io}%"
    return f"load {load}"


@contextlib.contextmanager
def temp_roots() -> Iterator[tuple[Path, Path]]:
    base = Path(tempfile.mkdtemp(prefix="mdk-bench-", dir="/tmp"))
    try:
        yield base / "root", base / "run"
    finally:
        shutil.rmtree(base, ignore_errors=True)
