"""cgroup v2 on a real kernel: the limits in the v2 files, OOM, pids.max, cpu.max, an outside freezer, removal.

scripts/test-cgroup2 runs these in a QEMU guest with cgroup2 alone at /sys/fs/cgroup. They are marked
`cgroup2`, which tests/e2e/conftest.py deselects unless MYDOCKER_TEST_CGROUP2=1; selected on a host that is
not cgroup v2, they fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.executor.v1 import executor_pb2 as pb
from protos.executor.v1 import executor_pb2_grpc
from protos.types.v1 import types_pb2
from services.common.config import unix_target
from services.common.ctl import REPO
from services.executor.cgroups import DEFAULT_CGROUP_ROOT, detect_cgroup_mode, parse_counter, parse_proc_cgroup
from tests.busybox import busybox_rootfs
from tests.conftest import ServiceTracker, temp_config_dir
from tests.e2e.conftest import Host, running_host
from tests.waiting import process_gone, wait_until

pytestmark = [pytest.mark.root, pytest.mark.cgroup2]

ROOT = DEFAULT_CGROUP_ROOT


@pytest.fixture(scope="module", autouse=True)
def cgroup_v2_host() -> None:
    """Every test here needs the unified hierarchy: on any other host they fail, all of them, saying why."""
    mode = detect_cgroup_mode()
    assert mode == "v2", f"cgroup mode is {mode}, not v2: run these through scripts/test-cgroup2"


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """One set of services for the module (a start takes a minute in the emulated guest); removed at the end."""
    tracker = ServiceTracker()
    try:
        with temp_config_dir() as config, running_host(config, tracker, "mdk-v2") as started:
            yield started
    finally:
        tracker.kill_leftovers()


def run_detached(host: Host, *args: str) -> str:
    return host.mydocker("run", "-d", *args).stdout.strip()


def inspect(host: Host, reference: str) -> dict:
    return json.loads(host.mydocker("inspect", reference).stdout)[0]


def cgroup_of(pid: int) -> Path:
    """The v2 cgroup directory of process `pid` (its "0::" line)."""
    return ROOT / parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())[""].lstrip("/")


def container_cgroup(host: Host, container_id: str) -> Path:
    """The container's cgroup, where its init is, checked against where the executor says it put it."""
    entry = inspect(host, container_id)
    directory = cgroup_of(int(entry["live"]["pid"]))
    assert directory.name == container_id and directory.parent == ROOT / host.cgroup_parent, directory
    return directory


def read(directory: Path, name: str) -> str:
    return (directory / name).read_text().strip()


def counter(directory: Path, name: str, key: str) -> int:
    return parse_counter((directory / name).read_text(), key)


def test_the_host_is_cgroup_v2_only_and_the_executor_says_so(host):
    assert not (ROOT / "unified").exists()
    assert {"cpu", "cpuset", "memory", "pids"} <= set(read(ROOT, "cgroup.controllers").split())
    assert "cgroups: v2" in host.mydocker("system", "info").stdout


def test_limits_land_in_the_v2_files_of_a_leaf_below_the_parent(host):
    container_id = run_detached(
        host, "-m", "64m", "--cpus", "0.5", "--cpuset", "0", "--pids-limit", "20", "busybox", "top"
    )
    directory = container_cgroup(host, container_id)
    assert read(directory, "memory.max") == str(64 << 20)
    if (directory / "memory.swap.max").exists():
        # No swap beyond the limit, so the OOM killer fires at it.
        assert read(directory, "memory.swap.max") == "0"
    assert read(directory, "cpu.max") == "50000 100000"
    assert read(directory, "cpuset.cpus") == "0"
    assert read(directory, "pids.max") == "20"
    # The parent passes every controller down and, by the no-internal-process rule, holds no process itself.
    parent = directory.parent
    assert {"cpu", "cpuset", "memory", "pids"} <= set(read(parent, "cgroup.subtree_control").split())
    assert read(parent, "cgroup.procs") == ""
    # The shims are in a leaf of their own beside the containers', not in the container's.
    shim_pid = int(inspect(host, container_id)["live"]["shim_pid"])
    assert cgroup_of(shim_pid) == parent / "shims"
    assert read(directory, "cgroup.type") == "domain"

    # Without limits every file reads "max".
    plain = container_cgroup(host, run_detached(host, "busybox", "top"))
    assert (read(plain, "memory.max"), read(plain, "pids.max"), read(plain, "cpu.max")) == ("max", "max", "max 100000")
    host.mydocker("rm", "-f", container_id, plain.name)


