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

# hypothesis keeps a cache (.hypothesis/) even with database=None: under /tmp, never in the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "mydocker-hypothesis"))


ROOT_NEEDED = "needs root (namespaces, mounts, cgroups): run the tests as root, e.g. sudo scripts/test"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `root` fails when we are not root: a skip would let a run pass without it."""
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail(ROOT_NEEDED, pytrace=False)


# Every skip of this run: reported at the end, and it fails the run.
_SKIPPED_REPORTS: list[pytest.TestReport] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED_REPORTS.append(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Any skipped test fails the run: a green run means every collected test ran."""
    if _SKIPPED_REPORTS and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _SKIPPED_REPORTS:
        return
    terminalreporter.section("skipped tests fail the run", sep="=", red=True)
    for report in _SKIPPED_REPORTS:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.line(f"{report.nodeid}: {reason}", red=True)


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


COMPILED_FRONT = REPO / ".venv" / "bin" / "mydocker-front"
FRONTS = ("compiled", "python")


@pytest.fixture(scope="session")
def compiled_front() -> Path:
    """./mydocker's compiled front (cli/front.c), built as scripts/up builds it; fails saying what is missing."""
    built = subprocess.run(
        ["bash", "-c", 'source scripts/lib/bootstrap.sh && ensure_front'],
        cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    # ensure_front succeeds even when the compile fails (scripts/up must still work): what counts is a
    # binary newer than its source, else the "compiled" cases would silently run the Python front.
    source = REPO / "cli" / "front.c"
    fresh = COMPILED_FRONT.exists() and COMPILED_FRONT.stat().st_mtime_ns >= source.stat().st_mtime_ns
    assert built.returncode == 0 and fresh, (
        f"cannot build cli/front.c into {COMPILED_FRONT} (apt-get install gcc libc6-dev): {built.stdout}{built.stderr}"
    )
    return COMPILED_FRONT


def front_env(front: str) -> dict[str, str]:
    """The environment that makes ./mydocker use `front` ("compiled" or "python")."""
    return {"MYDOCKER_FRONT": front}


def front_executable(front: str) -> str:
    """What /proc/PID/exe of a ./mydocker process using `front` names."""
    return os.path.realpath(COMPILED_FRONT if front == "compiled" else REPO / ".venv" / "bin" / "python")


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
