"""Start latency of whole `./mydocker run` processes, beside `runc run`, on busybox and a ~120 MB Debian image.

Measures, with the three services up on temp roots (/tmp/mdk-bench-*), whole processes only:
  - `./mydocker run --rm busybox /bin/true`, and `runc run` of /bin/true on the same busybox rootfs;
  - `./mydocker run -d busybox /bin/true` and `./mydocker rm -f` of the exited container;
  - the same run with the CLI in-process (MYDOCKER_CLI_SERVER=off), i.e. without the warm CLI server;
  - where a run's time goes, every RPC timestamped: through a traced CLI server, and in a fresh process;
  - `run --rm debian /bin/true` on a debootstrap minbase image: the first (cold) run, which extracts the
    image once, apart from the warm runs, to show warm start does not grow with image size;
  - the PSS of idle shims with 10 `sleep` containers running (bench.shim_memory's reader).
Each figure is a median (and mean ± sd, p95) over --runs runs, after --warmup runs that are not counted.

Root only. runc and debootstrap are installed with apt-get when missing (here, never in CI). The
debootstrap tree and its tar are cached in --cache (default /tmp/mdk-bench-cache) for later runs.
Everything else is removed at the end, bulk deletes last: on this journal-less ext4, creating files
right after deleting a big tree is 2-10x slower, so nothing is timed after one.
"""

from __future__ import annotations

import sys
import time

_T0 = time.monotonic()  # the traced child's first instant, as close to interpreter start as we can get


# --- traced CLIs: every RPC timestamped -----------------------------------------------------------
# Defined and dispatched before the harness's own imports, so a traced child imports what the CLI imports.


def install_hooks(marks: list) -> None:
    """Time every service call and the attach stream by patching hooks in; the product code runs unchanged."""

    def mark(label: str, start: float) -> None:
        marks.append((label, start, time.monotonic()))

    import cli.streams
    from cli import containers
    from cli.services import Services

    class TimedServices(Services):
        def call(self, service, method, request, timeout=10.0, **options):
            if service not in self.__dict__:
                begin = time.monotonic()
                getattr(self, service)
                mark(f"open {service} channel + import its stub", begin)
            begin = time.monotonic()
            try:
                return super().call(service, method, request, timeout=timeout, **options)
            finally:
                mark(f"{service}.{method}", begin)

        def call_together(self, calls):
            begin = time.monotonic()
            try:
                return super().call_together(calls)
            finally:
                mark(" and ".join(f"{service}.{method}" for _, service, method, _, _ in calls) + " (at once)", begin)

    containers.Services = TimedServices
    attach_stream = cli.streams.attach_stream

    def timed_attach(services, container_id, stdin, tty):
        begin = time.monotonic()
        pump = attach_stream(services, container_id, stdin, tty)
        mark("executor.Attach (open the stream)", begin)

        def timed_pump():
            begin = time.monotonic()
            try:
                return pump()
            finally:
                mark("wait: /bin/true runs, exit code comes over Attach", begin)

        return timed_pump

    cli.streams.attach_stream = timed_attach


def trace_child(mode: str, out: str) -> int:
    """Run `mydocker run --rm|-d busybox /bin/true` in this fresh process (the CLI in-process), timing each step."""
    marks: list[tuple[str, float, float]] = []

    def mark(label: str, start: float) -> None:
        marks.append((label, start, time.monotonic()))

    start = time.monotonic()
    import cli.main

    mark("import typer + cli.main", start)
    start = time.monotonic()
    import grpc  # noqa: F401

    mark("import grpc", start)
    start = time.monotonic()
    import cli.lifecycle  # noqa: F401
    import cli.parse  # noqa: F401
    import cli.streams  # noqa: F401
    from protos.types.v1 import types_pb2  # noqa: F401

    mark("import generated protos + cli.lifecycle/streams", start)
    install_hooks(marks)
    import json
    import os

    def finish(code: int) -> None:
        with open(out, "w") as handle:
            json.dump({"t0": _T0, "marks": marks, "main": [start, time.monotonic()], "exit_code": code}, handle)

    # The CLI ends with os._exit (skipping interpreter teardown): write the trace on that path too.
    real_exit = os._exit

    def traced_exit(status: int) -> None:
        finish(status)
        real_exit(status)

    os._exit = traced_exit
    args = ["run", "--rm" if mode == "rm" else "-d", "busybox", "/bin/true"]
    start = time.monotonic()
    code = 0
    try:
        cli.main.main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0
    finish(code)
    return code