def test_a_memory_hog_is_oom_killed_and_ps_and_inspect_say_so(host):
    hog = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo done"
    name = f"hog-{uuid.uuid4().hex[:6]}"
    result = host.mydocker("run", "--name", name, "-m", "32m", "busybox", "sh", "-c", hog, check=False)
    assert result.returncode == 137, result
    assert "done" not in result.stdout
    rows = [line for line in host.mydocker("ps", "-a").stdout.splitlines() if f" {name} " in line]
    assert len(rows) == 1 and "exited (137, OOM killed)" in rows[0], rows
    assert inspect(host, name)["oom_killed"] is True
    host.mydocker("rm", name)


def test_pids_max_caps_a_fork_storm_and_the_container_survives(host):
    # The storm runs in a subshell of the container's own shell, which then carries on without forking.
    storm = (
        "(for i in $(seq 30); do sleep 1000 >/dev/null 2>&1 </dev/null & done; echo all-started); "
        "echo survived; exec sleep 1000"
    )
    container_id = run_detached(host, "--pids-limit", "8", "busybox", "sh", "-c", storm)
    directory = container_cgroup(host, container_id)
    assert read(directory, "pids.max") == "8"
    logs = lambda: host.mydocker("logs", container_id).stdout  # noqa: E731
    assert wait_until(lambda: "survived" in logs(), timeout=60, what="the shell to survive the storm")
    assert "all-started" not in logs()
    # The kernel refused forks at the limit, and never let the cgroup past it.
    assert counter(directory, "pids.events", "max") > 0
    assert int(read(directory, "pids.current")) <= 8
    assert inspect(host, container_id)["status"] == "CONTAINER_STATUS_RUNNING"
    host.mydocker("rm", "-f", container_id)
    assert not directory.exists()


def test_cpu_max_throttles_a_busy_loop(host):
    container_id = run_detached(host, "--cpus", "0.1", "busybox", "sh", "-c", "while :; do :; done")
    directory = container_cgroup(host, container_id)
    assert read(directory, "cpu.max") == "10000 100000"
    # The scheduler throttles the loop period after period: proof the quota holds, with no timing guess.
    assert wait_until(
        lambda: counter(directory, "cpu.stat", "nr_throttled") >= 3, timeout=60, what="the loop to be throttled 3 times"
    )
    assert counter(directory, "cpu.stat", "throttled_usec") > 0
    host.mydocker("rm", "-f", container_id)


def test_an_outside_freezer_stops_the_container_and_rm_still_removes_it(host):
    """cgroup.freeze, as systemd's `freeze` or a checkpointer would use it: the container stops using CPU, and a
    frozen container is still killed and removed (v2 lets SIGKILL through a freeze, v1 did not)."""
    container_id = run_detached(host, "busybox", "sh", "-c", "while :; do :; done")
    directory = container_cgroup(host, container_id)
    assert read(directory, "cgroup.freeze") == "0"
    usage = lambda: counter(directory, "cpu.stat", "usage_usec")  # noqa: E731
    start = usage()
    assert wait_until(lambda: usage() > start, timeout=30, what="the loop to use CPU")

    (directory / "cgroup.freeze").write_text("1")
    assert wait_until(lambda: counter(directory, "cgroup.events", "frozen") == 1, timeout=30, what="the freeze")
    frozen_at = usage()
    # Watched for a second, the frozen loop's counter does not move.
    watch_until = time.monotonic() + 1.0
    while time.monotonic() < watch_until:
        assert usage() == frozen_at
        time.sleep(0.05)

    (directory / "cgroup.freeze").write_text("0")
    assert wait_until(lambda: counter(directory, "cgroup.events", "frozen") == 0, timeout=30, what="the thaw")
    assert wait_until(lambda: usage() > frozen_at, timeout=30, what="the thawed loop to use CPU again")

    (directory / "cgroup.freeze").write_text("1")
    assert wait_until(lambda: counter(directory, "cgroup.events", "frozen") == 1, timeout=30, what="the freeze")
    host.mydocker("rm", "-f", container_id)
    assert not directory.exists()
    assert container_id not in host.mydocker("ps", "-a", "-q").stdout.split()


def test_the_device_program_denies_what_the_list_leaves_out_and_privileged_allows_it(host):
    """On v2 the device rules are an eBPF program on the container's cgroup: mknod works, open does not."""
    probe = "mknod /tmp/loop-control c 10 237 && exec 3</tmp/loop-control && echo opened"
    denied = host.mydocker("run", "--rm", "busybox", "sh", "-c", probe, check=False)
    assert denied.returncode != 0 and "opened" not in denied.stdout
    assert "Operation not permitted" in denied.stderr, denied.stderr
    allowed = host.mydocker("run", "--rm", "--privileged", "busybox", "sh", "-c", probe, check=False)
    assert allowed.stdout == "opened\n", allowed


