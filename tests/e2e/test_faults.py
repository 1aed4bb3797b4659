"""Kill a service at every step of run, rm -f, commit, exec and stop (MYDOCKER_FAULT), restart it, check the invariants, retry.

run -d and rm -f also run on a network, where addresses, veths, port rules and bridges are checked
too, and so do network create and network rm.

One set of services per command (a pool below, not scripts/up per case); each case restarts one
service with a fault, runs the command, brings everything up again with scripts/up and checks
tests/invariants.py, then retries the command and checks again. Three rounds of the whole
matrix, as CI must pass it three times in a row.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from services.common import ctl
from services.common.client import check_health
from services.common.config import Config
from services.common.ctl import REPO, service_env
from services.common.faults import AFTER, BEFORE, ENV_VAR
from tests.conftest import ServiceTracker, temp_config_dir
from tests.e2e.conftest import Host, mydocker_cli, running_host, scripts_up
from tests.invariants import violations
from tests.netutil import free_port, free_subnets

pytestmark = pytest.mark.root

ROUNDS = 3
START_TIMEOUT = 20.0
LOG_TAIL = 10
KILL_SETTLE = 5.0


@dataclass(frozen=True)
class Step:
    """One RPC a command makes: service, method, which call of it (1 = first), and whether it streams."""

    service: str
    method: str
    call: int = 1
    streaming: bool = False

    def points(self) -> tuple[str, ...]:
        # A streaming response has no single "after" (refused by services/common/faults.py).
        return (BEFORE,) if self.streaming else (BEFORE, AFTER)

    def fault(self, point: str) -> str:
        suffix = f":{self.call}" if self.call != 1 else ""
        return f"{self.service}.{self.method}:{point}{suffix}"


@dataclass(frozen=True)
class Command:
    """A CLI command, the RPCs it makes in order (from cli/lifecycle.py and cli/containers.py), and how a retry may refuse."""

    name: str
    # (case name, id of the running container prepared for it or "", network or "") -> ./mydocker arguments
    args: Callable[[str, str, str], list[str]]
    steps: tuple[Step, ...]
    # Whether the case needs a running container first (rm, commit, exec, stop).
    needs_container: bool
    # The one-line refusals a retry may give instead of succeeding: "it already happened".
    already: tuple[str, ...] = ()
    # Whether its containers join a network (and the network invariants are checked).
    network: bool = False
    # What the prepared container runs.
    prepared: tuple[str, ...] = ("busybox", "top")
    # Whether the case needs a network of its own first, named "n" + the case name (network rm).
    prepared_network: bool = False


CREATE = (Step("state", "CreateContainer"), Step("storage", "PrepareRootfs"), Step("executor", "CreateContainer"))
RUN_DETACHED = Command(
    "run -d",
    lambda name, _, __: ["run", "-d", "--name", name, "busybox", "top"],
    # create_and_start: record, rootfs, process, start, RUNNING.
    (*CREATE, Step("executor", "StartContainer"), Step("state", "UpdateContainerStatus")),
    needs_container=False,
    already=("is already in use",),
)
RUN_RM = Command(
    "run --rm",
    lambda name, _, __: ["run", "--rm", "--name", name, "busybox", "echo", "hi"],
    (
        *CREATE,
        # The attach stream opens before the start, so no output is lost.
        Step("executor", "Attach", streaming=True),
        Step("executor", "StartContainer"),
        Step("state", "UpdateContainerStatus", 1),  # RUNNING
        # finish_foreground: the exit, the record again, EXITED.
        Step("executor", "WaitContainer"),
        Step("state", "GetContainer"),
        Step("state", "UpdateContainerStatus", 2),  # EXITED
        # remove_stopped: REMOVING, rootfs, process state, record.
        Step("state", "UpdateContainerStatus", 3),
        Step("storage", "RemoveRootfs"),
        Step("executor", "DeleteContainer"),
        Step("state", "DeleteContainer"),
    ),
    needs_container=False,
    already=("is already in use",),
)
# remove: resolve and sync, SIGKILL and wait, (unplug,) STOPPED, then remove_stopped: (unplug,) REMOVING, rootfs, ...
KILL = (
    Step("state", "GetContainer"),
    Step("executor", "ListContainers"),
    Step("executor", "KillContainer"),
    Step("executor", "WaitContainer"),
)
REMOVE = (
    Step("state", "UpdateContainerStatus", 2),  # REMOVING
    Step("storage", "RemoveRootfs"),
    Step("executor", "DeleteContainer"),
    Step("state", "DeleteContainer"),
)
RM_FORCE = Command(
    "rm -f",
    lambda _, container_id, __: ["rm", "-f", container_id],
    (*KILL, Step("state", "UpdateContainerStatus", 1), *REMOVE),  # 1: STOPPED
    needs_container=True,
    already=("no such container",),
)
COMMIT = Command(
    "commit",
    lambda name, container_id, _: ["commit", container_id, f"img-{name}"],
    (Step("state", "GetContainer"), Step("storage", "CommitContainer")),
    needs_container=True,
    already=("already exists",),
)
EXEC = Command(
    "exec",
    lambda _, container_id, __: ["exec", container_id, "true"],
    (Step("state", "GetContainer"), Step("executor", "ListContainers"), Step("executor", "Exec", streaming=True)),
    needs_container=True,
)
STOP = Command(
    "stop",
    # busybox top exits on SIGTERM: the TERM path, no escalation.
    lambda _, container_id, __: ["stop", "-t", "5", container_id],
    (
        Step("state", "GetContainer"),
        Step("executor", "ListContainers"),
        Step("executor", "KillContainer"),
        Step("executor", "WaitContainer"),
        Step("state", "UpdateContainerStatus"),  # STOPPED
    ),
    needs_container=True,
)
STOP_ESCALATION = Command(
    "stop, escalated",
    lambda _, container_id, __: ["stop", "-t", "1", container_id],
    # A PID 1 that ignores TERM: after the TERM and a wait that times out (the steps STOP covers), the
    # second kill (KILL) and the second wait.
    (
        Step("executor", "KillContainer", 2),
        Step("executor", "WaitContainer", 2),
        Step("state", "UpdateContainerStatus"),  # STOPPED
    ),
    needs_container=True,
    prepared=("busybox", "sh", "-c", "trap '' TERM; while true; do sleep 1; done"),
)
RUN_NETWORK = Command(
    "run -d --network",
    lambda name, _, network: ["run", "-d", "--name", name, "--network", network, "-p", f"{free_port()}:80", "busybox", "top"],
    # create_and_start with a network: the address before the rootfs, the plumbing before the start.
    (
        Step("state", "CreateContainer"),
        Step("state", "AllocateAddress"),
        Step("storage", "PrepareRootfs"),
        Step("executor", "CreateContainer"),
        Step("executor", "ConnectContainer"),
        Step("executor", "StartContainer"),
        Step("state", "UpdateContainerStatus"),
    ),
    needs_container=False,
    already=("is already in use",),
    network=True,
)
RM_NETWORK = Command(
    "rm -f --network",
    lambda _, container_id, __: ["rm", "-f", container_id],
    # Unplugged before STOPPED (which frees the address), and again by remove_stopped.
    (
        *KILL,
        Step("executor", "DisconnectContainer", 1),
        Step("state", "UpdateContainerStatus", 1),
        Step("executor", "DisconnectContainer", 2),
        *REMOVE,
    ),
    needs_container=True,
    already=("no such container",),
    network=True,
)
NETWORK_CREATE = Command(
    "network create",
    lambda name, _, __: ["network", "create", "--subnet", free_subnets(1)[0], f"n{name}"],
    (Step("state", "CreateNetwork"), Step("executor", "CreateBridge")),
    needs_container=False,
    already=("is already in use",),
    network=True,
)
NETWORK_RM = Command(
    "network rm",
    lambda name, _, __: ["network", "rm", f"n{name}"],
    # The record goes first, then the bridge and its rules.
    (Step("state", "GetNetwork"), Step("state", "DeleteNetwork"), Step("executor", "RemoveBridge")),
    needs_container=False,
    already=("no such network",),
    network=True,
    prepared_network=True,
)
COMMANDS = (
    RUN_DETACHED, RUN_RM, RM_FORCE, COMMIT, EXEC, STOP, STOP_ESCALATION, RUN_NETWORK, RM_NETWORK, NETWORK_CREATE, NETWORK_RM,
)


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


# Command-major, so the pool starts one set of services per command, not per command and round.
CASES = [
    Case(command, step, point, round_)
    for command in COMMANDS
    for round_ in range(ROUNDS)
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
    # The network of networked commands' containers; "" until one is needed.
    network: str = ""
    # Seconds spent in this command's cases, for the timing report.
    spent: float = 0.0
    cases: int = 0
    counter: int = 0

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


@contextlib.contextmanager
def matrix_host() -> Iterator[MatrixHost]:
    """The `host` fixture's start and teardown, for many cases; a service a case left down is brought back first."""
    tracker = ServiceTracker()
    with temp_config_dir() as config:
        with running_host(config, tracker, "mdk-fault", drop_env=(ENV_VAR,), up_before_teardown=True) as host:
            yield MatrixHost(host, config, host.cgroup_parent, tracker)


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
        return self._current

    def close(self) -> None:
        if self._current is not None:
            self.timings[self._command] = (self._current.spent, self._current.cases)
        self._current = None
        self._stack.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[HostPool]:
    started = time.monotonic()
    hosts = HostPool()
    try:
        yield hosts
    finally:
        hosts.close()
        total = time.monotonic() - started
        lines = [f"{name}: {spent:.1f}s for {count} cases" for name, (spent, count) in hosts.timings.items()]
        # Shown with -s or in the captured output of a failure: how long the matrix takes.
        print(f"\nfault matrix: {total:.1f}s in all, including service starts; " + "; ".join(lines), file=sys.stderr)


