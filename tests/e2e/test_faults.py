"""Kill a service at every step of run, rm -f, commit, exec, stop, load, import, pull and rmi (MYDOCKER_FAULT), restart it, check the invariants, retry.

run -d and rm -f also run on a network, where addresses, veths, port rules and bridges are checked
too, and so do network create and network rm. The image commands are killed around their RPC and
at each step inside it (services/common/faults.py `step`), and the storage invariants (records,
blobs, layers, tag files, temp files) are checked after every case.

One set of services per command (a pool, tests/e2e/fault_matrix.py, not scripts/up per case); each
case restarts one service with a fault, runs the command, brings everything up again with
scripts/up and checks tests/invariants.py, then retries the command and checks again. Three rounds
of the whole matrix, as CI must pass it three times in a row. The commands and their RPCs are in
tests/e2e/fault_commands.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from services.common.config import Config
from services.common.ctl import REPO, service_env
from services.common.faults import ENV_VAR
from tests.e2e.conftest import mydocker_cli, scripts_up
from tests.e2e.fault_commands import COMMANDS, NETWORK_CREATE, NETWORK_RM
from tests.e2e.fault_matrix import Case, HostPool, Inputs, MatrixHost, cases, describe, one_line_failure, start_faulty
from tests.invariants import violations
from tests.invariants_storage import dangling_images, read_storage
from tests.netutil import free_subnets

pytestmark = pytest.mark.root

KILL_SETTLE = 5.0
CASES = cases(COMMANDS)


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
    inputs = matrix.inputs(name, container_id)
    if case.command.prepare is not None:
        case.command.prepare(matrix, inputs)
    args = case.command.args(inputs)
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

    clean_up(matrix, case, inputs, problems)
    assert not problems, (
        f"`mydocker {' '.join(args)}` with {case.fault}: first {describe(first)}\n" + "\n".join(f"- {p}" for p in problems)
    )


def clean_up(matrix: MatrixHost, case: Case, inputs: Inputs, problems: list[str]) -> None:
    """Remove what the case made, so the next one starts from a clean host; a failure to do so is a problem too."""
    host = matrix.host
    name = inputs.name
    removed = mydocker_cli(host.env, "rm", "-f", name)
    if removed.returncode != 0 and "no such container" not in removed.stderr:
        problems.append(f"cleaning up: rm -f {name}: {describe(removed)}")
    if case.command in (NETWORK_CREATE, NETWORK_RM):
        removed = mydocker_cli(host.env, "network", "rm", f"n{name}")
        if removed.returncode != 0 and "no such network" not in removed.stderr:
            problems.append(f"cleaning up: network rm n{name}: {describe(removed)}")
    if case.command.made_images is None:
        return
    for image in case.command.made_images(inputs):
        removed = mydocker_cli(host.env, "rmi", image)
        if removed.returncode != 0 and "not found" not in removed.stderr:
            problems.append(f"cleaning up: rmi {image}: {describe(removed)}")
    # What a kill between the record and the tag left (explained: `mydocker images` lists it as <none>).
    for image_id in dangling_images(read_storage(matrix.config)):
        removed = mydocker_cli(host.env, "rmi", image_id)
        if removed.returncode != 0:
            problems.append(f"cleaning up: rmi {image_id} (untagged): {describe(removed)}")


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
