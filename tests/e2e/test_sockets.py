"""Sockets, pidfiles and locks deleted under the running services: served again, nothing in flight cut, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from services.common.client import check_health
from services.common.config import SERVICES, Config
from services.common.ctl import PROCESSES, REPO, cli_server_health, service_pid
from tests.e2e.conftest import both_cli_modes, one_line_error, scripts_up

pytestmark = pytest.mark.root

# The services look every WATCH_SECONDS (1 s); generous for a loaded 2-core CI machine.
DEADLINE = 20.0


def config_of(host) -> Config:
    return Config(root=Path(host.env["MYDOCKER_ROOT"]), run=Path(host.env["MYDOCKER_RUN"]))


def wait_for(condition, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def serving(config: Config, process: str) -> bool:
    if process == "cli":
        return cli_server_health(config) == "SERVING"
    return check_health(config, process).status == "SERVING"


def bound_again_lines(config: Config, process: str) -> list[str]:
    return [line for line in config.log_path(process).read_text().splitlines() if "bound it again" in line]


def test_deleted_sockets_pidfiles_and_locks_are_made_again_and_calls_in_flight_go_on(host) -> None:
    config = config_of(host)
    pids = {process: service_pid(config, process) for process in PROCESSES}
    assert None not in pids.values()
    # Attached: its stdin stream and WaitContainer are calls in flight on the executor's first server.
    attached = subprocess.Popen(
        [str(REPO / "mydocker"), "run", "-i", "--name", "attached", "busybox", "sh", "-c",
         "echo ready; read line; echo got $line"],
        env=host.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert attached.stdout.readline() == "ready\n"
        for process in PROCESSES:
            for path in (config.socket_path(process), config.pid_path(process), config.lock_path(process)):
                path.unlink()
        for process in PROCESSES:
            wait_for(
                lambda: serving(config, process) and service_pid(config, process) == pids[process]
                and config.lock_path(process).exists(),
                f"{process} to serve again",
            )
        assert "attached" in host.mydocker("ps").stdout
        # scripts/up finds every one by its pidfile, serving: nothing started twice.
        up = scripts_up(host.env)
        assert up.returncode == 0, up.stderr
        for process in PROCESSES:
            assert f"{process}: already serving (pid {pids[process]}), SERVING" in up.stdout

        attached.stdin.write("hello\n")
        attached.stdin.close()
        assert attached.wait(timeout=30) == 0, attached.stderr.read()
        assert (attached.stdout.read(), attached.stderr.read()) == ("got hello\n", "")
    finally:
        if attached.poll() is None:
            attached.kill()
            attached.wait()

    # A regular file put where a socket was is replaced by a socket.
    for process in PROCESSES:
        config.socket_path(process).unlink()
        config.socket_path(process).write_text("not a socket")
    for process in PROCESSES:
        wait_for(lambda: serving(config, process), f"{process} to serve again")
    assert host.mydocker("run", "--rm", "busybox", "echo", "works").stdout == "works\n"
    assert {process: service_pid(config, process) for process in PROCESSES} == pids
    for process in SERVICES:
        assert [line.split(": ", 1)[1] for line in bound_again_lines(config, process)] == [
            f"{process}: socket {config.socket_path(process)} was deleted: bound it again",
            f"{process}: socket {config.socket_path(process)} was replaced: bound it again",
        ]


@both_cli_modes
def test_an_unreachable_service_is_named_with_what_to_do(host) -> None:
    config = config_of(host)
    env = host.env
    state = service_pid(config, "state")
    socket = config.socket_path("state")
    # Stopped, it cannot bind its socket again yet: the line says it will.
    os.kill(state, signal.SIGSTOP)
    try:
        socket.unlink()
        line = one_line_error(subprocess.run(
            [str(REPO / "mydocker"), "ps"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        ))
        assert line == (
            f"mydocker: the state service (pid {state}) has no socket at {socket}: it binds a new one within seconds; "
            f"if it does not, see {config.log_path('state')}"
        )
    finally:
        os.kill(state, signal.SIGCONT)
    wait_for(lambda: serving(config, "state"), "state to serve again")

    down = subprocess.run(
        [str(REPO / "scripts/down"), *SERVICES], env=host.env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert down.returncode == 0, down.stderr
    line = one_line_error(subprocess.run(
        [str(REPO / "mydocker"), "ps"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    ))
    assert line == f"mydocker: the state service is not running (no socket at {socket}): run scripts/up"