def trace_server() -> int:
    """The warm CLI server with the hooks in: each worker writes its steps to $MDK_BENCH_TRACE (the client's env)."""
    import json
    import os

    from cli import forkserver

    forkserver.preload()
    marks: list[tuple[str, float, float]] = []
    install_hooks(marks)
    import cli.main

    run_command = cli.main.run_command

    def traced(argv: list[str]) -> int:
        start = time.monotonic()
        status = run_command(argv)
        out = os.environ.get("MDK_BENCH_TRACE")
        if out:
            with open(out, "w") as handle:
                json.dump({"t0": start, "marks": marks, "main": [start, time.monotonic()], "exit_code": status}, handle)
        return status

    cli.main.run_command = traced
    return forkserver.main()


if __name__ == "__main__" and sys.argv[1:2] == ["--trace-child"]:
    sys.exit(trace_child(sys.argv[2], sys.argv[3]))
if __name__ == "__main__" and sys.argv[1:2] == ["--trace-server"]:
    sys.exit(trace_server())

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import REPO  # noqa: E402
from services.common.config import Config  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
LAUNCHER = str(REPO / "mydocker")
DEFAULT_CACHE = Path("/tmp/mdk-bench-cache")
DEBIAN_SUITE = "bookworm"
# apt's package lists and caches: regenerated by `apt-get update`, left out as Docker's debian image does.
DEBIAN_EXCLUDES = ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb")
PEERS = "containerd ctr run 103-122 ms, podman 124-145 ms, docker 224 ms, runc alone 25-29 ms"
SHIM_TARGET_MIB = 3.4


