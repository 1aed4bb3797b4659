"""Fixtures for end-to-end tests: the real services brought up by scripts/up on temp roots, torn down fully."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.config import Config
from services.common.netnames import bridge_name
from services.common.ctl import REPO, service_env, service_pid
from services.executor.cgroup_layout import CgroupLayout
from tests.conftest import ServiceTracker


def mydocker_cli(env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """./mydocker ARGS with `env`; stdin is the given text, or nothing (like CI's closed stdin)."""
    return subprocess.run(
        [str(REPO / "mydocker"), *args],
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The failure contract: exit 1, nothing on stdout, exactly one `mydocker: ...` line on stderr."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout!r} {result.stderr!r}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mydocker: "), result.stderr
    return lines[0]


def mounts_below(path: Path) -> list[str]:
    prefix = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(prefix)]


@dataclass
class Host:
    """The services of one test, and ./mydocker pointed at them."""

    env: dict[str, str]
    root: Path
    cgroup_parent: str = ""

    @property
    def instance(self) -> str:
        """This host's Config.instance: what its bridge names, link aliases and iptables tags carry."""
        return Config(root=Path(self.env["MYDOCKER_ROOT"])).instance

    def bridge(self, network: str) -> str:
        """The bridge of network `network` on this host."""
        return bridge_name(network, self.instance)

    def mydocker(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = mydocker_cli(self.env, *args, stdin=stdin)
        if check and result.returncode != 0:
            raise AssertionError(f"mydocker {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result


def scripts_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "scripts/up")], env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def running_host(
    config: Config,
    tracker: ServiceTracker,
    cgroup_prefix: str = "mdk-e2e",
    drop_env: tuple[str, ...] = (),
    up_before_teardown: bool = False,
) -> Iterator[Host]:
    """The three services up (scripts/up) on `config`'s roots with the busybox image built; everything removed after.

    Container cgroups go below a parent unique to this host, removed at teardown, and so are its
    containers, networks, service processes (noted in `tracker`) and mounts. `up_before_teardown`
    brings a service a test left down back first, since rm needs all three.
    """
    cgroup_parent = f"{cgroup_prefix}-{uuid.uuid4().hex[:8]}"
    env = service_env(config)
    env["MYDOCKER_CGROUP_PARENT"] = cgroup_parent
    if "MYDOCKER_CGROUP_PARENT" in drop_env:
        # The executor's own default then: one parent per instance, still unique to this host's temp root.
        cgroup_parent = config.default_cgroup_parent()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in drop_env:
        env.pop(name, None)
    up = scripts_up(env)
    tracker.note(config)
    try:
        assert up.returncode == 0, f"scripts/up failed:\n{up.stdout}{up.stderr}"
        yield Host(env, config.root, cgroup_parent)
    finally:
        if up_before_teardown:
            scripts_up(env)
            tracker.note(config)
        ids = mydocker_cli(env, "ps", "-a", "-q").stdout.split()
        if ids:
            mydocker_cli(env, "rm", "-f", *ids)
        # Networks after their containers: the last one takes mydocker's iptables chains with it.
        networks = mydocker_cli(env, "network", "ls", "-q").stdout.split()
        if networks:
            mydocker_cli(env, "network", "rm", *networks)
        subprocess.run([str(REPO / "scripts/down")], env=env, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        tracker.note(config)
        tracker.kill_leftovers()
        leftover_mounts = mounts_below(config.root)
        for target in reversed(leftover_mounts):
            subprocess.run(["umount", "-l", target], check=False)
        CgroupLayout.from_host(parent=cgroup_parent).remove_parent()
        assert not leftover_mounts, f"the test left mounts behind: {leftover_mounts}"


# How a test's ./mydocker runs, in modules that prove both paths (`pytestmark = both_cli_modes`):
# through the warm CLI server (required: a fallback fails the command), or in-process
# (MYDOCKER_CLI_SERVER=off) with the server running beside it.
CLI_MODES = {"server": "require", "inprocess": "off"}
both_cli_modes = pytest.mark.parametrize("cli_mode", tuple(CLI_MODES), indirect=True)
SPARE_TIMEOUT = 20.0


@pytest.fixture
def cli_mode(request: pytest.FixtureRequest) -> str | None:
    """"server" or "inprocess" where a module asks for both_cli_modes; None elsewhere (the server when one answers)."""
    return getattr(request, "param", None)


def cli_server_spare(config: Config) -> tuple[int, int]:
    """(the CLI server's pid, its spare worker's pid), once the spare is its only child.

    The server hands each command to its spare and forks a new one: a changed spare means a command
    went through the server, the same one that none did. A health probe of the server (scripts/up,
    scripts/status) takes the spare too, so a test that runs one is not given a cli_mode.
    """
    server = service_pid(config, "cli")
    assert server is not None, "the CLI server is not running"
    deadline = time.monotonic() + SPARE_TIMEOUT
    while True:
        children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
        if len(children) == 1:
            return server, int(children[0])
        assert time.monotonic() < deadline, f"the CLI server {server} has children {children}, not one spare worker"
        time.sleep(0.05)


@pytest.fixture
def host(mydocker_config: Config, service_tracker: ServiceTracker, cli_mode: str | None) -> Iterator[Host]:
    """The three services up with the busybox image built, on this test's temp roots; everything removed after.

    With a `cli_mode`, ./mydocker runs only that way, and the test fails if a command went the other way.
    """
    with running_host(mydocker_config, service_tracker) as started:
        if cli_mode is None:
            yield started
            return
        before = cli_server_spare(mydocker_config)
        yield Host(dict(started.env, MYDOCKER_CLI_SERVER=CLI_MODES[cli_mode]), started.root, started.cgroup_parent)
        after = cli_server_spare(mydocker_config)
        if cli_mode == "server":
            assert after[0] == before[0] and after[1] != before[1], f"no command went through the CLI server {before[0]}"
        else:
            assert after == before, f"a command went through the CLI server {before[0]} (spare {before[1]} -> {after[1]})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) tests marked `cgroup2` unless MYDOCKER_TEST_CGROUP2=1: scripts/test-cgroup2 runs them
    in a guest with cgroup2 alone, and a cgroup v1 host cannot."""
    if os.environ.get("MYDOCKER_TEST_CGROUP2") == "1":
        return
    deselected = [item for item in items if item.get_closest_marker("cgroup2") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("cgroup2") is None]