# -- one case ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_kill_at_step_restart_and_retry(pool: HostPool, case: Case):
    matrix = pool.get(case.command)
    started = time.monotonic()
    try:
        run_case(matrix, case)
    finally:
        matrix.spent += time.monotonic() - started
        matrix.cases += 1


def run_case(matrix: MatrixHost, case: Case) -> None:
    host = matrix.host
    name = matrix.unique(f"f{case.round}-")
    container_id = ""
    network_options = ("--network", matrix.network) if case.command.network else ()
    if case.command.prepared_network:
        host.mydocker("network", "create", "--subnet", free_subnets(1)[0], f"n{name}")
    if case.command.needs_container:
        container_id = host.mydocker("run", "-d", "--name", name, *network_options, *case.command.prepared).stdout.strip()
    args = case.command.args(name, container_id, matrix.network)
    networks = case.command.network
    problems: list[str] = []

    faulty = start_faulty(matrix, case.step.service, case.fault)
    first = mydocker_cli(host.env, *args, timeout=60)
    try:
        # A killed process closes its sockets a moment before it can be reaped: the CLI may be faster.
        faulty.wait(timeout=KILL_SETTLE)
    except subprocess.TimeoutExpired:
        problems.append(f"the fault {case.fault} was never reached: `mydocker {' '.join(args)}` made no such call ({describe(first)})")
        faulty.send_signal(signal.SIGTERM)
        faulty.wait(timeout=60)
    if first.returncode != 0 and (why := one_line_failure(first)):
        problems.append(f"the command failed, but not with one clear line ({why}): {describe(first)}")

    up = scripts_up(host.env)
    matrix.tracker.note(matrix.config)
    if up.returncode != 0:
        problems.append(f"scripts/up after the kill failed: {(up.stdout + up.stderr).strip()}")
    problems += [f"after the kill and scripts/up: {v}" for v in violations(matrix.config, matrix.cgroup_parent, networks)]

    retry = mydocker_cli(host.env, *args, timeout=60)
    if retry.returncode != 0:
        refusal = retry.stderr.strip()
        if one_line_failure(retry) or not any(text in refusal for text in case.command.already):
            problems.append(f"the retry neither succeeded nor said it already happened: {describe(retry)}")
    problems += [f"after the retry: {v}" for v in violations(matrix.config, matrix.cgroup_parent, networks)]

    clean_up(matrix, case, name, problems)
    assert not problems, (
        f"`mydocker {' '.join(args)}` with {case.fault}: first {describe(first)}\n" + "\n".join(f"- {p}" for p in problems)
    )


