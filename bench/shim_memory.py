"""PSS of idle container shims: N `sleep 1000` containers on a busybox rootfs, read from /proc/<pid>/smaps_rollup."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from services.common.config import Config
from services.executor.model import CreateSpec, ProcessSpec, StdioMode
from services.executor.servicer import build_core
from tests.busybox import busybox_rootfs


def rollup_kib(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/smaps_rollup (Rss, Pss, Private_Dirty, ...)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    if "Pss" not in fields:
        raise RuntimeError(f"no Pss line for {pid}")
    return fields


def pss_kib(pid: int) -> int:
    return rollup_kib(pid)["Pss"]


def private_kib(pid: int) -> int:
    fields = rollup_kib(pid)
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def mib(kib: float) -> str:
    return f"{kib / 1024:.2f} MiB"


def report(label: str, shims: list[int]) -> None:
    values = [pss_kib(pid) for pid in shims]
    private = [private_kib(pid) for pid in shims]
    print(f"{label}: PSS per shim mean {mib(statistics.mean(values))}, max {mib(max(values))}, min {mib(min(values))}; "
          f"private (USS) mean {mib(statistics.mean(private))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to let the shims go idle")
    parser.add_argument("--stdio", choices=[m.value for m in StdioMode], default=StdioMode.LOG.value,
                        help="log (`run -d`, the default) or attach (`run -it`, not attached here)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: namespaces, mounts and cgroups", file=sys.stderr)
        return 1

    base = Path(tempfile.mkdtemp(prefix="mdk-bench-", dir="/tmp"))
    parent = f"mdk-bench-{uuid.uuid4().hex[:8]}"
    core = build_core(Config(root=base / "root", run=base / "run"), cgroup_parent=parent)
    ids = [f"{4000000000 + n}" for n in range(args.containers)]
    created: list[str] = []
    try:
        with busybox_rootfs(base / "root") as rootfs:
            try:
                for container_id in ids:
                    spec = CreateSpec(container_id, "bench", str(rootfs), ProcessSpec(args=("sleep", "1000")),
                                      stdio_mode=StdioMode(args.stdio))
                    core.create(spec)
                    created.append(container_id)
                    core.start(container_id)
                time.sleep(args.settle)
                shims = [core.get(container_id).shim_pid for container_id in ids]
                print(f"idle shims: {len(shims)} ({args.stdio} mode)")
                # Shims are forked from the executor's launcher and share pages with it and with each other:
                # PSS splits those pages among all of them. The launcher is one per executor, not per shim,
                # so the figure that counts is without it (an executor restarted or stopped since).
                launcher = core.launcher_pid
                launcher_pss = pss_kib(launcher)
                report("with the launcher running", shims)
                print(f"  the launcher (one per executor): {mib(launcher_pss)} PSS; shims and launcher together: "
                      f"{mib((sum(pss_kib(pid) for pid in shims) + launcher_pss) / len(shims))} per shim")
                core.close()
                time.sleep(0.5)
                report("with the launcher stopped", shims)
                bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
                try:
                    time.sleep(1.0)
                    print(f"for scale, a bare interpreter here: {mib(pss_kib(bare.pid))} PSS")
                finally:
                    bare.kill()
                    bare.wait()
            finally:
                for container_id in created:
                    core.delete(container_id, force=True)
    finally:
        core.close()
        core.layout.remove_parent()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
