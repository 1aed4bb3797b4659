"""Command lines, environments and names at and past the limits, through ./mydocker: they work or fail in one line."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from services.common.ctl import REPO
from services.common.limits import MAX_ARG_STRLEN
from tests.e2e.conftest import Host, one_line_error

pytestmark = pytest.mark.root
MYDOCKER = os.fsencode(REPO / "mydocker")


def mydocker_bytes(host: Host, *args: bytes, cli_server: bool = True) -> subprocess.CompletedProcess[str]:
    """./mydocker with an argv of raw bytes (what a shell passes on), output decoded for the assertions."""
    env = dict(host.env)
    if not cli_server:
        env["MYDOCKER_CLI_SERVER"] = "off"
    result = subprocess.run([MYDOCKER, *args], env=env, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    )


def no_containers(host: Host) -> None:
    assert host.mydocker("ps", "-a", "-q").stdout == "", "a refused run left a container behind"


def test_a_unicode_name_is_refused_in_one_line_naming_the_rule(host):
    line = one_line_error(host.mydocker("run", "--rm", "--name", "é…", "busybox", "true", check=False))
    assert "é…" in line and "[a-zA-Z0-9_.-]" in line
    no_containers(host)


@pytest.mark.parametrize("cli_server", [True, False], ids=["cli-server", "in-process"])
def test_bytes_that_are_not_utf8_are_refused_in_one_line_before_anything_is_made(host, cli_server):
    for argv in (
        [b"run", b"--rm", b"-e", b"A=\xff\xfe", b"busybox", b"true"],
        [b"run", b"--rm", b"busybox", b"echo", b"ab\xff"],
        [b"run", b"--rm", b"--name", b"n\xe9", b"busybox", b"true"],
    ):
        line = one_line_error(mydocker_bytes(host, *argv, cli_server=cli_server))
        assert "is not valid UTF-8" in line and "\\x" in line, line
    no_containers(host)


def test_a_variable_passed_through_from_the_environment_that_is_not_utf8_is_refused_in_one_line(host):
    env = dict(host.env)
    env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    env_bytes[b"ODD"] = b"\xfe"
    result = subprocess.run(
        [MYDOCKER, b"run", b"--rm", b"-e", b"ODD", b"busybox", b"true"],
        env=env_bytes, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    line = one_line_error(subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode(errors="replace")))
    assert "ODD=\\xfe" in line and "not valid UTF-8" in line
    no_containers(host)


def test_ten_thousand_environment_entries_reach_the_container(host):
    args = [arg for i in range(1, 10_001) for arg in ("-e", f"VAR_{i}=value_{i}")]
    result = host.mydocker("run", "--rm", *args, "busybox", "sh", "-c", 'env | grep -c ^VAR_; echo "$VAR_10000"')
    assert result.stdout.split() == ["10000", "value_10000"]


def test_an_argument_of_the_kernel_limit_runs_and_a_longer_one_cannot_reach_the_cli_at_all(host):
    longest = "a" * (MAX_ARG_STRLEN - 1)
    result = host.mydocker("run", "--rm", "busybox", "sh", "-c", 'echo "${#1}"', "sh", longest)
    assert result.stdout.strip() == str(MAX_ARG_STRLEN - 1)
    # execve refuses a 1 MiB argument for ./mydocker itself: over the API it is INVALID_ARGUMENT
    # (tests/contract/test_rpc_limits.py), never a failure inside the shim.
    with pytest.raises(OSError) as refused:
        host.mydocker("run", "--rm", "busybox", "echo", "a" * (1024 * 1024))
    assert refused.value.errno == errno.E2BIG
    no_containers(host)
