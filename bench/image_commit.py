"""`mydocker commit` against `docker commit` of the same 1 MiB change to a ~120 MB, ~10k-file image, interleaved.

Both tools get the same image: a rootfs tar built without network (busybox for the shell, plus files of
this host's /usr/share, /usr/lib/x86_64-linux-gnu and /usr/bin until ~120 MB and ~10k files), given to
`mydocker import` and to `docker import` of a private dockerd (tests/dockerd.py: own mount namespace,
no iptables, no bridge, temp data root under /tmp/mdk-dkr-*). Each round, for each tool in turn
(the order alternates round by round): start a container (`sleep`), write a 1 MiB file in it with exec,
sync, then time `commit` alone. Reported: median and p90 of each, and what mydocker's commit writes (the
new layer blob, the tag file, and the storage service's write_bytes from /proc/<pid>/io; dockerd's and
its containerd's beside it). The goal (issue #11): mydocker's commit takes at most docker's time.

As root. Everything it made (containers, images, services, the private dockerd, temp roots, cgroups) is
removed at the end, bulk deletes last: nothing is timed after one (this journal-less ext4 creates files
2-10x slower right after a big delete).

    .venv/bin/python -m bench.image_commit --runs 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import build_image_tar, mydocker, p90, pressure, remove_roots, run_bench, say, start_services, stop_services

CHANGE_BYTES = 1 << 20


# --- statistics -----------------------------------------------------------------------------------


def row(label: str, seconds: list[float]) -> str:
    return f"  {label:<34} median {statistics.median(seconds):7.3f} s   p90 {p90(seconds):7.3f} s   n={len(seconds)}"


def write_bytes(pids: list[int]) -> int:
    """Sum of write_bytes (bytes sent to the block layer on their behalf) of live processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total



# --- where mydocker's commit goes --------------------------------------------------------------------


def server_seconds(log: Path, names: list[str]) -> dict[str, list[float]]:
    """The storage service's own times for each named commit, from its log: the whole commit ("committed ...
    in N.NNNs") and the unpacking of its new layer ("extracted image "NAME" ... in N.NNs")."""
    patterns = {
        "commit": re.compile(r"committed \d+ as (\S+) \(.*\): a \d+-byte layer in ([0-9.]+)s"),
        "unpack": re.compile(r'extracted image "([^"]+)" into .*: \d+ bytes in ([0-9.]+)s'),
    }
    found: dict[str, dict[str, float]] = {key: {} for key in patterns}
    for line in log.read_text(errors="replace").splitlines():
        for key, pattern in patterns.items():
            match = pattern.search(line)
            if match:
                found[key][match.group(1)] = float(match.group(2))
    return {key: [values[name] for name in names if name in values] for key, values in found.items()}


def timed_write(scratch: Path, write) -> tuple[float, float]:
    """(seconds to write, seconds to fsync) of `write(handle)` into a new file in `scratch` (kept: no deletes here)."""
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / f"probe-{uuid.uuid4().hex[:8]}", "xb") as handle:
        start = time.perf_counter()
        write(handle)
        handle.flush()
        written = time.perf_counter()
        os.fsync(handle.fileno())
        return written - start, time.perf_counter() - written


def cached_share(path: Path) -> str:
    """How much of a file is in the page cache, in percent (util-linux fincore; "?" without it)."""
    if shutil.which("fincore") is None:
        return "?"
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)], capture_output=True, text=True)
    resident, size = (int(value) for value in out.stdout.split())
    return f"{100.0 * resident / max(1, size):.0f}%"