# --- statistics and output ----------------------------------------------------------------------


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def cpu_ticks() -> list[int]:
    """The aggregate cpu line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    with open("/proc/stat") as handle:
        return [int(value) for value in handle.readline().split()[1:]]


def steal_share(before: list[int], after: list[int]) -> float:
    """Percent of CPU time the hypervisor gave to others (steal) between two cpu_ticks() readings."""
    delta = [b - a for a, b in zip(before, after)]
    return 100.0 * delta[7] / max(1, sum(delta[:8]))


@dataclass
class Figure:
    label: str
    seconds: list[float]
    note: str = ""

    def ms(self) -> list[float]:
        return sorted(s * 1000 for s in self.seconds)

    def row(self) -> str:
        ms = self.ms()
        median = statistics.median(ms)
        mean = statistics.mean(ms)
        sd = statistics.stdev(ms) if len(ms) > 1 else 0.0
        p95 = ms[math.ceil(len(ms) * 0.95) - 1]  # nearest rank
        return f"{self.label:<48} {median:8.1f} {mean:8.1f} ±{sd:6.1f} {p95:8.1f} {len(ms):>4}  {self.note}"


TABLE_HEADER = f"{'':<48} {'median':>8} {'mean':>8} {'± sd':>7} {'p95':>8} {'n':>4}  (ms)"


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    breakdowns: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    load_before: str = ""
    ticks_before: list[int] = field(default_factory=cpu_ticks)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(f"  {figure.row()}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


# --- processes ------------------------------------------------------------------------------------


def run_checked(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    result = run_checked(argv, env)
    return time.perf_counter() - start, result.stdout


def time_runs(argv_of, env: dict[str, str] | None, runs: int, warmup: int) -> tuple[list[float], list[str]]:
    """`argv_of(n)` run `warmup` times untimed, then `runs` times: (seconds, stdout) of the timed ones."""
    for n in range(warmup):
        run_checked(argv_of(-1 - n), env)
    times, outputs = [], []
    for n in range(runs):
        seconds, out = timed(argv_of(n), env)
        times.append(seconds)
        outputs.append(out)
    return times, outputs


def time_interleaved(commands: dict, runs: int, warmup: int, gap: float = 0.0) -> dict[str, list[float]]:
    """{label: (argv_of, env)} run in turn, one of each per round, so all see the same host conditions.

    This VM's speed drifts by tens of percent over minutes; figures meant to be compared are taken
    interleaved rather than one block after the other. `gap` seconds pass before each timed command,
    as between commands typed at a shell: what one tool does after its command (mydocker warms up
    its next CLI worker) then does not land in the other tool's figure.
    """
    for n in range(warmup):
        for argv_of, env in commands.values():
            run_checked(argv_of(-1 - n), env)
    times: dict[str, list[float]] = {label: [] for label in commands}
    for n in range(runs):
        for label, (argv_of, env) in commands.items():
            time.sleep(gap)
            times[label].append(timed(argv_of(n), env)[0])
    return times


def ensure_tool(command: str, package: str) -> str:
    """The path of `command`, installing the Debian package with apt-get first when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    say(f"{command} is missing: apt-get install -y {package} (the benchmark installs it; CI never does)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    found = shutil.which(command)
    if not found:
        raise RuntimeError(f"{package} installed but {command} is not on PATH")
    return found


def mydocker(env: dict[str, str], *args: str) -> str:
    return run_checked([LAUNCHER, *args], env).stdout


# --- images and bundles ---------------------------------------------------------------------------


def tar_tree(tree: Path, output: Path, excludes: tuple[str, ...] = ()) -> None:
    """A rootfs tar of `tree` (numeric owners, sorted), written to a temp name then renamed."""
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    top = sorted(os.listdir(tree))
    argv = ["tar", "--create", f"--file={tmp}", "--format=gnu", "--sort=name", "--numeric-owner"]
    argv += [f"--exclude={pattern}" for pattern in excludes]
    run_checked([*argv, f"--directory={tree}", *top])
    tmp.rename(output)


def debian_tar(cache: Path, mirror: str, late_deletes: list[Path]) -> Path | None:
    """The debootstrap minbase image tar, built once into `cache`; None when debootstrap fails."""
    tree = cache / f"debian-{DEBIAN_SUITE}-minbase"
    tar = cache / f"debian-{DEBIAN_SUITE}-minbase.tar"
    if tar.exists():
        say(f"debian image: cached {tar}")
        return tar
    cache.mkdir(parents=True, exist_ok=True)
    if not tree.exists():
        debootstrap = ensure_tool("debootstrap", "debootstrap")
        partial = cache / f".{tree.name}.tmp-{os.getpid()}"
        source = mirror or "debootstrap's default mirror"
        say(f"debian image: debootstrap --variant=minbase {DEBIAN_SUITE} from {source} into {tree} (about a minute, once)")
        result = subprocess.run(
            [debootstrap, "--variant=minbase", DEBIAN_SUITE, str(partial), *([mirror] if mirror else [])],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )
        if result.returncode != 0:
            late_deletes.append(partial)  # not now: nothing may be timed right after a bulk delete
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            say(f"debian image: DEBOOTSTRAP FAILED (exit {result.returncode}; is {source} reachable?):")
            for line in tail:
                say(f"    {line}")
            return None
        partial.rename(tree)
    tar_tree(tree, tar, DEBIAN_EXCLUDES)
    say(f"debian image: {tar}")
    return tar


def fallback_tar(busybox_tar: Path, base: Path) -> Path:
    """The fallback large image: busybox plus a copy of this host's /usr/lib/python3* (~100 MB)."""
    tree = base / "large-rootfs"
    tree.mkdir()
    run_checked(["tar", "--extract", f"--file={busybox_tar}", f"--directory={tree}"])
    (tree / "usr" / "lib").mkdir(parents=True, exist_ok=True)
    for lib in sorted(Path("/usr/lib").glob("python3*")):
        run_checked(["cp", "-a", str(lib), str(tree / "usr" / "lib" / lib.name)])
    tar = base / "large.tar"
    tar_tree(tree, tar)
    say(f"large image FALLBACK: busybox + /usr/lib/python3* instead of Debian minbase: {tar}")
    return tar


def runc_bundle(busybox_tar: Path, bundle: Path) -> None:
    """An OCI bundle: the busybox image extracted as rootfs, `runc spec` with args /bin/true and no terminal."""
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    run_checked(["tar", "--extract", "--same-owner", f"--file={busybox_tar}", f"--directory={rootfs}"])
    run_checked(["runc", "spec", "--bundle", str(bundle)])
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = ["/bin/true"]
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config, indent=2))


def mib(path: Path) -> float:
    return path.stat().st_size / (1 << 20)


