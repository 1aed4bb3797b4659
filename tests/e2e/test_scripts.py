"""scripts/up, scripts/status, scripts/down and ./mydocker as a newcomer runs them, on temp roots."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest

from protos.state.v1 import state_pb2, state_pb2_grpc
from services.common import procinfo
from services.common.config import SERVICES, Config, unix_target
from services.common.ctl import PROCESSES, REPO, is_service_process, service_env

SERVING = re.compile(r"\bSERVING\b")


class Checkout:
    """Runs the repo's scripts and ./mydocker against one temp config, noting every service pid it sees."""

    def __init__(self, config: Config, tracker):
        self.config = config
        self.tracker = tracker

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(REPO / command[0]), *command[1:]],
            cwd=REPO,
            env=service_env(self.config),
            capture_output=True,
            text=True,
            # scripts/up may install the venv on a fresh machine.
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        self.pids()
        if check:
            assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        return result

    def pids(self) -> dict[str, int]:
        return self.tracker.note(self.config)


@pytest.fixture
def checkout(mydocker_config: Config, service_tracker) -> Iterator[Checkout]:
    checkout = Checkout(mydocker_config, service_tracker)
    try:
        yield checkout
    finally:
        # service_tracker then kills whatever this left alive.
        checkout.run("scripts/down", check=False)


def serving_rows(output: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines() if SERVING.search(line) and line.split()[0] in SERVICES]


def test_up_is_idempotent_and_everything_serves(checkout: Checkout) -> None:
    checkout.run("scripts/up")
    info = checkout.run("mydocker", "system", "info")
    assert serving_rows(info.stdout) == list(SERVICES)
    first = checkout.pids()
    assert sorted(first) == sorted(PROCESSES)

    again = checkout.run("scripts/up")
    assert "started" not in again.stdout
    assert checkout.pids() == first

    status = checkout.run("scripts/status")
    lines = status.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(PROCESSES)
    for line in lines:
        service, pid, socket, health = line.split()
        assert (pid, socket, health) == (str(first[service]), str(checkout.config.socket_path(service)), "SERVING")


def _state_stub(config: Config) -> tuple[grpc.Channel, state_pb2_grpc.StateServiceStub]:
    channel = grpc.insecure_channel(unix_target(config.socket_path("state")))
    return channel, state_pb2_grpc.StateServiceStub(channel)


def test_kill_9_of_state_then_up_loses_no_record(checkout: Checkout) -> None:
    checkout.run("scripts/up")
    # Owned by this live process: work in progress, which the repair run by scripts/up leaves alone.
    me = state_pb2.Owner(pid=os.getpid(), pid_start_time=procinfo.proc_start_time(os.getpid()))
    channel, stub = _state_stub(checkout.config)
    with channel:
        created = [
            stub.CreateContainer(state_pb2.CreateContainerRequest(image="busybox", command=["top"], owner=me), timeout=10).container.id
            for _ in range(2)
        ]
    state_pid = checkout.pids()["state"]
    os.kill(state_pid, signal.SIGKILL)
    assert _wait_gone(state_pid)

    restarted = checkout.run("scripts/up")
    assert "state: started" in restarted.stdout
    assert checkout.pids()["state"] != state_pid

    channel, stub = _state_stub(checkout.config)
    with channel:
        listed = stub.ListContainers(state_pb2.ListContainersRequest(), timeout=10).containers
    assert sorted(container.id for container in listed) == sorted(created)
    for container in listed:
        assert list(container.command) == ["top"]
    ps = checkout.run("mydocker", "ps", "-a", "-q")
    assert sorted(ps.stdout.split()) == sorted(created)


def _wait_gone(pid: int) -> bool:
    """True once `pid` is no longer the state service (dead or a zombie)."""
    deadline = time.monotonic() + 10
    while is_service_process(pid, "state"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_down_stops_everything_and_cleans_up(checkout: Checkout) -> None:
    checkout.run("scripts/up")
    pids = checkout.pids()
    checkout.run("scripts/down")
    for service in PROCESSES:
        assert not is_service_process(pids[service], service)
        assert not checkout.config.pid_path(service).exists()
        assert not checkout.config.socket_path(service).exists()
    status = checkout.run("scripts/status", check=False)
    assert status.returncode == 1
    assert all(line.endswith("UNREACHABLE") for line in status.stdout.splitlines())
