"""Start time on a 5-layer image against a 1-layer image of the same tree: `run --rm IMAGE /bin/true`, interleaved.

The 5-layer image is busybox plus 4 successive commits of small changes (a directory and a file each,
and a line appended to /etc/motd, so later layers copy up a file of an earlier one); the 1-layer image
is the same final tree as one rootfs tar (busybox's tar with the same entries appended), given to
`mydocker import`. Both trees are checked equal (`find / -xdev` and the files' contents) before timing.
Goal (issue #11): the 5-layer run within 1.1x of the 1-layer run (medians).

Where a difference would come from, each timed round by round on the same two images:
  - the storage service's PrepareRootfs and RemoveRootfs alone, over gRPC (fresh container ids);
  - the mounts alone, in a child process in a private mount namespace: the container's overlay of
    5 layers with and without the read-only overlay `lower` view that multi-layer rootfs get, and
    the 1-layer overlay, each mounted and unmounted (the same options the storage service uses).

As root; services on temp roots (/tmp/mdk-bench-*), a cgroup parent of its own; removes everything.

    .venv/bin/python -m bench.layers_run --runs 20
"""

from __future__ import annotations

import sys
import time

if __name__ == "__main__" and sys.argv[1:2] == ["--mount-probe"]:
    # The child: every mount it makes dies with its private mount namespace.
    import json

    from services.common import linux
    from services.storage.mountplan import OVERLAY_OFF_FEATURES, kernel_overlay_features

    def probe(plan: dict) -> dict[str, list[list[float]]]:
        supported = kernel_overlay_features()
        off = [f"{name}=off" for name in OVERLAY_OFF_FEATURES if supported is None or name in supported]
        results: dict[str, list[list[float]]] = {name: [] for name in plan["variants"]}
        for round_number in range(plan["warmup"] + plan["runs"]):
            for name, variant in plan["variants"].items():
                lower = ":".join(reversed(variant["layers"]))
                mount_start = time.perf_counter()
                if variant["view"]:
                    linux.mount("overlay", variant["view"], "overlay", linux.MS_RDONLY, f"lowerdir={lower}")
                data = ",".join([f"lowerdir={lower}", f"upperdir={variant['upper']}", f"workdir={variant['work']}", *off])
                linux.mount("overlay", variant["merged"], "overlay", 0, data)
                mounted = time.perf_counter()
                linux.umount2(variant["merged"], linux.UMOUNT_NOFOLLOW)
                if variant["view"]:
                    linux.umount2(variant["view"], linux.UMOUNT_NOFOLLOW)
                done = time.perf_counter()
                if round_number >= plan["warmup"]:
                    results[name].append([mounted - mount_start, done - mounted])
        return results

    print(json.dumps(probe(json.loads(sys.argv[2]))))
    sys.exit(0)

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import REPO, mydocker, pressure, remove_roots, run_bench, say, start_services, stop_services, summary  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
LAYERED, FLAT = "bench-layers-5", "bench-flat-1"
CHANGES = 4
GOAL = 1.1
# What each container prints to compare the two trees: every path on the root filesystem, then the files we made.
TREE_LISTING = "find / -xdev | sort; cat /etc/motd /opt/layer-*/file"




def change_script(number: int) -> str:
    """The shell line of commit `number` (1-based)."""
    return f"mkdir -p /opt/layer-{number} && echo 'layer {number}' > /opt/layer-{number}/file && echo {number} >> /etc/motd"


def build_layered(env: dict[str, str]) -> None:
    """busybox, then CHANGES commits each on the previous image: CHANGES + 1 layers."""
    image = "busybox"
    for number in range(1, CHANGES + 1):
        container = mydocker(env, "run", "-d", image, "sleep", "1000000").strip()
        mydocker(env, "exec", container, "sh", "-c", change_script(number))
        image = LAYERED if number == CHANGES else f"bench-layers-{number}"
        mydocker(env, "commit", container, image)
        mydocker(env, "rm", "-f", container)


def build_flat_tar(busybox_tar: Path, out: Path) -> None:
    """busybox's tar with the entries the commits made appended, as one rootfs tar (the same final tree)."""
    shutil.copyfile(busybox_tar, out)
    mtime = int(time.time())

    def entry(name: str, directory: bool = False, data: bytes = b"") -> tuple[tarfile.TarInfo, bytes]:
        info = tarfile.TarInfo(name)
        info.uid = info.gid = 0
        info.mtime = mtime
        if directory:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        else:
            info.mode, info.size = 0o644, len(data)
        return info, data

    entries = [entry("opt", directory=True)]
    for number in range(1, CHANGES + 1):
        entries += [entry(f"opt/layer-{number}", directory=True), entry(f"opt/layer-{number}/file", data=f"layer {number}\n".encode())]
    entries.append(entry("etc/motd", data="".join(f"{n}\n" for n in range(1, CHANGES + 1)).encode()))
    with tarfile.open(out, "a") as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)


def layer_dirs(env: dict[str, str], root: Path, image: str) -> list[str]:
    from services.storage.paths import StoragePaths

    paths = StoragePaths(root.resolve())
    layers = json.loads(mydocker(env, "image", "inspect", image))[0]["layers"]
    return [str(paths.layer_fs(layer["diff_id"])) for layer in layers]


