"""Helpers shared by the benchmarks: timing summaries, services on temp roots, large images built without network."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import statistics
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def summary(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    spread = statistics.stdev(ms) if len(ms) > 1 else 0.0
    return f"{label:<40} n={len(ms):<5} mean={statistics.mean(ms):8.2f} ms  sd={spread:7.2f}  p95={p95:8.2f}"


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 9 // 10) - 1)]


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


# --- large images without network: busybox plus this host's files ---------------------------------

# Where the image's files come from, in order: many small files first, then large ones up to the size.
SMALL_SOURCES = ("/usr/share",)
LARGE_SOURCES = ("/usr/lib/x86_64-linux-gnu", "/usr/bin")
SMALL_FILE_MAX = 16 * 1024
LARGE_FILE_MAX = 4 << 20


def _host_files(sources: tuple[str, ...], max_size: int) -> Iterator[str]:
    """Readable regular files up to `max_size` and symlinks below `sources` (sorted walk, symlinked dirs not followed)."""
    for source in sources:
        for directory, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size <= max_size and os.access(path, os.R_OK)):
                    yield path


class _LayerTar:
    """One layer tar being written: host paths added as root-owned entries, their parent directories first."""

    def __init__(self, out: Path):
        self.archive = tarfile.open(out, "w", format=tarfile.PAX_FORMAT)
        self.directories: set[str] = set()

    def add(self, path: str, arcname: str) -> int:
        parents = []
        parent = os.path.dirname(arcname)
        while parent and parent not in self.directories:
            parents.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(parents):
            self._add_entry("/" + directory, directory)
            self.directories.add(directory)
        return self._add_entry(path, arcname)

    def _add_entry(self, path: str, arcname: str) -> int:
        info = self.archive.gettarinfo(path, arcname=arcname)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if info.isfile():
            with open(path, "rb") as handle:
                self.archive.addfile(info, handle)
            return info.size
        self.archive.addfile(info)
        return 0


def build_layer_tars(busybox_tar: Path, outs: list[Path], target_bytes: int, target_files: int) -> tuple[int, int]:
    """busybox plus host files as rootfs layer tars owned by 0:0; returns (files, bytes of file data).

    With one out, everything is in it. With more, the first holds busybox and the host files are
    spread over the others by size (small files first, so the early layers hold many small files and
    the last ones a few large ones).
    """
    files = data = 0
    taken: set[str] = set()
    layers = [_LayerTar(out) for out in outs]
    try:
        first = layers[0]
        with tarfile.open(busybox_tar) as source:
            for member in source:
                first.archive.addfile(member, source.extractfile(member) if member.isfile() else None)
                name = member.name.rstrip("/").removeprefix("./")
                (first.directories if member.isdir() else taken).add(name)
                files += member.isfile()
                data += member.size if member.isfile() else 0
        spread = layers[1:] or layers
        start = data if len(layers) > 1 else 0

        def layer_for(held: int) -> _LayerTar:
            share = (held - start) * len(spread) // max(1, target_bytes - start)
            return spread[min(len(spread) - 1, share)]

        def add(path: str) -> int:
            arcname = path.lstrip("/")
            if arcname in taken:
                return 0  # a busybox applet of the same name stays
            taken.add(arcname)
            return layer_for(data).add(path, arcname)

        small_files = int(target_files * 0.9)
        small_bytes = target_bytes // 2
        for path in _host_files(SMALL_SOURCES, SMALL_FILE_MAX):
            if files >= small_files or data >= small_bytes:
                break
            data += add(path)
            files += 1
        for path in _host_files(LARGE_SOURCES, LARGE_FILE_MAX):
            if data >= target_bytes:
                break
            data += add(path)
            files += 1
    finally:
        for layer in layers:
            layer.archive.close()
    return files, data


def build_image_tar(busybox_tar: Path, out: Path, target_bytes: int, target_files: int) -> tuple[int, int]:
    """busybox plus host files, as one rootfs tar owned by 0:0; returns (files, bytes of file data)."""
    return build_layer_tars(busybox_tar, [out], target_bytes, target_files)


def start_services(base: Path, state: dict) -> tuple[Path, Path, dict[str, str]]:
    """scripts/up on temp roots below `base`, containers under the cgroup parent state["parent"]: (root, run, env)."""
    import os
    import subprocess

    root, run = base / "root", base / "run"
    env = {**os.environ, "MYDOCKER_ROOT": str(root), "MYDOCKER_RUN": str(run), "MYDOCKER_CGROUP_PARENT": state["parent"]}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    state["env"] = env
    subprocess.run([str(REPO / "scripts" / "up")], env=env, check=True, capture_output=True)
    state["up"] = True
    return root, run, env


def run_bench(bench, cleanup, args) -> int:
    """bench(args, base, state) on a fresh temp base, then cleanup(base, state) whatever happened; exit status 0."""
    import uuid

    base = Path(tempfile.mkdtemp(prefix="mdk-bench-", dir="/tmp"))
    state: dict = {"parent": f"mdk-bench-{uuid.uuid4().hex[:8]}", "stack": contextlib.ExitStack()}
    try:
        bench(args, base, state)
    finally:
        cleanup(base, state)
    return 0
