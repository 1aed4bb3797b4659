"""Fixtures for every test: the `root` marker, temp mydocker roots, and the three real services as processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.config import Config
from services.common.ctl import REPO, is_service_process, running_services, service_env


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `root` unless we are root: they need namespaces, mounts and cgroups."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


@contextlib.contextmanager
def temp_config_dir() -> Iterator[Config]:
    # Under /tmp with a short prefix: unix socket paths must stay under 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
    try:
        yield Config(root=base / "root", run=base / "run")
    finally:
        shutil.rmtree(base, ignore_errors=True)


class ServiceTracker:
    """Remembers every service pid seen through pidfiles, so teardown kills exactly our own processes."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()

    def note(self, config: Config) -> dict[str, int]:
        """The services running for `config` now, by name; each is remembered."""
        pids = running_services(config)
        self.seen.update(pids.items())
        return pids

    def kill_leftovers(self) -> None:
        for service, pid in self.seen:
            # Checked again right before the kill: the pid may have exited and been reused.
            if is_service_process(pid, service):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def run_ctl(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m services.common.ctl ARGS` pointed at `config`."""
    return subprocess.run(
        [sys.executable, "-m", "services.common.ctl", *args],
        cwd=REPO,
        env=service_env(config),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def mydocker_config() -> Iterator[Config]:
    """A Config with fresh temp root and run dirs, removed afterwards."""
    with temp_config_dir() as config:
        yield config


@pytest.fixture
def service_tracker() -> Iterator[ServiceTracker]:
    """Kills, at teardown, every service process noted through it that is still alive."""
    tracker = ServiceTracker()
    try:
        yield tracker
    finally:
        tracker.kill_leftovers()


@pytest.fixture(scope="module")
def live_services() -> Iterator[Config]:
    """The three real services started by `ctl up` on fresh temp roots; yields their Config.

    Module-scoped so a test file pays for one start; `ctl down` stops them at the end.
    """
    tracker = ServiceTracker()
    with temp_config_dir() as config:
        try:
            started = run_ctl(config, "up")
            tracker.note(config)
            if started.returncode != 0:
                pytest.fail(f"ctl up failed:\n{started.stdout}{started.stderr}")
            yield config
        finally:
            tracker.note(config)
            run_ctl(config, "down")
            tracker.kill_leftovers()
