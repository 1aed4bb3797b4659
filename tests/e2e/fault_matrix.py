"""The kill-at-every-step matrix's machinery: steps, commands and cases, one set of services per command, a faulty service."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common import ctl
from services.common.client import check_health
from services.common.config import Config
from services.common.ctl import REPO
from services.common.faults import AFTER, BEFORE, ENV_VAR, STEP_PREFIX
from tests.conftest import ServiceTracker, temp_config_dir
from tests.e2e.conftest import Host, running_host
from tests.netutil import free_subnets

# As CI must pass the matrix three times in a row.
ROUNDS = 3
START_TIMEOUT = 20.0
LOG_TAIL = 10


@dataclass(frozen=True)
class Step:
    """One RPC a command makes: service, method, which call of it (1 = first), whether it streams, its at- steps."""

    service: str
    method: str
    call: int = 1
    streaming: bool = False
    # Where the service's code calls faults.step(method, STEP) inside the RPC, in the order it reaches them.
    inner: tuple[str, ...] = ()

    def points(self) -> tuple[str, ...]:
        inner = tuple(STEP_PREFIX + name for name in self.inner)
        # A streaming response has no single "after" (refused by services/common/faults.py).
        return (BEFORE, *inner) if self.streaming else (BEFORE, *inner, AFTER)

    def fault(self, point: str) -> str:
        suffix = f":{self.call}" if self.call != 1 else ""
        return f"{self.service}.{self.method}:{point}{suffix}"


@dataclass(frozen=True)
class Inputs:
    """What a case's command line may name: its unique name, its prepared container, the host's network and files."""

    name: str
    container: str
    network: str
    files: Path
    registry: str


@dataclass(frozen=True)
class Command:
    """A CLI command, the RPCs it makes in order (from cli/lifecycle.py, cli/containers.py, cli/images.py), and how a retry may refuse."""

    name: str
    args: Callable[[Inputs], list[str]]
    steps: tuple[Step, ...]
    # Whether the case needs a running container first (rm, commit, exec, stop).
    needs_container: bool = False
    # The one-line refusals a retry may give instead of succeeding: "it already happened".
    already: tuple[str, ...] = ()
    # Whether its containers join a network (and the network invariants are checked).
    network: bool = False
    # What the prepared container runs.
    prepared: tuple[str, ...] = ("busybox", "top")
    # Whether the case needs a network of its own first, named "n" + the case name (network rm).
    prepared_network: bool = False
    # Run once when the command's services start (files, a registry), and before each case (an image).
    setup: Callable[[MatrixHost], None] | None = None
    prepare: Callable[[MatrixHost, Inputs], None] | None = None
    # Images a case may have made, removed after it (with every untagged image no container uses).
    made_images: Callable[[Inputs], tuple[str, ...]] | None = None
    rounds: int = ROUNDS


@dataclass(frozen=True)
class Case:
    command: Command
    step: Step
    point: str
    round: int

    @property
    def fault(self) -> str:
        return self.step.fault(self.point)

    @property
    def id(self) -> str:
        return f"{self.command.name.replace(' ', '').replace(',', '-')}-{self.fault}-r{self.round}"


def cases(commands: tuple[Command, ...]) -> list[Case]:
    """Command-major, so the pool starts one set of services per command, not per command and round."""
    return [
        Case(command, step, point, round_)
        for command in commands
        for round_ in range(command.rounds)
        for step in command.steps
        for point in step.points()
    ]


# -- shared services, one set per command --------------------------------------------------------


@dataclass
class MatrixHost:
    host: Host
    config: Config
    cgroup_parent: str
    tracker: ServiceTracker
    # Closed with the services: the command's setup puts its registry and files here.
    stack: contextlib.ExitStack
    files: Path
    # The network of networked commands' containers; "" until one is needed.
    network: str = ""
    # host:port of the registry a setup started, or "".
    registry: str = ""
    # Seconds spent in this command's cases, for the timing report.
    spent: float = 0.0
    cases: int = 0
    counter: int = 0

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def inputs(self, name: str, container: str = "") -> Inputs:
        return Inputs(name, container, self.network, self.files, self.registry)


@contextlib.contextmanager
def matrix_host() -> Iterator[MatrixHost]:
    """The `host` fixture's start and teardown, for many cases; a service a case left down is brought back first."""
    tracker = ServiceTracker()
    with contextlib.ExitStack() as stack:
        files = Path(tempfile.mkdtemp(prefix="mdk-fault-files-", dir="/tmp"))
        stack.callback(shutil.rmtree, files, ignore_errors=True)
        config = stack.enter_context(temp_config_dir())
        host = stack.enter_context(running_host(config, tracker, "mdk-fault", drop_env=(ENV_VAR,), up_before_teardown=True))
        # Entered last, closed first: a registry goes before the services it served.
        with contextlib.ExitStack() as own:
            yield MatrixHost(host, config, host.cgroup_parent, tracker, own, files)


class HostPool:
    """Keeps the services of the command whose cases are running; switching command tears them down."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._command = ""
        self._current: MatrixHost | None = None
        self.timings: dict[str, tuple[float, int]] = {}

    def get(self, command: Command) -> MatrixHost:
        if self._current is None or command.name != self._command:
            self.close()
            self._stack = contextlib.ExitStack()
            self._command = command.name
            self._current = self._stack.enter_context(matrix_host())
            if command.network:
                self._current.network = f"fnet{uuid.uuid4().hex[:6]}"
                (subnet,) = free_subnets(1)
                self._current.host.mydocker("network", "create", "--subnet", subnet, self._current.network)
            if command.setup is not None:
                command.setup(self._current)
        return self._current

    def close(self) -> None:
        if self._current is not None:
            self.timings[self._command] = (self._current.spent, self._current.cases)
        self._current = None
        self._stack.close()


# -- a faulty service, and how a command failed ----------------------------------------------------


def log_tail(config: Config, service: str) -> str:
    lines = config.log_path(service).read_text(errors="replace").splitlines()[-LOG_TAIL:]
    return "\n".join(f"    {line}" for line in lines)


def start_faulty(matrix: MatrixHost, service: str, fault: str) -> subprocess.Popen:
    """Replace `service` by one with MYDOCKER_FAULT=fault, SERVING; ours to reap once it killed itself.

    Started directly rather than with `ctl up`: ctl runs `system check --repair` after a start,
    whose calls would hit the fault before the command does.
    """
    # ctl's own `down`, called in-process: a Python start per case is a tenth of the matrix's time.
    assert ctl.down(matrix.config, [service]) == 0, f"ctl down {service} failed"
    log_path = matrix.config.log_path(service)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO,
            env={**matrix.host.env, ENV_VAR: fault},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while check_health(matrix.config, service).status != "SERVING":
        if process.poll() is not None:
            pytest.fail(f"{service} with {ENV_VAR}={fault} exited {process.returncode} at start:\n{log_tail(matrix.config, service)}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"{service} with {ENV_VAR}={fault} not SERVING after {START_TIMEOUT:.0f}s")
        time.sleep(0.02)
    matrix.tracker.note(matrix.config)
    return process


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str | None:
    """Why a failed command's output is not one clear line, or None when it is."""
    text = result.stderr.strip()
    if not text:
        return "it failed without a word"
    if "\n" in text:
        return f"it printed {len(text.splitlines())} lines on stderr"
    if "Traceback" in text or "internal error" in text.lower():
        return "it printed an internal error"
    return None


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}, stdout {result.stdout.strip()!r}, stderr {result.stderr.strip()!r}"
