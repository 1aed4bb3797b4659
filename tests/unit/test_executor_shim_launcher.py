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


def standby_of(marker: str, exclude: int = 0, timeout: float = 10.0) -> int:
    """The pid of the standby shim of the launcher started with `marker` in its environment (not `exclude`), or 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == exclude:
                continue
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if comm == "shim-standby" and f"MDK_TEST_MARKER={marker}".encode() in environ and state != "Z":
                return int(entry)
        time.sleep(0.01)
    return 0


def exited(pid: int) -> bool:
    """Gone, or a zombie (a standby is reparented to the host's init, which reaps it when it will)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def marked_launcher():
    marker = f"{os.getpid()}-{time.monotonic_ns()}"
    helper = ShimLauncher(sys.executable, lambda: {**ENV, "MDK_TEST_MARKER": marker})
    yield helper, marker
    helper.close()


def after_first_spawn(marked_launcher, tmp_path) -> tuple[ShimLauncher, str, int]:
    """The launcher, its marker and its standby once a first request (state dir `a`) was served; `b` made too."""
    launcher_, marker = marked_launcher
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert launcher_.spawn(options(str(tmp_path / "a"))) == 0
    standby = standby_of(marker)
    assert standby, "no standby shim after the first spawn"
    return launcher_, marker, standby


def test_after_a_spawn_a_standby_shim_waits_in_a_new_pid_namespace_and_takes_the_next_request(marked_launcher, tmp_path):
    launcher_, marker, standby = after_first_spawn(marked_launcher, tmp_path)
    # Its next child is PID 1 of a pid namespace of its own, as a shim's init must be. The kernel shows
    # a new pid namespace only once its first process exists: until then the link does not resolve.
    try:
        for_children = os.readlink(f"/proc/{standby}/ns/pid_for_children")
    except FileNotFoundError:
        for_children = "a new pid namespace, without a process yet"
    assert for_children != os.readlink(f"/proc/{standby}/ns/pid")
    assert launcher_.spawn(options(str(tmp_path / "b"))) == 0
    assert statefiles.parse_pid((tmp_path / "b" / statefiles.SHIM_PID).read_text())[0] == standby
    # It became that container's shim: named after it, its log in that state dir.
    assert wait_for(tmp_path / "b" / statefiles.STATUS) == statefiles.EXITED + "\n"
    assert (tmp_path / "b" / statefiles.SHIM_LOG).exists()
    assert standby_of(marker, exclude=standby), "no new standby after the second spawn"


def test_a_killed_standby_is_replaced_by_a_shim_forked_for_the_request(marked_launcher, tmp_path):
    launcher_, _, standby = after_first_spawn(marked_launcher, tmp_path)
    os.kill(standby, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not exited(standby) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert launcher_.spawn(options(str(tmp_path / "b"))) == 0
    shim_pid = statefiles.parse_pid((tmp_path / "b" / statefiles.SHIM_PID).read_text())[0]
    assert shim_pid not in (0, standby)
    assert wait_for(tmp_path / "b" / statefiles.STATUS) == statefiles.EXITED + "\n"


def test_a_request_without_a_state_dir_leaves_the_standby_for_the_next(marked_launcher, tmp_path):
    launcher_, _, standby = after_first_spawn(marked_launcher, tmp_path)
    assert launcher_.spawn(options(str(tmp_path / "missing"))) != 0
    assert launcher_.spawn(options(str(tmp_path / "b"))) == 0
    assert statefiles.parse_pid((tmp_path / "b" / statefiles.SHIM_PID).read_text())[0] == standby


def test_a_stopping_launcher_ends_its_standby_before_it_exits(marked_launcher, tmp_path):
    """So the shims' cgroup is empty once the executor has stopped, and can be removed."""
    launcher_, _, standby = after_first_spawn(marked_launcher, tmp_path)
    launcher_.close()
    assert exited(standby)


def test_a_launcher_that_cannot_start_is_a_clear_error(tmp_path):
    helper = ShimLauncher(sys.executable, lambda: {"PATH": os.defpath})  # no PYTHONPATH: the import fails
    try:
        with pytest.raises(FailedPrecondition, match="launcher"):
            helper.spawn(options(str(tmp_path)))
    finally:
        helper.close()