def breakdown(env: dict[str, str], mode: str, served: bool, runs: int, warmup: int, scratch: Path) -> tuple[list[tuple[str, float]], list[float]]:
    """Median ms of each step of a traced `run` over `runs` commands, in the order they happen.

    `served`: ./mydocker through the traced CLI server (which must be up); otherwise a fresh traced
    process runs the CLI in-process.
    """
    per_run: list[list[tuple[str, float]]] = []
    totals: list[float] = []
    for n in range(warmup + runs):
        out = scratch / f"trace-{mode}-{'served' if served else 'alone'}-{n}.json"
        spawned = time.monotonic()
        if served:
            args = ["run", "--rm" if mode == "rm" else "-d", "busybox", "/bin/true"]
            run_checked([LAUNCHER, *args], dict(env, MDK_BENCH_TRACE=str(out), MYDOCKER_CLI_SERVER="require"))
        else:
            run_checked([PYTHON, "-m", "bench.run_latency", "--trace-child", mode, str(out)], env)
        exited = time.monotonic()
        if n < warmup:
            continue
        trace = json.loads(out.read_text())
        marks = [(label, a, b) for label, a, b in trace["marks"]]
        main_start, main_end = trace["main"]
        if served:
            steps = [("client start (the compiled front), hand-off to a forked worker", trace["t0"] - spawned)]
        else:
            steps = [("interpreter start (python -m, up to the module's first line)", trace["t0"] - spawned)]
        counts: dict[str, int] = {}
        in_main = 0.0
        for label, a, b in marks:
            counts[label] = counts.get(label, 0) + 1
            name = label if counts[label] == 1 else f"{label} #{counts[label]}"
            steps.append((name, b - a))
            if a >= main_start:
                in_main += b - a
        steps.append(("CLI Python between steps (click, building requests)", (main_end - main_start) - in_main))
        if served:
            steps.append(("exit status back to the client, client exits", exited - main_end))
        else:
            steps.append(("process exit (os._exit: no interpreter teardown)", exited - main_end))
        per_run.append(steps)
        totals.append(exited - spawned)
    names = [name for name, _ in per_run[0]]
    medians = []
    for index, name in enumerate(names):
        values = [steps[index][1] for steps in per_run if len(steps) > index and steps[index][0] == name]
        medians.append((name, statistics.median(values) * 1000))
    return medians, totals


