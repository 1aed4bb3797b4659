"""The shim launcher: its request and reply encoding, its imports, and a real launcher process driven as the executor does."""

from __future__ import annotations

import marshal
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition
from services.executor import shim_launcher as launcher
from services.executor import statefiles
from services.executor.launcher_client import ShimLauncher

REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO), "PATH": os.defpath}


def options(state_dir: str, **overrides) -> dict:
    base = {
        "state": state_dir,
        "log": f"{state_dir}/ctr.log",
        "stdio": "log",
        "terminal": False,
        "stdin": False,
        "oom": "",
        "shim_procs": [],
        "window": None,
        "plan": marshal.dumps({"args": ["true"]}),
    }
    return {**base, **overrides}


# -- protocol --------------------------------------------------------------------------------


def test_requests_round_trip_fed_byte_by_byte():
    first = options("/run/x", shim_procs=["/a/cgroup.procs", "/b/cgroup.procs"], window=(24, 80))
    second = options("/run/\udcff-not-utf8", terminal=True)
    stream = launcher.encode_request(first) + launcher.encode_request(second)
    reader = launcher.RequestReader()
    got = []
    for index in range(len(stream)):
        got += reader.feed(stream[index:index + 1])
    # Each with its payload as it came, which a standby shim gets as it is.
    assert got == [(first, marshal.dumps(first)), (second, marshal.dumps(second))]


def test_request_header_is_a_big_endian_length():
    data = launcher.encode_request({"state": "/s"})
    assert int.from_bytes(data[:launcher.LENGTH_SIZE], "big") == len(data) - launcher.LENGTH_SIZE
    assert marshal.loads(data[launcher.LENGTH_SIZE:]) == {"state": "/s"}


def test_bad_requests_are_refused():
    with pytest.raises(launcher.RequestError):
        launcher.encode_request({"state": object()})
    with pytest.raises(launcher.RequestError):
        launcher.encode_request({"plan": bytes(launcher.MAX_REQUEST)})
    with pytest.raises(launcher.RequestError):
        launcher.RequestReader().feed((launcher.MAX_REQUEST + 1).to_bytes(4, "big"))
    with pytest.raises(launcher.RequestError):
        launcher.RequestReader().feed((3).to_bytes(4, "big") + b"\xff\xff\xff")
    not_a_dict = marshal.dumps(["state"])
    with pytest.raises(launcher.RequestError):
        launcher.RequestReader().feed(len(not_a_dict).to_bytes(4, "big") + not_a_dict)


def test_replies_are_signed_statuses():
    for status in (0, 1, 255, launcher.FORK_FAILED):
        assert launcher.decode_reply(launcher.encode_reply(status)) == status


def test_launcher_imports_nothing_heavy():
    """Every shim is a fork of the launcher: what it imports, each idle shim carries."""
    code = "import sys; import services.executor.shim_launcher; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True, env=ENV).stdout.split()
    for heavy in ("grpc", "google", "json", "re", "enum", "pathlib", "dataclasses", "subprocess", "threading",
                  "socket", "typing", "services.executor.core", "services.common.errors"):
        assert heavy not in loaded, heavy
    for needed in ("services.executor.shim", "services.executor.init", "services.common.linux"):
        assert needed in loaded, needed


# -- a real launcher process ----------------------------------------------------------------


@pytest.fixture
def shim_launcher():
    helper = ShimLauncher(sys.executable, lambda: dict(ENV))
    yield helper
    helper.close()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` no longer exists at all: exited and reaped."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    return not os.path.exists(f"/proc/{pid}")


def wait_for(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return path.read_text()


def test_a_shim_that_cannot_leave_the_executors_cgroup_records_why(shim_launcher, tmp_path):
    """The launcher answers once the intermediate child exited; the shim records its pid, its log and its error."""
    request = options(str(tmp_path), shim_procs=[str(tmp_path / "no-such-cgroup" / "cgroup.procs")])
    assert shim_launcher.spawn(request) == 0
    shim_pid, shim_start = statefiles.parse_pid((tmp_path / statefiles.SHIM_PID).read_text())
    assert shim_pid > 0 and shim_start > 0
    error = wait_for(tmp_path / statefiles.ERROR)
    assert error.startswith("failed shim: ") and "no-such-cgroup" in error
    assert wait_for(tmp_path / statefiles.STATUS) == statefiles.EXITED + "\n"
    assert (tmp_path / statefiles.SHIM_LOG).exists()
    assert not statefiles.is_alive(shim_pid, shim_start) or gone(shim_pid)


def test_a_request_the_intermediate_child_cannot_serve_is_a_failed_status(shim_launcher, tmp_path):
    # No such state dir: shim.log cannot be opened, so the intermediate child exits non-zero.
    assert shim_launcher.spawn(options(str(tmp_path / "missing"))) != 0
    assert shim_launcher.spawn(options(str(tmp_path), shim_procs=["/nonexistent/cgroup.procs"])) == 0


def test_a_killed_launcher_is_reaped_and_replaced(shim_launcher, tmp_path):
    shim_launcher.ensure_started()
    first = shim_launcher.pid
    os.kill(first, signal.SIGKILL)
    assert gone(first), "the dead launcher was not reaped"
    (tmp_path / "a").mkdir()
    assert shim_launcher.spawn(options(str(tmp_path / "a"), shim_procs=["/nonexistent/cgroup.procs"])) == 0
    assert shim_launcher.pid not in (0, first)


def test_close_ends_the_launcher_with_end_of_file(shim_launcher):
    shim_launcher.ensure_started()
    pid = shim_launcher.pid
    shim_launcher.close()
    assert shim_launcher.pid == 0
    assert gone(pid)


def test_concurrent_spawns_each_get_their_own_reply(shim_launcher, tmp_path):
    results: dict[int, int] = {}

    def one(index: int) -> None:
        directory = tmp_path / str(index)
        # Odd ones fail in the intermediate child (no state dir), even ones succeed.
        if index % 2 == 0:
            directory.mkdir()
        results[index] = shim_launcher.spawn(options(str(directory), shim_procs=["/nonexistent/cgroup.procs"]))

    threads = [threading.Thread(target=one, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert {index: status == 0 for index, status in results.items()} == {index: index % 2 == 0 for index in range(8)}


def test_a_launcher_that_cannot_start_is_a_clear_error(tmp_path):
    helper = ShimLauncher(sys.executable, lambda: {"PATH": os.defpath})  # no PYTHONPATH: the import fails
    try:
        with pytest.raises(FailedPrecondition, match="launcher"):
            helper.spawn(options(str(tmp_path)))
    finally:
        helper.close()
