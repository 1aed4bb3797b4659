"""Reboot simulation: kill every shim and container, unmount everything, kill the services, scripts/up; all is exited and usable."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from services.common.config import Config
from services.common.ctl import PROCESSES, REPO, is_service_process, running_services
from services.executor import statefiles
from tests.e2e.conftest import mounts_below
from tests.invariants import hierarchy_parents, violations
from tests.waiting import wait_until

pytestmark = pytest.mark.root

EXIT_WAIT = 10.0


def config_of(host) -> Config:
    return Config(root=host.root, run=Path(host.env["MYDOCKER_RUN"]))


def inspect(host, container_id: str) -> dict:
    return json.loads(host.mydocker("inspect", container_id).stdout)[0]


def ps_status(host) -> dict[str, str]:
    """Container id -> its whole `ps -a` line (a status such as "exited (0)" spans two words)."""
    lines = host.mydocker("ps", "-a").stdout.splitlines()[1:]
    return {line.split()[0]: line for line in lines}


def kill_exact(pid: int, start_time: int, signum: int = signal.SIGKILL) -> bool:
    """Signal `pid` only if it is still the process that started at `start_time` (never a recycled pid)."""
    if not statefiles.is_alive(pid, start_time):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
    return True


def unmount_all_below(root: Path) -> list[str]:
    """Unmount every mount below `root`, deepest first, as a shutdown would; returns what was unmounted."""
    targets = sorted(mounts_below(root), key=lambda path: path.count("/"), reverse=True)
    for target in targets:
        subprocess.run(["umount", target], check=True, capture_output=True)
    return targets


@pytest.fixture
def volume_dir():
    path = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("run_dir", ["kept", "wiped"])
def test_after_a_reboot_every_record_is_exited_and_rm_and_run_work(host, volume_dir, run_dir):
    """`wiped` also empties MYDOCKER_RUN and the container cgroups, as a real reboot does (/run is a tmpfs)."""
    config = config_of(host)
    cgroup_parent = host.env["MYDOCKER_CGROUP_PARENT"]
    running = [
        host.mydocker("run", "-d", "--name", "top", "busybox", "top").stdout.strip(),
        host.mydocker("run", "-d", "--name", "vol", "-v", f"{volume_dir}:/data", "busybox", "sh", "-c", "echo x > /data/x; exec top").stdout.strip(),
        host.mydocker("run", "-d", "--name", "ticker", "busybox", "sh", "-c", "while :; do echo tick; sleep 0.2; done").stdout.strip(),
    ]
    exited = host.mydocker("run", "-d", "--name", "done", "busybox", "true").stdout.strip()
    wait_until(lambda: "exited (0)" in ps_status(host)[exited], EXIT_WAIT, "the short container to exit")
    assert not violations(config, cgroup_parent)

    # The reboot: every shim and container process dies, with no chance to record anything.
    victims = []
    for container_id in running:
        record = inspect(host, container_id)
        assert record["status"] == "CONTAINER_STATUS_RUNNING", record
        victims.append((record["pid"], int(record["pid_start_time"])))
        shim = statefiles.parse_pid(statefiles.read_text(str(config.run / container_id / statefiles.SHIM_PID)))
        assert statefiles.is_alive(*shim), f"no live shim for {container_id}: {shim}"
        victims.append(shim)
    # All frozen first, then all killed: a shim must not see its container die and record the exit,
    # which a one-by-one kill would allow (a reboot gives nobody that chance).
    for pid, start in victims:
        assert kill_exact(pid, start, signal.SIGSTOP), f"pid {pid} was gone before the reboot"
    for pid, start in victims:
        assert kill_exact(pid, start), f"pid {pid} died while stopped"
    wait_until(lambda: not any(statefiles.is_alive(pid, start) for pid, start in victims), EXIT_WAIT, "the shims and containers to die")
    unmounted = unmount_all_below(config.root)
    assert any(target.endswith("/data") for target in unmounted), f"the volume was not mounted: {unmounted}"
    services = running_services(config)
    assert set(services) == set(PROCESSES), services
    for service, pid in services.items():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(is_service_process(pid, service) for service, pid in services.items()), EXIT_WAIT, "the services to die")
    if run_dir == "wiped":
        for entry in config.run.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for parent in hierarchy_parents(cgroup_parent):
            for container_id in (*running, exited):
                with contextlib.suppress(FileNotFoundError):
                    (parent / container_id).rmdir()

    up = subprocess.run([str(REPO / "scripts/up")], env=host.env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, f"scripts/up after the reboot failed:\n{up.stdout}{up.stderr}"

    statuses = ps_status(host)
    assert set(statuses) == {*running, exited}, statuses
    for container_id, line in statuses.items():
        assert " exited (" in line, f"not exited after the reboot: {line}"
    assert "exited (0)" in statuses[exited], "the exit code recorded before the reboot was lost"
    assert violations(config, cgroup_parent) == []

    for container_id in (*running, exited):
        host.mydocker("rm", container_id)
    assert host.mydocker("ps", "-a", "-q").stdout.split() == []
    assert (volume_dir / "x").read_text() == "x\n", "the volume's host data must survive"

    assert host.mydocker("run", "--rm", "busybox", "echo", "after the reboot").stdout == "after the reboot\n"
    again = host.mydocker("run", "-d", "--name", "top", "busybox", "top").stdout.strip()
    assert inspect(host, again)["status"] == "CONTAINER_STATUS_RUNNING"
    assert violations(config, cgroup_parent) == []
    host.mydocker("rm", "-f", again)
    assert violations(config, cgroup_parent) == []
