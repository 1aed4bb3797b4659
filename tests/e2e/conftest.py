"""Fixtures for end-to-end tests: the real services brought up by scripts/up on temp roots, torn down fully."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.config import Config
from services.common.ctl import REPO, service_env
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


@pytest.fixture
def host(mydocker_config: Config, service_tracker: ServiceTracker) -> Iterator[Host]:
    """The three services up with the busybox image built, on this test's temp roots; everything removed after."""
    with running_host(mydocker_config, service_tracker) as started:
        yield started
