"""Many CLIs at once: 30 loops of run -d, exec, rm -f, races for one name, and two cold starts of one new image."""

from __future__ import annotations

import io
import re
import tarfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.common.config import Config
from tests.e2e.conftest import Host, both_cli_modes, mounts_below, mydocker_cli
from tests.invariants import read_host, violations

# Every test twice: through the CLI server, and with the CLI in-process.
pytestmark = [pytest.mark.root, both_cli_modes]

LOOPS = 30
ITERATIONS = 3
RACES = 3
RACERS = 4
CONTAINER_ID = re.compile(r"[0-9]{10}")
# What must never reach a user, whatever the load.
FORBIDDEN = ("database is locked", "internal error", "Traceback")
COMMAND_TIMEOUT = 180


@dataclass
class Transcript:
    """Every command the threads ran, with its result, for the assertions after they all joined."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[tuple[list[str], int, str, str]] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)

    def run(self, host: Host, *args: str):
        result = mydocker_cli(host.env, *args, timeout=COMMAND_TIMEOUT)
        with self.lock:
            self.results.append((list(args), result.returncode, result.stdout, result.stderr))
        return result


def run_threads(targets: list[Callable[[], None]], transcript: Transcript) -> None:
    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                target()
            except BaseException as err:  # noqa: BLE001 - re-raised below, in the test's thread, with all the others
                with transcript.lock:
                    transcript.crashes.append(f"{type(err).__name__}: {err}")

        return body

    threads = [threading.Thread(target=guarded(target)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not transcript.crashes, transcript.crashes


def config_of(host: Host) -> Config:
    return Config(root=host.root, run=Path(host.env["MYDOCKER_RUN"]))


def test_thirty_loops_of_run_exec_rm_and_races_for_one_name(host: Host):
    transcript = Transcript()
    started_ids: list[str] = []
    winners: dict[str, list[str]] = {}
    barriers = [threading.Barrier(RACERS) for _ in range(RACES)]
    tag = uuid.uuid4().hex[:6]

    def loop(index: int) -> None:
        for iteration in range(ITERATIONS):
            name = f"c{tag}-{index}-{iteration}"
            run = transcript.run(host, "run", "-d", "--name", name, "busybox", "top")
            assert run.returncode == 0, f"run -d --name {name}: {run.stderr}"
            container_id = run.stdout.strip()
            with transcript.lock:
                started_ids.append(container_id)
            executed = transcript.run(host, "exec", container_id, "true")
            assert executed.returncode == 0, f"exec {container_id} true: {executed.stderr}"
            removed = transcript.run(host, "rm", "-f", container_id)
            assert removed.returncode == 0, f"rm -f {container_id}: {removed.stderr}"

    def racer() -> None:
        for race, barrier in enumerate(barriers):
            name = f"race{tag}-{race}"
            barrier.wait(timeout=COMMAND_TIMEOUT)
            run = transcript.run(host, "run", "-d", "--name", name, "busybox", "top")
            if run.returncode == 0:
                with transcript.lock:
                    winners.setdefault(name, []).append(run.stdout.strip())
                    started_ids.append(run.stdout.strip())
            else:
                assert "is already in use" in run.stderr and run.stderr.count("\n") <= 1, f"a loser of {name}: {run.stderr}"

    run_threads([*(lambda i=i: loop(i) for i in range(LOOPS)), *(racer for _ in range(RACERS))], transcript)

    for args, code, stdout, stderr in transcript.results:
        for text in FORBIDDEN:
            assert text.lower() not in (stdout + stderr).lower(), f"mydocker {' '.join(args)} (exit {code}) showed {text!r}: {stderr}"
    assert all(CONTAINER_ID.fullmatch(cid) for cid in started_ids), started_ids
    assert len(set(started_ids)) == len(started_ids) == LOOPS * ITERATIONS + RACES, "ids must be unique"
    assert sorted(winners) == [f"race{tag}-{race}" for race in range(RACES)]
    assert all(len(ids) == 1 for ids in winners.values()), f"a name was given twice: {winners}"

    config = config_of(host)
    cgroup_parent = host.env["MYDOCKER_CGROUP_PARENT"]
    assert violations(config, cgroup_parent) == []
    for (container_id,) in winners.values():
        host.mydocker("rm", "-f", container_id)
    assert host.mydocker("ps", "-a", "-q").stdout.split() == []
    leaked = read_host(config, cgroup_parent)
    assert mounts_below(host.root) == [], "leaked mounts"
    assert leaked.cgroups == [], "leaked cgroups"
    assert leaked.live_shims == {}, "leaked shims"
    assert leaked.overlay_dirs == [], "leaked rootfs directories"
    assert violations(config, cgroup_parent) == []


def cold_copy(source: Path, marker: str) -> bytes:
    """The image tar plus one file: new content, hence a new digest and a layer never extracted."""
    out = io.BytesIO()
    with tarfile.open(source) as original, tarfile.open(fileobj=out, mode="w") as copy:
        for member in original.getmembers():
            copy.addfile(member, original.extractfile(member) if member.isfile() else None)
        data = marker.encode()
        info = tarfile.TarInfo(f"etc/{marker}")
        info.size = len(data)
        copy.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_two_runs_of_a_new_image_at_the_same_moment_extract_it_once(host: Host):
    config = config_of(host)
    marker = f"cold-{uuid.uuid4().hex[:8]}"
    image = f"busybox-{marker}"
    # Dropped by hand, the seed's way: loaded and unpacked on first use (an import unpacks at once).
    (config.root / "image" / f"{image}.tar").write_bytes(cold_copy(config.root / "image" / "busybox.tar", marker))
    layers = config.root / "layers" / "sha256"
    before = set(layers.iterdir()) if layers.is_dir() else set()

    transcript = Transcript()
    barrier = threading.Barrier(2)
    outputs: list[str] = []

    def start() -> None:
        barrier.wait(timeout=COMMAND_TIMEOUT)
        result = transcript.run(host, "run", "--rm", image, "cat", f"/etc/{marker}")
        assert result.returncode == 0, result.stderr
        with transcript.lock:
            outputs.append(result.stdout)

    run_threads([start, start], transcript)
    assert outputs == [marker, marker]
    new_layers = set(layers.iterdir()) - before
    assert len(new_layers) == 1, f"expected one new layer, found {sorted(new_layers)}"
    (layer,) = new_layers
    log = config.log_path("storage").read_text()
    extractions = [line for line in log.splitlines() if " extracted " in line and str(layer) in line]
    assert len(extractions) == 1, f"{layer.name} extracted {len(extractions)} times:\n" + "\n".join(extractions)
    assert list((config.root / "layers" / "tmp").iterdir()) == []
    assert violations(config, host.env["MYDOCKER_CGROUP_PARENT"]) == []