def time_runs(env: dict[str, str], runs: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {LAYERED: [], FLAT: []}
    for round_number in range(warmup + runs):
        for image in (LAYERED, FLAT) if round_number % 2 == 0 else (FLAT, LAYERED):
            start = time.perf_counter()
            mydocker(env, "run", "--rm", image, "/bin/true")
            if round_number >= warmup:
                times[image].append(time.perf_counter() - start)
    return times


def time_rootfs_rpcs(root: Path, run: Path, runs: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """PrepareRootfs and RemoveRootfs alone, over the storage service's socket, image by image in turn."""
    from protos.storage.v1 import storage_pb2 as sto
    from protos.storage.v1 import storage_pb2_grpc
    from services.common.client import open_channel
    from services.common.config import Config

    times: dict[str, dict[str, list[float]]] = {image: {"PrepareRootfs": [], "RemoveRootfs": []} for image in (LAYERED, FLAT)}
    with open_channel(Config(root=root, run=run), "storage") as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        for round_number in range(warmup + runs):
            for image in (LAYERED, FLAT) if round_number % 2 == 0 else (FLAT, LAYERED):
                # 10 digits, as the state service hands out; these never reach the state service.
                container_id = str(random.randrange(10**9, 10**10))
                start = time.perf_counter()
                stub.PrepareRootfs(sto.PrepareRootfsRequest(container_id=container_id, image=image), timeout=60)
                prepared = time.perf_counter()
                stub.RemoveRootfs(sto.RemoveRootfsRequest(container_id=container_id), timeout=60)
                removed = time.perf_counter()
                if round_number >= warmup:
                    times[image]["PrepareRootfs"].append(prepared - start)
                    times[image]["RemoveRootfs"].append(removed - prepared)
    return times


def time_mounts(env: dict[str, str], root: Path, scratch: Path, runs: int, warmup: int) -> dict[str, list[list[float]]]:
    """The mounts alone, in a child in a private mount namespace (--mount-probe): [mount, unmount] seconds per round."""
    layered, flat = layer_dirs(env, root, LAYERED), layer_dirs(env, root, FLAT)
    variants = {
        "5 layers: lower view + overlay (as mydocker)": (layered, True),
        "5 layers: overlay alone": (layered, False),
        "1 layer: overlay": (flat, False),
    }
    plan: dict = {"runs": runs, "warmup": warmup, "variants": {}}
    for index, (name, (layers, view)) in enumerate(variants.items()):
        directory = scratch / f"variant-{index}"
        for part in ("upper", "work", "merged", "view"):
            (directory / part).mkdir(parents=True)
        plan["variants"][name] = {
            "layers": layers,
            "view": str(directory / "view") if view else "",
            "upper": str(directory / "upper"),
            "work": str(directory / "work"),
            "merged": str(directory / "merged"),
        }
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", PYTHON, "-m", "bench.layers_run", "--mount-probe", json.dumps(plan)],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(result.stdout)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def bench(args: argparse.Namespace, base: Path, state: dict) -> None:
    root, run, env = start_services(base, state)

    build_layered(env)
    flat_tar = base / "flat.tar"
    build_flat_tar(root / "image" / "busybox.tar", flat_tar)
    mydocker(env, "import", str(flat_tar), FLAT)
    counts = {image: len(json.loads(mydocker(env, "image", "inspect", image))[0]["layers"]) for image in (LAYERED, FLAT)}
    trees = {image: mydocker(env, "run", "--rm", image, "sh", "-c", TREE_LISTING) for image in (LAYERED, FLAT)}
    if trees[LAYERED] != trees[FLAT]:
        import difflib

        diff = "\n".join(difflib.unified_diff(trees[FLAT].splitlines(), trees[LAYERED].splitlines(), FLAT, LAYERED, lineterm=""))
        raise RuntimeError(f"the two images do not hold the same tree:\n{diff}")
    say(f"{LAYERED}: {counts[LAYERED]} layers, {FLAT}: {counts[FLAT]} layer; same tree ({len(trees[FLAT].splitlines())} lines of find + cat)")
    os.sync()  # the builds' writeback must not land in the timed runs

    before = pressure()
    times = time_runs(env, args.runs, args.warmup)
    ratio = statistics.median(times[LAYERED]) / statistics.median(times[FLAT])
    say("")
    say(f"run --rm IMAGE /bin/true, {args.runs} interleaved rounds after {args.warmup} warm-up rounds "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {before} before, {pressure()} after):")
    for image, seconds in times.items():
        label = f"{image} ({counts[image]} layer{'s' if counts[image] > 1 else ''})"
        say(f"  {summary(label, seconds)}  median={median_ms(seconds):7.2f} ms")
    say(f"  5 layers / 1 layer (medians): {ratio:.3f}  (goal: at most {GOAL})")
    if args.no_breakdown:
        return

    rpcs = time_rootfs_rpcs(root, run, args.runs, args.warmup)
    say("")
    say("storage RPCs alone (median ms):")
    for image, calls in rpcs.items():
        say(f"  {image:<16} PrepareRootfs {median_ms(calls['PrepareRootfs']):6.2f}   RemoveRootfs {median_ms(calls['RemoveRootfs']):6.2f}")
    scratch = base / "mount-probe"
    mounts = time_mounts(env, root, scratch, args.runs * 2, args.warmup)
    say("")
    say("mounts alone, private mount namespace (median ms):")
    for name, pairs in mounts.items():
        say(f"  {name:<46} mount {median_ms([p[0] for p in pairs]):6.2f}   unmount {median_ms([p[1] for p in pairs]):6.2f}")


def cleanup(base: Path, state: dict) -> None:
    """Containers and services, the cgroup parent, mounts left (none expected), then the temp roots."""
    stop_services(state.get("env"), bool(state.get("up")))
    remove_roots(base, state["parent"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--no-breakdown", action="store_true", help="only the whole runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: mounts, namespaces, cgroups", file=sys.stderr)
        return 1
    return run_bench(bench, cleanup, args)


if __name__ == "__main__":
    sys.exit(main())
