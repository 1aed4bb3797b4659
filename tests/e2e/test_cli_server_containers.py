"""./mydocker through the warm CLI server that scripts/up starts: real containers, signals, a killed client."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from services.common.config import Config
from services.common.ctl import REPO, service_pid
from tests.conftest import FRONTS, front_env, front_executable
from tests.e2e.conftest import scripts_up
from tests.waiting import wait_until

pytestmark = pytest.mark.root


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


@pytest.fixture(params=FRONTS)
def front(request, compiled_front: Path) -> str:
    """Each test runs from both fronts of ./mydocker: the compiled one (cli/front.c) and Python's."""
    return request.param


def _start(host, front: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(REPO / "mydocker"), *args],
        env=dict(host.env, MYDOCKER_CLI_SERVER="require", **front_env(front)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_scripts_up_starts_the_server_and_commands_go_through_it(host, front) -> None:
    config = Config(root=Path(host.env["MYDOCKER_ROOT"]), run=Path(host.env["MYDOCKER_RUN"]))
    assert service_pid(config, "cli") is not None
    env = dict(host.env, MYDOCKER_CLI_SERVER="require", **front_env(front))
    run = subprocess.run(
        [str(REPO / "mydocker"), "run", "-i", "--rm", "busybox", "sh", "-c", "cat; exit 3"],
        env=env, input="through the server\n", capture_output=True, text=True, timeout=60,
    )
    assert (run.returncode, run.stdout, run.stderr) == (3, "through the server\n", "")


def test_sigterm_to_the_client_reaches_the_container(host, front) -> None:
    script = 'trap "echo got-term; exit 7" TERM; echo ready; while :; do sleep 0.1; done'
    client = _start(host, front, "run", "--name", f"termed-{front}", "busybox", "sh", "-c", script)
    try:
        assert client.stdout.readline() == "ready\n"
        # The launcher became the front asked for (it execs it), and that front forwards the signal.
        assert os.readlink(f"/proc/{client.pid}/exe") == front_executable(front)
        client.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert (client.returncode, out, err) == (7, "got-term\n", "")


def test_a_killed_client_takes_its_worker_with_it(host, front) -> None:
    config = Config(root=Path(host.env["MYDOCKER_ROOT"]), run=Path(host.env["MYDOCKER_RUN"]))
    server = service_pid(config, "cli")
    assert server is not None
    # The spare waiting now is the worker that will serve the next command.
    wait_until(lambda: len(_children(server)) == 1, 20.0, "one spare worker")
    (worker,) = _children(server)
    client = _start(host, front, "run", "--name", f"orphaned-{front}", "busybox", "sh", "-c", "echo ready; sleep 60")
    try:
        assert client.stdout.readline() == "ready\n"
        assert worker in _children(server)
        client.kill()
        client.wait()
        wait_until(lambda: worker not in _children(server), 20.0, "the worker to end")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    # As with a killed in-process CLI, the container itself runs on until stopped.
    host.mydocker("rm", "-f", f"orphaned-{front}")


def test_services_restarted_while_a_spare_waits_serve_its_command(host, mydocker_config, service_tracker) -> None:
    """A spare worker is forked and warmed up before its command comes: nothing it holds may outlive a
    restart of a service (connecting ahead was tried, bench/README, and a broken connection failed)."""
    config = Config(root=Path(host.env["MYDOCKER_ROOT"]), run=Path(host.env["MYDOCKER_RUN"]))
    server = service_pid(config, "cli")
    env = dict(host.env, MYDOCKER_CLI_SERVER="require")
    for service in ("state", "storage", "executor"):
        wait_until(lambda: len(_children(server)) == 1, 20.0, "one spare worker")
        down = subprocess.run([str(REPO / "scripts/down"), service], env=env, capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        assert down.returncode == 0, down.stderr
        up = scripts_up(env)
        service_tracker.note(mydocker_config)
        assert up.returncode == 0, up.stdout + up.stderr
        run = subprocess.run([str(REPO / "mydocker"), "run", "--rm", "busybox", "echo", service], env=env,
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert (run.returncode, run.stdout, run.stderr) == (0, f"{service}\n", ""), f"after restarting {service}"