@contextlib.contextmanager
def traced_cli_server(env: dict[str, str], scratch: Path) -> Iterator[None]:
    """The CLI server swapped for a traced one for the duration, then the real one back."""
    import socket

    config = Config(root=Path(env["MYDOCKER_ROOT"]), run=Path(env["MYDOCKER_RUN"]))

    def answers() -> bool:
        # ctl's health check would not count it: its command line is not `-m cli.forkserver`.
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            return probe.connect_ex(str(config.socket_path("cli"))) == 0

    run_checked([PYTHON, "-m", "services.common.ctl", "down", "cli"], env, cwd=REPO)
    with open(scratch / "traced-cli-server.log", "ab") as log:
        server = subprocess.Popen(
            [PYTHON, "-m", "bench.run_latency", "--trace-server"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while not answers():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the traced CLI server did not start: see {scratch / 'traced-cli-server.log'}")
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)
        run_checked([PYTHON, "-m", "services.common.ctl", "up", "cli"], env, cwd=REPO)


# --- the benchmark --------------------------------------------------------------------------------


def cleanup_mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        targets = [line.split()[4] for line in mountinfo if line.split()[4].startswith(str(root))]
    for target in reversed(targets):
        subprocess.run(["umount", "-l", target], check=False)
    return targets


def bench(args: argparse.Namespace, base: Path, state: dict, results: Results) -> None:
    root, run = base / "root", base / "run"
    parent = state["cgroup_parent"]
    from services.common.ctl import service_env

    env = service_env(Config(root=root, run=run))
    env["MYDOCKER_CGROUP_PARENT"] = parent
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    state["env"] = env

    # Everything built first (and synced), so no timing runs beside writeback of big files.
    busybox_tar = root / "image" / "busybox.tar"
    run_checked([str(REPO / "scripts" / "build-busybox-image"), str(busybox_tar)])
    runc = None
    if not args.no_runc:
        runc = ensure_tool("runc", "runc")
        runc_bundle(busybox_tar, base / "bundle")
        state["runc_root"] = base / "runc-state"
    large_name, large_tar, large_what = None, None, ""
    if not args.no_debian:
        say(f"cache: {args.cache}")
        large_tar = debian_tar(args.cache, args.mirror, state["late_deletes"])
        large_name, large_what = "debian", "debootstrap minbase"
        if large_tar is None:
            large_tar, large_name = fallback_tar(busybox_tar, base), "large"
            large_what = "FALLBACK: busybox + /usr/lib/python3*"
        shutil.copyfile(large_tar, root / "image" / f"{large_name}.tar")
    os.sync()

    run_checked([PYTHON, "-m", "services.common.ctl", "up"], env, cwd=REPO)
    state["up"] = True
    say(f"services up on {root} and {run}, cgroup parent {parent}; {args.runs} runs after {args.warmup} warm-up runs")

    n, w = args.runs, args.warmup
    # mydocker and runc interleaved, run by run.
    commands = {
        "mydocker run --rm busybox /bin/true": (lambda i: [LAUNCHER, "run", "--rm", "busybox", "/bin/true"], env),
        "  same, CLI in-process (no CLI server)": (
            lambda i: [LAUNCHER, "run", "--rm", "busybox", "/bin/true"],
            dict(env, MYDOCKER_CLI_SERVER="off"),
        ),
    }
    if runc is not None:
        prefix = f"mdk-bench-{uuid.uuid4().hex[:8]}"
        commands["runc run (busybox rootfs) /bin/true"] = (
            lambda i: [runc, "--root", str(state["runc_root"]), "run", "--bundle", str(base / "bundle"), f"{prefix}-{i + w}"],
            None,
        )
    for label, times in time_interleaved(commands, n, w, args.gap).items():
        note = f"interleaved with runc, {args.gap:g} s apart" if runc is not None and label.startswith("mydocker") else ""
        results.add(Figure(label, times, note))
    # A script's loop: each command starts as the one before ends, with that one's after-work still going.
    times, _ = time_runs(lambda i: [LAUNCHER, "run", "--rm", "busybox", "/bin/true"], env, n, w)
    results.add(Figure("mydocker run --rm busybox /bin/true, back to back", times, "no gap"))
    if runc is not None:
        times, _ = time_runs(
            lambda i: [runc, "--root", str(state["runc_root"]), "run", "--bundle", str(base / "bundle"), f"{prefix}-b2b-{i + w}"],
            None, n, w,
        )
        results.add(Figure("runc run (busybox rootfs) /bin/true, back to back", times, "no gap"))

    times, outputs = time_runs(lambda i: [LAUNCHER, "run", "-d", "busybox", "/bin/true"], env, n, w)
    results.add(Figure("mydocker run -d busybox /bin/true", times, "prints the id"))
    ids = [out.strip() for out in outputs]
    time.sleep(0.5)
    times = [timed([LAUNCHER, "rm", "-f", container_id], env)[0] for container_id in ids]
    results.add(Figure("mydocker rm -f (an exited -d container)", times))
    leftover = mydocker(env, "ps", "-a", "-q").split()
    if leftover:
        mydocker(env, "rm", "-f", *leftover)  # the -d warm-up runs

    if not args.no_breakdown:
        scratch = base / "traces"
        scratch.mkdir()
        plans = (("rm", True, "run --rm, through the CLI server"), ("detach", True, "run -d, through the CLI server"))
        with traced_cli_server(env, scratch):
            for mode, served, label in plans:
                steps, totals = breakdown(env, mode, served, n, min(w, 2), scratch)
                results.breakdowns[label] = steps
                results.add(Figure(f"  traced: {label}", totals))
        steps, totals = breakdown(env, "rm", False, n, min(w, 2), scratch)
        results.breakdowns["run --rm, CLI in-process"] = steps
        results.add(Figure("  traced: run --rm, CLI in-process", totals))
        leftover = mydocker(env, "ps", "-a", "-q").split()
        if leftover:
            mydocker(env, "rm", "-f", *leftover)

    if large_tar is not None:
        start = time.perf_counter()
        run_checked([LAUNCHER, "run", "--rm", large_name, "/bin/true"], env)
        cold = time.perf_counter() - start
        image_mib = mib(root / "image" / f"{large_name}.tar")
        results.add(Figure(f"mydocker run --rm {large_name} /bin/true: cold", [cold], f"1 run: hash + extract {image_mib:.0f} MiB once ({large_what})"))
        os.sync()  # the extraction's writeback must not land in the warm runs
        warm = time_interleaved(
            {
                "large": (lambda i: [LAUNCHER, "run", "--rm", large_name, "/bin/true"], env),
                "busybox": (lambda i: [LAUNCHER, "run", "--rm", "busybox", "/bin/true"], env),
            },
            n,
            w,
        )
        results.add(Figure(f"mydocker run --rm {large_name} /bin/true: warm", warm["large"], f"{image_mib:.0f} MiB image ({large_what})"))
        results.add(Figure("  beside it: run --rm busybox /bin/true", warm["busybox"], f"{mib(busybox_tar):.1f} MiB image, interleaved"))

    if not args.no_shim:
        from bench.shim_memory import pss_kib

        ids = []
        for _ in range(args.shim_containers):
            ids.append(mydocker(env, "run", "-d", "busybox", "sleep", "1000").strip())
        time.sleep(args.settle)
        records = json.loads(mydocker(env, "inspect", *ids))
        shims = [int(record["shim_pid"]) for record in records]
        values = [pss_kib(pid) / 1024 for pid in shims]
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100)"])
        try:
            time.sleep(1.0)
            bare_mib = pss_kib(bare.pid) / 1024
        finally:
            bare.kill()
            bare.wait()
        line = (
            f"idle shim PSS, {len(values)} `run -d busybox sleep 1000` running: mean {statistics.mean(values):.2f} MiB, "
            f"max {max(values):.2f}, min {min(values):.2f} (target {SHIM_TARGET_MIB}; bare python {bare_mib:.2f})"
        )
        results.lines.append(line)
        say(f"  {line}")
        mydocker(env, "rm", "-f", *ids)