def commit_parts(root: Path, image_id: str, upper: Path, scratch: Path, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """The two big steps of a commit, in this process with the service's own code, each written then fsynced:
    the layer tar of a committed container's upper dir, and the tag file (a docker-archive whose parent
    blobs are copied with copy_file_range)."""
    from services.storage import diff
    from services.storage.archive_write import ArchiveImage, write_docker_archive
    from services.storage.content import ContentStore
    from services.storage.imagedb import ImageDB
    from services.storage.paths import StoragePaths

    paths = StoragePaths(root.resolve())
    record = ImageDB(paths).get(image_id)
    content = ContentStore(paths.blobs)
    parts: dict[str, list[tuple[float, float]]] = {"layer tar of the upper dir": [], "tag file (docker-archive)": []}
    cached: set[str] = set()  # how much of each parent blob the page cache held before a tag file was written

    def write_upper_layer(handle) -> None:
        upper_fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
        try:
            diff.write_layer(upper_fd, handle)
        finally:
            os.close(upper_fd)

    def write_tag_file(handle) -> None:
        write_docker_archive(handle, [ArchiveImage(record.id, record.layers, ("probe",))], content)

    for _ in range(repeats):
        os.sync()

        parts["layer tar of the upper dir"].append(timed_write(scratch, write_upper_layer))
        os.sync()
        cached.add(", ".join(cached_share(content.path(layer.digest)) for layer in record.layers))
        parts["tag file (docker-archive)"].append(timed_write(scratch, write_tag_file))
    say(f"  the image's blobs in the page cache before each tag file: {' / '.join(sorted(cached))} (util-linux fincore)")
    return parts


# --- the benchmark --------------------------------------------------------------------------------



def change_command(round_number: int) -> tuple[str, ...]:
    """What exec runs in the container: the round's 1 MiB file."""
    return ("sh", "-c", f"head -c {CHANGE_BYTES} /dev/urandom > /bench-change-{round_number}.bin")


def bench(args: argparse.Namespace, base: Path, state: dict) -> None:
    from services.common.config import Config
    from services.common.ctl import service_pid
    from tests.dockerd import descendants, private_dockerd

    root, run, env = start_services(base, state)

    image_tar = base / "image.tar"
    started = time.perf_counter()
    files, data = build_image_tar(root / "image" / "busybox.tar", image_tar, args.image_mib << 20, args.image_files)
    say(f"image: {files} files, {data / 2**20:.0f} MiB of file data, tar {image_tar.stat().st_size / 2**20:.0f} MiB "
        f"(built in {time.perf_counter() - started:.1f} s)")

    daemon = state["stack"].enter_context(private_dockerd())
    driver_status = dict(json.loads(daemon.cli("info", "--format", "{{json .DriverStatus}}").stdout) or [])
    say(f"private dockerd {daemon.version}, storage driver {daemon.storage_driver}, "
        f"native overlay diff: {driver_status.get('Native Overlay Diff', 'n/a')}")
    image = "bench-large"
    started = time.perf_counter()
    mydocker(env, "import", str(image_tar), image)
    say(f"mydocker import: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    daemon.cli("import", str(image_tar), image, timeout=600)
    say(f"docker import: {time.perf_counter() - started:.1f} s")
    os.sync()

    storage_pid = service_pid(Config(root=root, run=run), "storage")
    times: dict[str, list[float]] = {"mydocker": [], "docker": []}
    written: dict[str, list[int]] = {"mydocker": [], "docker": []}
    layer_sizes, tag_sizes = [], []
    last: dict[str, str] = {}

    def mydocker_commit(number: int) -> tuple[float, int]:
        container = mydocker(env, "run", "-d", image, "sleep", "1000000").strip()
        mydocker(env, "exec", container, *change_command(number))
        os.sync()
        before = write_bytes([storage_pid])
        start = time.perf_counter()
        mydocker(env, "commit", container, f"bench-commit-{number}")
        took = time.perf_counter() - start
        after = write_bytes([storage_pid])
        if number >= args.warmup:
            committed = json.loads(mydocker(env, "image", "inspect", f"bench-commit-{number}"))[0]
            last.update(container=container, image_id=committed["id"])
            layer_sizes.append(int(committed["layers"][-1]["size_bytes"]))
            tag_sizes.append((root / "image" / f"bench-commit-{number}.tar").stat().st_size)
        return took, after - before

    def docker_commit(number: int) -> tuple[float, int]:
        container = daemon.cli("run", "-d", "--network", "none", image, "sleep", "1000000").stdout.strip()
        daemon.cli("exec", container, *change_command(number))
        os.sync()
        pids = [daemon.process.pid, *sorted(descendants(daemon.process.pid))]
        before = write_bytes(pids)
        start = time.perf_counter()
        daemon.cli("commit", container, f"bench-commit-{number}")
        took = time.perf_counter() - start
        return took, write_bytes(pids) - before

    tools = {"mydocker": mydocker_commit, "docker": docker_commit}
    before = pressure()
    for number in range(args.warmup + args.runs):
        order = list(tools) if number % 2 == 0 else list(reversed(tools))
        for tool in order:
            took, wrote = tools[tool](number)
            if number >= args.warmup:
                times[tool].append(took)
                written[tool].append(wrote)
    say("")
    say(f"commit of a {CHANGE_BYTES >> 20} MiB change to a {data / 2**20:.0f} MiB, {files}-file image, "
        f"{args.runs} interleaved rounds after {args.warmup} warm-up rounds ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{before} before, {pressure()} after):")
    for tool in tools:
        say(row(f"{tool} commit", times[tool]))
    ratio = statistics.median(times["mydocker"]) / statistics.median(times["docker"])
    say(f"  mydocker / docker (medians): {ratio:.2f}  (goal: at most 1.00)")
    say(f"  mydocker writes: new layer blob {statistics.median(layer_sizes) / 2**20:.2f} MiB, tag file "
        f"{statistics.median(tag_sizes) / 2**20:.1f} MiB; storage service write_bytes per commit "
        f"median {statistics.median(written['mydocker']) / 2**20:.1f} MiB")
    say(f"  docker writes: dockerd + containerd write_bytes per commit median {statistics.median(written['docker']) / 2**20:.1f} MiB "
        f"(driver {daemon.storage_driver})")
    if args.no_breakdown:
        return
    names = [f"bench-commit-{number}" for number in range(args.warmup, args.warmup + args.runs)]
    served = server_seconds(root / "log" / "storage.log", names)
    say("")
    say(f"where mydocker's commit goes: the storage service's own time (its log) median {statistics.median(served['commit']):.3f} s, "
        f"the rest ({statistics.median(times['mydocker']) - statistics.median(served['commit']):.3f} s) is the CLI and the RPC; "
        f"in it, unpacking the new layer (its one syncfs included) median {statistics.median(served['unpack']):.3f} s")
    upper = root / "overlay2" / last["container"] / "upper"
    for part, pairs in commit_parts(root, last["image_id"], upper, base / "commit-parts", args.part_repeats).items():
        writes, syncs = [pair[0] for pair in pairs], [pair[1] for pair in pairs]
        say(f"  {part:<28} write {statistics.median(writes):.3f} s   fsync {statistics.median(syncs):.3f} s   "
            f"(median of {len(pairs)}, this process, the service's code)")


def cleanup(base: Path, state: dict) -> None:
    """Containers and services first, then the private dockerd, then the bulk deletes."""
    stop_services(state.get("env"), bool(state.get("up")))
    state["stack"].close()
    remove_roots(base, state["parent"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--image-mib", type=int, default=120, help="file data in the image")
    parser.add_argument("--image-files", type=int, default=10000, help="about this many files in the image")
    parser.add_argument("--no-breakdown", action="store_true", help="only the whole commits")
    parser.add_argument("--part-repeats", type=int, default=5, help="repeats of each step of the breakdown")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: mounts, namespaces, cgroups, dockerd", file=sys.stderr)
        return 1
    return run_bench(bench, cleanup, args)


if __name__ == "__main__":
    sys.exit(main())
