"""The warm CLI server through its socket: ./mydocker answers the same through it as in-process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.config import Config
from services.common.ctl import REPO, cli_server_health, is_service_process, service_pid
from tests.conftest import FRONTS, front_env

START_TIMEOUT = 30.0


@pytest.fixture
def config(temp_config: Config) -> Config:
    return temp_config


def _env(config: Config, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MYDOCKER_")}
    env.update(MYDOCKER_ROOT=str(config.root), MYDOCKER_RUN=str(config.run), PYTHONPATH=str(REPO), **extra)
    return env


def _wait(condition, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"the CLI server did not start: {log.read_text()}"
        time.sleep(0.05)


@pytest.fixture
def server(config: Config) -> Iterator[subprocess.Popen]:
    config.root.mkdir(parents=True)
    log = open(config.root / "cli.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.forkserver"], cwd=REPO, env=_env(config), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait(lambda: cli_server_health(config) == "SERVING", proc, config.root / "cli.log")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        log.close()


@pytest.fixture(autouse=True)
def _both_fronts_built(compiled_front: Path) -> None:
    """Every test here may run either front of ./mydocker."""


def mydocker(config: Config, *args: str, mode: str, front: str = "compiled", cwd: Path = REPO, stdin=subprocess.DEVNULL, env=None, **kwargs):
    return subprocess.run(
        [str(REPO / "mydocker"), *args],
        env=_env(config, MYDOCKER_CLI_SERVER=mode, **front_env(front), **(env or {})),
        cwd=cwd,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def same_both_ways(config: Config, *args: str, cwd: Path = REPO, env=None) -> subprocess.CompletedProcess[str]:
    """Through the server from each front, and in-process from each: four times the same answer."""
    answers = {
        (front, mode): mydocker(config, *args, mode=mode, front=front, cwd=cwd, env=env)
        for front in FRONTS
        for mode in ("require", "off")
    }
    outcomes = {key: (result.returncode, result.stdout, result.stderr) for key, result in answers.items()}
    assert len(set(outcomes.values())) == 1, outcomes
    return answers["compiled", "require"]


def test_commands_answer_the_same_through_the_server(config: Config, server) -> None:
    version = same_both_ways(config, "version")
    assert version.returncode == 0 and version.stdout.startswith("mydocker ")
    assert "Usage: mydocker" in same_both_ways(config, "--help").stdout
    usage = same_both_ways(config, "run")
    assert usage.returncode == 2 and "Missing argument" in usage.stderr


def test_errors_exit_statuses_and_the_clients_environment(config: Config, server) -> None:
    # No state service: the worker reads MYDOCKER_RUN from the client's environment.
    ps = same_both_ways(config, "ps")
    assert ps.returncode == 1
    assert ps.stderr.strip().splitlines() == [
        f"mydocker: the state service is not running (no socket at {config.socket_path('state')}): run scripts/up"
    ]


def test_the_worker_works_in_the_clients_directory(config: Config, server, tmp_path: Path) -> None:
    missing = same_both_ways(config, "import", "here.tar", "img", cwd=tmp_path)
    assert missing.stderr.strip() == "mydocker: cannot read here.tar: No such file or directory"
    (tmp_path / "here.tar").write_bytes(b"")
    found = same_both_ways(config, "import", "here.tar", "img", cwd=tmp_path)
    assert "the storage service is not running" in found.stderr


@pytest.mark.parametrize("front", FRONTS)
def test_require_without_a_server_is_one_line(config: Config, front: str) -> None:
    result = mydocker(config, "version", mode="require", front=front)
    assert result.returncode == 1
    assert result.stderr == (
        f"mydocker: no CLI server answers at {config.socket_path('cli')} (MYDOCKER_CLI_SERVER=require): run scripts/up\n"
    )
    assert mydocker(config, "version", mode="", front=front).stdout.startswith("mydocker ")


def test_bytes_that_are_not_utf8_get_the_same_line_from_every_front(config: Config, server) -> None:
    refused = same_both_ways(config, "run", "busybox", "echo", os.fsdecode(b"caf\xe9"))
    assert refused.returncode == 1
    assert refused.stderr.startswith("mydocker: argument 4 'caf\\xe9' is not valid UTF-8")


def test_a_closed_stdin_runs_the_command_in_process(config: Config, server) -> None:
    """The front's directory fd would take the closed fd's number and reach the worker as its stdin."""
    for front in FRONTS:
        result = subprocess.run(
            ["sh", "-c", 'exec "$0" version <&-', str(REPO / "mydocker")],
            env=_env(config, **front_env(front)), capture_output=True, text=True, timeout=60,
        )
        assert (result.returncode, result.stderr) == (0, ""), front
        assert result.stdout.startswith("mydocker ")


def test_a_command_too_big_for_one_packet_runs_in_process(config: Config, server) -> None:
    # The environment travels in the request: 100 KiB of it cannot go through the server's 64 KiB packets.
    big = {"MYDOCKER_TEST_PADDING": "x" * 100_000}
    for front in FRONTS:
        result = mydocker(config, "version", mode="", front=front, env=big)
        assert (result.returncode, result.stderr) == (0, ""), front
        assert result.stdout.startswith("mydocker ")
        assert mydocker(config, "version", mode="require", front=front, env=big).returncode == 1


def test_a_killed_server_leaves_commands_working(config: Config, server) -> None:
    pid = service_pid(config, "cli")
    assert pid == server.pid
    os.kill(pid, signal.SIGKILL)
    server.wait(timeout=10)
    # Its socket is left behind, but nobody answers on it: the CLI runs in-process.
    assert config.socket_path("cli").exists()
    assert mydocker(config, "version", mode="").stdout.startswith("mydocker ")
    assert mydocker(config, "version", mode="require").returncode == 1


def test_sigterm_stops_the_server_and_removes_its_socket(config: Config, server) -> None:
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=15) == 0
    assert not config.socket_path("cli").exists()
    assert not config.pid_path("cli").exists()
    assert not is_service_process(server.pid, "cli")


def test_a_source_change_restarts_the_server_with_the_new_code(tmp_path: Path) -> None:
    """On a copy of the CLI's source (the checkout's own is never touched): a changed file means a fresh server."""
    copy = tmp_path / "checkout"
    (copy / "services").mkdir(parents=True)
    for part in ("cli", "protos", "services/common"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "services" / "__init__.py", copy / "services")
    shutil.copy(REPO / "mydocker", copy)
    (copy / ".venv").symlink_to(REPO / ".venv")
    config = Config(root=tmp_path / "root", run=tmp_path / "run")
    env = dict(_env(config), PYTHONPATH=str(copy))
    with open(tmp_path / "server.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli.forkserver"], cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def serving() -> bool:
            return cli_server_health(config) == "SERVING"

        def version(mode: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(copy / "mydocker"), "version"], env=dict(env, MYDOCKER_CLI_SERVER=mode),
                capture_output=True, text=True, timeout=60,
            )

        _wait(serving, proc, tmp_path / "server.log")
        assert version("require").returncode == 0
        (copy / "cli" / "system.py").write_text(
            (copy / "cli" / "system.py").read_text().replace('f"mydocker {VERSION}', 'f"mydocker-changed {VERSION}')
        )
        # The command that notices runs in-process (here: refused, as asked), on the new code either way.
        assert version("").stdout.startswith("mydocker-changed ")
        _wait(serving, proc, tmp_path / "server.log")
        assert service_pid(config, "cli") == proc.pid  # the same process, re-executed
        served = version("require")
        assert served.returncode == 0 and served.stdout.startswith("mydocker-changed "), served.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_a_deleted_socket_pidfile_and_lock_are_made_again(config: Config, server) -> None:
    socket, log = config.socket_path("cli"), config.root / "cli.log"

    def back() -> bool:
        return (
            cli_server_health(config) == "SERVING" and service_pid(config, "cli") == server.pid
            and config.lock_path("cli").exists()
        )

    for path in (socket, config.pid_path("cli"), config.lock_path("cli")):
        path.unlink()
    _wait(back, server, log)
    assert mydocker(config, "version", mode="require").stdout.startswith("mydocker ")
    # A regular file put in its place is replaced, as a stale socket is at start.
    socket.unlink()
    socket.write_text("not a socket")
    _wait(back, server, log)
    assert mydocker(config, "version", mode="require").stdout.startswith("mydocker ")
    said = [line for line in log.read_text().splitlines() if "again" in line]
    assert said == [
        f"cli: socket {socket} was deleted: bound it again",
        f"cli: lock {config.lock_path('cli')} was deleted or replaced: locked it again",
        f"cli: pidfile {config.pid_path('cli')} was deleted: wrote pid {server.pid} again",
        f"cli: socket {socket} was replaced: bound it again",
    ]
