"""`mydocker pull` of a 5-layer ~120 MB image from a loopback registry beside `skopeo copy` and `podman pull`, interleaved.

The image is built without network (busybox, then files of this host's /usr/share, /usr/lib/x86_64-linux-gnu
and /usr/bin spread over 4 more layers: bench.common.build_layer_tars), written as an OCI layout with plain
tar layers, and pushed with `skopeo copy --dest-compress --format v2s2` (gzip layers, a Docker v2 schema 2
manifest, as registries usually serve) to Debian's docker-registry on 127.0.0.1 (tests/registry.py).

Each round, for each tool in turn (the order alternates round by round), after a sync:
  - `mydocker pull -q` into the services' temp root, the image absent (rmi'd in the round before: its blobs
    and unpacked layers gone, checked against the listing of ROOT/blobs/sha256 and ROOT/layers/sha256);
  - `skopeo copy docker://... oci:DIR:v1` into a fresh directory: it only stores the gzip blobs, it does
    not unpack them;
  - `podman pull` into a fresh store (--root/--runroot/--tmpdir of its own): it unpacks every layer.
The sync that follows each is timed apart: mydocker's layers are on disk when pull answers (one syncfs per
layer, the tag file fsynced), skopeo's and podman's files are still in the page cache.
Every delete (rmi, the skopeo directory, the podman store) comes at the end of the round, then a sync and
a settle (--settle): this journal-less ext4 creates files 2-10x slower right after a big delete.

Reported: median and p90 of each tool, the bytes the registry sent for each (its write syscalls, from
/proc/<pid>/io), and where mydocker's pull goes, from the storage service's log: the download (until its
"pulled" line), the unpacking (each layer's decompression to a temp tar and the extraction the log
times), and the rest (the complete tag file, the reply, the CLI's exit).

As root; everything it made (services, registry, stores, temp roots, cgroups) is removed at the end.

    .venv/bin/python -m bench.pull --runs 10
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.common import build_layer_tars, mydocker, p90, pressure, remove_roots, run_bench, say, start_services, stop_services

REPOSITORY, TAG = "bench/big", "v1"
TOOLS = ("mydocker", "skopeo", "podman")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def row(label: str, seconds: list[float], note: str = "") -> str:
    return (f"  {label:<24} median {statistics.median(seconds):7.3f} s   p90 {p90(seconds):7.3f} s   "
            f"n={len(seconds)}  {note}").rstrip()


# --- the image --------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_oci_layout(layout: Path, layer_tars: list[Path]) -> None:
    """An OCI image layout of the plain layer tars (moved into it), tagged TAG."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict:
        hex_digest = hashlib.sha256(data).hexdigest()
        (blobs / hex_digest).write_bytes(data)
        return {"digest": f"sha256:{hex_digest}", "size": len(data)}

    layers = []
    for tar in layer_tars:
        hex_digest = _sha256_file(tar)
        size = tar.stat().st_size
        tar.rename(blobs / hex_digest)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{hex_digest}", "size": size})
    config = {
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "history": [{"created_by": f"bench.pull layer {number}"} for number in range(len(layers))],
    }
    config_descriptor = {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor, "layers": layers}
    manifest_descriptor = {"mediaType": OCI_MANIFEST, **blob(json.dumps(manifest).encode()),
                           "annotations": {"org.opencontainers.image.ref.name": TAG}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_descriptor]}))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def registry_manifest(host: str) -> dict:
    request = urllib.request.Request(f"http://{host}/v2/{REPOSITORY}/manifests/{TAG}", headers={"Accept": DOCKER_MANIFEST})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def registry_pid(config: Path) -> int:
    """The docker-registry process serving `config` (tests/registry.py keeps its Popen to itself)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if str(config).encode() in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                    return int(entry)
    raise RuntimeError(f"no docker-registry process serving {config}")


def sent_bytes(pid: int) -> int:
    """Bytes the process wrote through syscalls (sockets and sendfile included): what the registry served."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


# --- podman -------------------------------------------------------------------------------------------


def podman_command(store: Path, driver: str, *args: str) -> list[str]:
    return ["podman", "--root", str(store / "root"), "--runroot", str(store / "run"), "--tmpdir", str(store / "tmp"),
            "--storage-driver", driver, "--events-backend", "none", "--cgroup-manager", "cgroupfs",
            "--log-level", "error", *args]


def mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(str(path) + "/")]


def remove_podman_store(store: Path) -> list[str]:
    """Unmount what podman's storage left mounted in its store (its driver's home), then delete it; returns those mounts."""
    left = mounts_below(store)
    for target in reversed(left):
        subprocess.run(["umount", target], check=False, capture_output=True)
    if mounts_below(store):
        subprocess.run(["umount", "-l", *reversed(mounts_below(store))], check=False, capture_output=True)
    shutil.rmtree(store, ignore_errors=True)
    return left