def clean_up(matrix: MatrixHost, case: Case, name: str, problems: list[str]) -> None:
    """Remove what the case made, so the next one starts from a clean host; a failure to do so is a problem too."""
    host = matrix.host
    removed = mydocker_cli(host.env, "rm", "-f", name)
    if removed.returncode != 0 and "no such container" not in removed.stderr:
        problems.append(f"cleaning up: rm -f {name}: {describe(removed)}")
    if case.command in (NETWORK_CREATE, NETWORK_RM):
        removed = mydocker_cli(host.env, "network", "rm", f"n{name}")
        if removed.returncode != 0 and "no such network" not in removed.stderr:
            problems.append(f"cleaning up: network rm n{name}: {describe(removed)}")
    if case.command is COMMIT and (matrix.config.root / "image" / f"img-{name}.tar").exists():
        removed = mydocker_cli(host.env, "rmi", f"img-{name}")
        if removed.returncode != 0:
            problems.append(f"cleaning up: rmi img-{name}: {describe(removed)}")


def test_a_bad_fault_spec_stops_the_service_at_start_naming_the_variable(mydocker_config: Config):
    """A typo in MYDOCKER_FAULT must not quietly test nothing."""
    for bad in ("state.CreateContainer:during", "state.NoSuchMethod:before"):
        env = {**service_env(mydocker_config), ENV_VAR: bad}
        result = subprocess.run(
            [sys.executable, "-m", "services.state"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode != 0
        assert result.stderr.strip().splitlines()[-1].count(ENV_VAR) == 1, result.stderr
        assert not mydocker_config.pid_path("state").exists()
