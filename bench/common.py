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


LAUNCHER = REPO / "mydocker"


def say(text: str) -> None:
    print(text, flush=True)


def mydocker(env: dict[str, str], *args: str) -> str:
    """./mydocker ARGS with `env`; RuntimeError naming the command when it fails."""
    import subprocess

    result = subprocess.run([LAUNCHER, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mydocker {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def stop_services(env: dict[str, str] | None, up: bool) -> None:
    """Remove every container of a benchmark's services, then stop them."""
    import subprocess

    if env is None or not up:
        return
    ids = subprocess.run([LAUNCHER, "ps", "-a", "-q"], env=env, capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run([LAUNCHER, "rm", "-f", *ids], env=env, capture_output=True)
    subprocess.run([str(REPO / "scripts" / "down")], env=env, capture_output=True)


def remove_roots(base: Path, cgroup_parent: str) -> None:
    """The benchmark's cgroup parent, mounts left below `base` (none expected), then `base` itself."""
    import subprocess

    from services.executor.cgroup_layout import CgroupLayout

    if not CgroupLayout.from_host(parent=cgroup_parent).remove_parent():
        say(f"warning: cgroup parent {cgroup_parent} is still in use and was not removed")
    with open("/proc/self/mountinfo") as mountinfo:
        left = [line.split()[4] for line in mountinfo if line.split()[4].startswith(str(base))]
    for target in reversed(left):
        subprocess.run(["umount", "-l", target], check=False)
    if left:
        say(f"warning: mounts were left below {base} (unmounted now): {left}")
    shutil.rmtree(base, ignore_errors=True)