def choose_podman_driver(base: Path, ref: str) -> tuple[str, str]:
    """overlay when a trial pull with it works here (nested, it may not), else vfs; with why."""
    store = base / "podman-trial"
    result = subprocess.run(podman_command(store, "overlay", "pull", "--tls-verify=false", "-q", ref),
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    left = remove_podman_store(store)
    if result.returncode == 0:
        mounted = f"; it leaves {len(left)} mount(s) in its store, unmounted with it" if left else "; no mount left in its store"
        return "overlay", f"a trial pull with overlay succeeded{mounted}"
    error = (result.stderr.strip().splitlines() or ["?"])[-1]
    return "vfs", f"overlay failed here: {error[:200]}"


# --- where mydocker's pull goes -----------------------------------------------------------------------


def log_time(line: str) -> float | None:
    match = LOG_TIME.match(line)
    if match is None:
        return None
    # logging's asctime is local time, as datetime's naive timestamp() reads it.
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def pull_phases(log: Path, start: float, end: float) -> dict[str, float]:
    """From the storage log lines between `start` and `end` (epoch seconds): download, unpack, rest."""
    pulled, extracted, extract_seconds = None, [], 0.0
    for line in log.read_text(errors="replace").splitlines():
        at = log_time(line)
        if at is None or not start - 0.002 <= at <= end + 0.002:
            continue
        if " pulled " in line and f"/{REPOSITORY}:{TAG} (" in line:
            pulled = at
        match = re.search(r"extracted image .*: \d+ bytes in ([0-9.]+)s", line)
        if match:
            extracted.append(at)
            extract_seconds += float(match.group(1))
    if pulled is None or not extracted:
        return {}
    unpack = max(extracted) - pulled
    return {"download": pulled - start, "unpack": unpack, "extraction (log)": extract_seconds,
            "decompress + diff id (rest of unpack)": unpack - extract_seconds, "tag file, reply, CLI exit": end - max(extracted)}


# --- the benchmark ------------------------------------------------------------------------------------


def listing(directory: Path) -> set[str]:
    with contextlib.suppress(FileNotFoundError):
        return set(os.listdir(directory))
    return set()


def bench(args: argparse.Namespace, base: Path, state: dict) -> None:
    from tests.registry import docker_registry

    root, run, env = start_services(base, state)

    started = time.perf_counter()
    tars = [base / f"layer-{number}.tar" for number in range(args.layers)]
    files, data = build_layer_tars(root / "image" / "busybox.tar", tars, args.image_mib << 20, args.image_files)
    sizes = [tar.stat().st_size for tar in tars]
    write_oci_layout(base / "layout", tars)
    say(f"image: {args.layers} layers, {files} files, {data / 2**20:.0f} MiB of file data, layer tars "
        f"{' + '.join(f'{size / 2**20:.0f}' for size in sizes)} MiB (built in {time.perf_counter() - started:.1f} s)")

    registry = state["stack"].enter_context(docker_registry())
    ref = f"{registry.host}/{REPOSITORY}:{TAG}"
    started = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip", "--format", "v2s2",
                    "--dest-tls-verify=false", f"oci:{base / 'layout'}:{TAG}", f"docker://{ref}"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    shutil.rmtree(base / "layout")
    manifest = registry_manifest(registry.host)
    gzip_sizes = [layer["size"] for layer in manifest["layers"]]
    say(f"pushed {ref} in {time.perf_counter() - started:.1f} s: gzip layers "
        f"{' + '.join(f'{size / 2**20:.1f}' for size in gzip_sizes)} = {sum(gzip_sizes) / 2**20:.1f} MiB ({manifest['mediaType']})")
    pid = registry_pid(registry.directory / "config.yml")

    driver, why = (args.podman_driver, "chosen with --podman-driver") if args.podman_driver else choose_podman_driver(base, ref)
    say(f"podman storage driver: {driver} ({why})")

    ours = {layer["digest"].removeprefix("sha256:") for layer in manifest["layers"]} | {manifest["config"]["digest"].removeprefix("sha256:")}
    blobs_before, layers_before = listing(root / "blobs" / "sha256"), listing(root / "layers" / "sha256")
    if ours & blobs_before:
        raise RuntimeError(f"the image's blobs are already in {root}: the first pull would not download them")
    log = root / "log" / "storage.log"

    def run_mydocker(number: int) -> None:
        mydocker(env, "pull", "-q", ref)

    def run_skopeo(number: int) -> None:
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{base / f'skopeo-{number}'}:{TAG}"],
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)

    def run_podman(number: int) -> None:
        result = subprocess.run(podman_command(base / f"podman-{number}", driver, "pull", "--tls-verify=false", "-q", ref),
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"podman pull exited {result.returncode}: {result.stderr.strip()}")

    def forget(number: int) -> None:
        """Every tool's copy of the image: rmi (checked: nothing of it left in the root), the skopeo dir, the podman store."""
        mydocker(env, "rmi", ref)
        left_blobs = (listing(root / "blobs" / "sha256") - blobs_before) | (ours & listing(root / "blobs" / "sha256"))
        left_layers = listing(root / "layers" / "sha256") - layers_before
        if left_blobs or left_layers:
            raise RuntimeError(f"rmi left {sorted(left_blobs)} in blobs/sha256 and {sorted(left_layers)} in layers/sha256")
        shutil.rmtree(base / f"skopeo-{number}")
        remove_podman_store(base / f"podman-{number}")

    tools = {"mydocker": run_mydocker, "skopeo": run_skopeo, "podman": run_podman}
    times: dict[str, list[float]] = {tool: [] for tool in tools}
    syncs: dict[str, list[float]] = {tool: [] for tool in tools}
    served: dict[str, list[int]] = {tool: [] for tool in tools}
    phases: list[dict[str, float]] = []
    os.sync()
    time.sleep(args.settle)  # the trial store and the layout were just deleted
    before = pressure()
    for number in range(args.warmup + args.runs):
        order = list(tools) if number % 2 == 0 else list(reversed(tools))
        for tool in order:
            os.sync()
            sent = sent_bytes(pid)
            wall_start = time.time()
            start = time.perf_counter()
            tools[tool](number)
            took = time.perf_counter() - start
            wall_end = time.time()
            os.sync()
            synced = time.perf_counter() - start - took
            if number >= args.warmup:
                times[tool].append(took)
                syncs[tool].append(synced)
                served[tool].append(sent_bytes(pid) - sent)
                if tool == "mydocker":
                    phases.append(pull_phases(log, wall_start, wall_end))
        forget(number)
        os.sync()
        time.sleep(args.settle)

    say("")
    say(f"pull of {ref}: {args.layers} layers, {data / 2**20:.0f} MiB of file data, {sum(gzip_sizes) / 2**20:.1f} MiB gzip; "
        f"{args.runs} interleaved rounds after {args.warmup} warm-up ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{before} before, {pressure()} after):")
    notes = {"mydocker": "unpacks; on disk when it answers",
             "skopeo": "stores the gzip blobs, does not unpack",
             "podman": f"unpacks ({driver}); in the page cache when it answers"}
    for tool in tools:
        say(row(f"{tool}", times[tool], notes[tool]))
    for tool in tools:
        say(f"  {tool:<9} the sync after it: median {statistics.median(syncs[tool]):.3f} s; the registry sent "
            f"{statistics.median(served[tool]) / 2**20:.1f} MiB (median)")
    for peer in ("skopeo", "podman"):
        say(f"  mydocker / {peer} (medians): {statistics.median(times['mydocker']) / statistics.median(times[peer]):.2f}  (goal: at most 1.00)")
    complete = [entry for entry in phases if entry]
    if complete:
        say(f"where mydocker's pull goes (storage log, medians of {len(complete)}):")
        for key in complete[0]:
            say(f"  {key:<40} {statistics.median(entry[key] for entry in complete):7.3f} s")


def cleanup(base: Path, state: dict) -> None:
    """Services first, then the registry (by its pid, in its context), then the podman stores' mounts and the bulk deletes."""
    stop_services(state.get("env"), bool(state.get("up")))
    state["stack"].close()
    for store in sorted(base.glob("podman-*")):
        remove_podman_store(store)
    remove_roots(base, state["parent"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--layers", type=int, default=5, help="layers of the image (busybox, then the host files)")
    parser.add_argument("--image-mib", type=int, default=120, help="file data in the image")
    parser.add_argument("--image-files", type=int, default=10000, help="about this many files in the image")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after each round's deletes and sync")
    parser.add_argument("--podman-driver", choices=("overlay", "vfs"), help="skip the trial and use this storage driver")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root: mounts, namespaces, cgroups, podman's store", file=sys.stderr)
        return 1
    for tool, package in (("skopeo", "skopeo"), ("podman", "podman"), ("docker-registry", "docker-registry")):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install {package}", file=sys.stderr)
            return 1
    return run_bench(bench, cleanup, args)


if __name__ == "__main__":
    sys.exit(main())