def cleanup(base: Path, state: dict) -> None:
    """Containers, services, runc state, mounts, the cgroup parent, then the bulk deletes, in that order."""
    env = state.get("env")
    if env is not None and state.get("up"):
        ids = subprocess.run([LAUNCHER, "ps", "-a", "-q"], env=env, capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run([LAUNCHER, "rm", "-f", *ids], env=env, capture_output=True)
        subprocess.run([PYTHON, "-m", "services.common.ctl", "down"], env=env, cwd=REPO, capture_output=True)
    runc_root = state.get("runc_root")
    if runc_root is not None and Path(runc_root).exists():
        listed = subprocess.run(["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, text=True)
        for container_id in listed.stdout.split():
            subprocess.run(["runc", "--root", str(runc_root), "delete", "--force", container_id], capture_output=True)
    left = cleanup_mounts_below(base)
    if left:
        say(f"warning: mounts were left below {base} (unmounted now): {left}")
    from services.executor.cgroup_layout import CgroupLayout

    if not CgroupLayout.from_host(parent=state["cgroup_parent"]).remove_parent():
        say(f"warning: cgroup parent {state['cgroup_parent']} is still in use and was not removed")
    for path in [base, *state["late_deletes"]]:
        shutil.rmtree(path, ignore_errors=True)


def report(results: Results) -> None:
    say("")
    say(f"run latency, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, kernel {os.uname().release}, "
        f"load average {results.load_before} before, {loadavg()} after, "
        f"steal {steal_share(results.ticks_before, cpu_ticks()):.1f}% (other work on the host skews every figure)")
    say(TABLE_HEADER)
    for figure in results.figures:
        say(figure.row())
    for line in results.lines:
        say(line)
    say(f"peers measured on this machine for run --rm busybox /bin/true: {PEERS}")
    for label, steps in results.breakdowns.items():
        say("")
        say(f"where `{label.split(',')[0]} busybox /bin/true` goes,{label.split(',', 1)[1]} (traced, median ms per step):")
        total = 0.0
        for name, ms in steps:
            say(f"  {ms:7.1f}  {name}")
            total += ms
        say(f"  {total:7.1f}  sum")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per figure (at least 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before each figure")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the debootstrap tree and tar are kept")
    parser.add_argument("--mirror", default="", help="Debian mirror for debootstrap (default: debootstrap's own)")
    parser.add_argument("--shim-containers", type=int, default=10)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to let the shims go idle")
    parser.add_argument("--gap", type=float, default=0.1, help="seconds before each interleaved command (0: none)")
    parser.add_argument("--no-runc", action="store_true")
    parser.add_argument("--no-debian", action="store_true", help="skip the large image")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--no-shim", action="store_true")
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs must be at least 10: medians over fewer runs say little")
    if os.geteuid() != 0:
        print("needs root: namespaces, mounts and cgroups", file=sys.stderr)
        return 1

    base = Path(tempfile.mkdtemp(prefix="mdk-bench-", dir="/tmp"))
    state: dict = {"cgroup_parent": f"mdk-bench-{uuid.uuid4().hex[:8]}", "late_deletes": []}
    results = Results(load_before=loadavg())
    try:
        bench(args, base, state, results)
    finally:
        cleanup(base, state)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