def test_rm_removes_the_container_cgroup_and_leaves_the_parent_to_the_others(host):
    first = run_detached(host, "busybox", "top")
    second = run_detached(host, "busybox", "top")
    first_dir, second_dir = container_cgroup(host, first), container_cgroup(host, second)
    host.mydocker("rm", "-f", first)
    assert not first_dir.exists()
    assert second_dir.exists() and read(second_dir, "cgroup.procs") != ""
    # A stopped container keeps its record but no process: its cgroup holds nothing; rm takes the rest.
    host.mydocker("stop", "-t", "1", second)
    assert not second_dir.exists() or read(second_dir, "cgroup.procs") == ""
    host.mydocker("rm", second)
    assert not second_dir.exists()
    assert not {first, second} & {p.name for p in (ROOT / host.cgroup_parent).iterdir()}


def test_rm_removes_cgroups_a_privileged_container_nested_in_its_own(host):
    """A privileged container may mount cgroup2 (its cgroup namespace shows its own cgroup as the root) and nest
    cgroups, as systemd or a docker-in-docker would: rm -f kills their members and removes them, deepest first."""
    nest = (
        "mkdir /tmp/cg && mount -t cgroup2 none /tmp/cg && mkdir -p /tmp/cg/inner/deeper && "
        "sh -c 'echo $$ > /tmp/cg/inner/deeper/cgroup.procs && exec sleep 1000' & exec sleep 1000"
    )
    container_id = run_detached(host, "--privileged", "busybox", "sh", "-c", nest)
    directory = container_cgroup(host, container_id)
    deeper = directory / "inner" / "deeper"
    assert wait_until(lambda: deeper.is_dir() and read(deeper, "cgroup.procs"), timeout=60, what="a member in inner/deeper")
    (member,) = map(int, read(deeper, "cgroup.procs").split())
    host.mydocker("rm", "-f", container_id)
    assert not directory.exists()
    assert process_gone(member)


# -- an executor alone in a cgroup of its own (a systemd service unit) ---------------------------------------


@pytest.fixture
def unit_cgroup() -> Iterator[Path]:
    """An empty cgroup below the root, as systemd makes one per service; removed with everything below it."""
    directory = ROOT / f"mdk-v2-unit-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    try:
        yield directory
    finally:
        for below in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if below.is_dir():
                below.rmdir()
        directory.rmdir()


def test_an_executor_alone_in_its_unit_cgroup_moves_into_a_leaf_and_runs_limited_containers(unit_cgroup):
    """The no-internal-process rule: controllers can be enabled below the unit's cgroup only once no process is
    in it, so the executor moves itself into `executor` (CgroupLayout.prepare) and containers go beside it."""
    with temp_config_dir() as config:
        env = {key: value for key, value in os.environ.items() if key != "MYDOCKER_CGROUP_PARENT"}
        env["PYTHONPATH"] = str(REPO)

        def join_unit() -> None:
            (unit_cgroup / "cgroup.procs").write_text("0")

        server = subprocess.Popen(
            [sys.executable, "-m", "services.executor", "--root", str(config.root), "--run", str(config.run)],
            cwd=REPO, env=env, preexec_fn=join_unit,
        )
        container_id = f"{7100000000 + os.getpid() % 100000}"
        try:
            with busybox_rootfs(config.root) as rootfs, grpc.insecure_channel(
                unix_target(config.socket_path("executor"))
            ) as channel:
                grpc.channel_ready_future(channel).result(timeout=120)
                stub = executor_pb2_grpc.ExecutorServiceStub(channel)
                assert cgroup_of(server.pid) == unit_cgroup / "executor"
                assert read(unit_cgroup, "cgroup.procs") == ""
                created = stub.CreateContainer(
                    pb.CreateContainerRequest(
                        id=container_id,
                        hostname="box",
                        rootfs_path=str(rootfs),
                        process=pb.ProcessSpec(args=["sleep", "1000"]),
                        resources=types_pb2.Resources(memory_bytes=64 << 20, pids_limit=16),
                    ),
                    timeout=60,
                ).process
                directory = cgroup_of(created.pid)
                assert unit_cgroup in directory.parents and directory.name == container_id
                assert read(directory, "memory.max") == str(64 << 20) and read(directory, "pids.max") == "16"
                stub.DeleteContainer(pb.DeleteContainerRequest(id=container_id, force=True), timeout=60)
                assert not directory.exists()
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            # Shims outlive their executor by design: any left in the unit's cgroup are ours to end.
            for leftover in sorted(unit_cgroup.rglob("cgroup.procs")):
                for pid in leftover.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + 30
            while any(p.read_text().strip() for p in unit_cgroup.rglob("cgroup.procs")) and time.monotonic() < deadline:
                time.sleep(0.05)
