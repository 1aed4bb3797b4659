"""Unit tests for services.common.ctl's pure helpers: pidfiles, "is this pid our service", arguments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import ctl
from services.common.config import Config


@pytest.mark.parametrize(
    ("text", "pid"),
    [("1234\n", 1234), ("  42 ", 42), ("", None), ("0\n", None), ("-5", None), ("12abc", None), ("1 2", None)],
)
def test_parse_pid(text: str, pid: int | None) -> None:
    assert ctl.parse_pid(text) == pid


def test_read_pidfile_missing_is_none(tmp_path: Path) -> None:
    assert ctl.read_pidfile(tmp_path / "state.pid") is None


@pytest.mark.parametrize(
    ("cmdline", "service", "expected"),
    [
        (b"/repo/.venv/bin/python\0-m\0services.state\0", "state", True),
        (b"/repo/.venv/bin/python\0-m\0services.state\0--root\0/tmp/x\0", "state", True),
        (b"/repo/.venv/bin/python\0-m\0services.storage\0", "state", False),
        # A shim is not the executor service, and ctl is none of the services it manages.
        (b"/repo/.venv/bin/python\0-m\0services.executor.shim\0123\0", "executor", False),
        (b"/repo/.venv/bin/python\0-m\0services.common.ctl\0up\0state\0", "state", False),
        (b"/bin/sleep\0services.statex\0", "state", False),
        # The CLI server, and a worker of it (a fork: the same cmdline) or a CLI run in-process.
        (b"/repo/.venv/bin/python\0-m\0cli.forkserver\0", "cli", True),
        (b"/repo/.venv/bin/python\0-P\0-m\0cli\0ps\0", "cli", False),
        # A zombie's cmdline is empty.
        (b"", "state", False),
    ],
)
def test_cmdline_is_service(cmdline: bytes, service: str, expected: bool) -> None:
    assert ctl.cmdline_is_service(cmdline, service) is expected


def _fake_proc(tmp_path: Path, pid: int, cmdline: bytes) -> Path:
    (tmp_path / "proc" / str(pid)).mkdir(parents=True)
    (tmp_path / "proc" / str(pid) / "cmdline").write_bytes(cmdline)
    return tmp_path / "proc"


def test_is_service_process_reads_proc(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, 77, b"python\0-m\0services.storage\0")
    assert ctl.is_service_process(77, "storage", proc)
    assert not ctl.is_service_process(77, "state", proc)
    assert not ctl.is_service_process(78, "storage", proc)


def test_this_test_process_is_no_service() -> None:
    assert not any(ctl.is_service_process(os.getpid(), service) for service in ("state", "storage", "executor"))


def test_service_pid_needs_a_live_matching_process(tmp_path: Path) -> None:
    config = Config(root=tmp_path / "root", run=tmp_path / "run")
    config.run.mkdir()
    proc = _fake_proc(tmp_path, 77, b"python\0-m\0services.state\0")
    assert ctl.service_pid(config, "state", proc) is None
    config.pid_path("state").write_text("77\n")
    assert ctl.service_pid(config, "state", proc) == 77
    # A reused pid that now belongs to something else is stale.
    config.pid_path("storage").write_text("77\n")
    assert ctl.service_pid(config, "storage", proc) is None


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "state.log"
    log.write_text("".join(f"line {n}\n" for n in range(30)))
    assert ctl.log_tail(log, 3) == ["line 27", "line 28", "line 29"]
    assert ctl.log_tail(tmp_path / "missing.log") == [f"(no log file at {tmp_path / 'missing.log'})"]


def test_status_line() -> None:
    line = ctl.status_line("state", None, Path("/run/mydocker/state.sock"), "UNREACHABLE")
    assert line.split() == ["state", "-", "/run/mydocker/state.sock", "UNREACHABLE"]
    assert ctl.status_line("executor", 12, Path("/r/executor.sock"), "SERVING").split()[1] == "12"


def test_parse_services_keeps_start_order() -> None:
    assert ctl.parse_services([]) == ["state", "storage", "executor", "cli"]
    assert ctl.parse_services(["executor", "state"]) == ["state", "executor"]
    with pytest.raises(ValueError, match="unknown service 'bogus'"):
        ctl.parse_services(["bogus"])


def test_down_removes_a_stale_pidfile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Config(root=tmp_path / "root", run=tmp_path / "run")
    config.run.mkdir()
    # Our own pid is alive but is not the state service, so the pidfile is stale and nothing is signalled.
    config.pid_path("state").write_text(f"{os.getpid()}\n")
    assert ctl.down(config, ["state"]) == 0
    assert not config.pid_path("state").exists()
    assert "removed stale" in capsys.readouterr().out


def test_status_without_services_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Config(root=tmp_path / "root", run=tmp_path / "run")
    assert ctl.status(config, ["state", "storage", "executor"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["state", "storage", "executor"]
    assert all(line.endswith("UNREACHABLE") for line in lines)


def test_running_services_and_service_env(tmp_path: Path) -> None:
    config = Config(root=tmp_path / "root", run=tmp_path / "run")
    config.run.mkdir()
    proc = _fake_proc(tmp_path, 91, b"python\0-m\0services.executor\0")
    config.pid_path("executor").write_text("91\n")
    config.pid_path("state").write_text("91\n")
    assert ctl.running_services(config, proc) == {"executor": 91}
    env = ctl.service_env(config, {"PATH": "/bin", "MYDOCKER_ROOT": "/elsewhere"})
    assert env == {"PATH": "/bin", "MYDOCKER_ROOT": str(config.root), "MYDOCKER_RUN": str(config.run), "PYTHONPATH": str(ctl.REPO)}
