"""The CLI end to end: every verb of ./mydocker against the real services, as a user types it.

Each test gets its own services (the `host` fixture). Only ./mydocker drives the containers; files
under host.root, /proc and the cgroup tree are read where they prove something the CLI claims.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.ctl import REPO
from services.executor.cgroup_layout import CgroupLayout
from services.executor.cgroups import parse_proc_cgroup
from tests.e2e.conftest import both_cli_modes, one_line_error
from tests.waiting import wait_until

# Every test twice: through the CLI server, and with the CLI in-process.
pytestmark = [pytest.mark.root, both_cli_modes]

MYDOCKER = str(REPO / "mydocker")
CONTAINER_ID = re.compile(r"[0-9]{10}")
PS_HEADER = ["ID", "NAME", "PID", "IP", "STATUS", "COMMAND", "CREATED"]


# -- helpers ---------------------------------------------------------------------------------


def mydocker_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """./mydocker ARGS with an environment of our choosing, stdin closed."""
    return subprocess.run(
        [MYDOCKER, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )


def ps_table(host, *flags: str) -> dict[str, dict[str, str]]:
    """`ps` rows by id: NAME, PID, IP, STATUS, COMMAND, CREATED parsed by the header's column offsets."""
    lines = host.mydocker("ps", *flags).stdout.splitlines()
    header = lines[0]
    assert header.split() == PS_HEADER
    starts = [header.index(column) for column in PS_HEADER]
    rows = {}
    for line in lines[1:]:
        cells = [line[start:end].strip() for start, end in zip(starts, [*starts[1:], None])]
        rows[cells[0]] = dict(zip(PS_HEADER, cells))
    return rows


def ps_ids(host, *flags: str) -> list[str]:
    return host.mydocker("ps", "-q", *flags).stdout.split()


def run_detached(host, *args: str) -> str:
    container_id = host.mydocker("run", "-d", *args).stdout.strip()
    assert CONTAINER_ID.fullmatch(container_id), container_id
    return container_id


def inspect(host, *references: str) -> list[dict]:
    return json.loads(host.mydocker("inspect", *references).stdout)


def live_pid(host, reference: str) -> int:
    return int(inspect(host, reference)[0]["live"]["pid"])


def cgroup_value(pid: int, controller: str, v1_file: str, v2_file: str) -> str:
    """A cgroup file of the cgroup `pid` is in, for cgroup v1 or v2."""
    membership = parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    if controller in membership:
        directory = Path("/sys/fs/cgroup") / controller / membership[controller].lstrip("/")
        return (directory / v1_file).read_text().strip()
    directory = Path("/sys/fs/cgroup") / membership[""].lstrip("/")
    return (directory / v2_file).read_text().strip()


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Pty:
    """./mydocker ARGS on a pseudo-terminal of our own, as a user at a terminal would run it.

    The CLI is a session leader with the pty as its controlling terminal, so window changes
    reach it as SIGWINCH. Every read is bounded; close() kills only the child it spawned.
    """

    def __init__(self, env: dict[str, str], *args: str, rows: int = 24, cols: int = 80):
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        self.output = b""
        self.exit_code: int | None = None
        try:
            self.proc = subprocess.Popen(
                [MYDOCKER, *args],
                env=env,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                # Runs after setsid in the child: make the pty its controlling terminal.
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )
        finally:
            os.close(slave)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read_some(self, timeout: float) -> bool:
        """Append what the terminal shows within `timeout`; False at end of output (all slaves closed)."""
        readable, _, _ = select.select([self.master], [], [], timeout)
        if not readable:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError as err:
            if err.errno == errno.EIO:
                return False
            raise
        self.output += chunk
        return bool(chunk)

    def expect(self, needle: bytes, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_some(min(remaining, 0.2)):
                raise AssertionError(f"{needle!r} never appeared on the terminal; it shows {self.output!r}")

    def wait(self, timeout: float = 20.0) -> int:
        """The CLI's exit code, once its output is read to the end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read_some(min(deadline - time.monotonic(), 0.2)):
            if self.proc.poll() is not None:
                # Exited: drain what it wrote before going.
                while self._read_some(0.2) and time.monotonic() < deadline:
                    pass
                break
        try:
            self.exit_code = self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mydocker did not exit in {timeout}s; the terminal shows {self.output!r}") from None
        return self.exit_code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)


@contextlib.contextmanager
def pty_session(host, *args: str, rows: int = 24, cols: int = 80) -> Iterator[Pty]:
    session = Pty(host.env, *args, rows=rows, cols=cols)
    try:
        yield session
    finally:
        session.close()


def terminal_lines(output: bytes) -> list[str]:
    return output.decode(errors="replace").replace("\r\n", "\n").split("\n")


# -- foreground -it on a real terminal --------------------------------------------------------


def test_run_it_is_an_interactive_shell_and_exits_with_its_code(host):
    with pty_session(host, "run", "-it", "busybox", "sh") as term:
        term.expect(b"# ")
        term.write(b"echo hello-$((6*7))\r")
        term.expect(b"hello-42")
        term.write(b"exit 7\r")
        assert term.wait() == 7
    assert "hello-42" in terminal_lines(term.output)
    (row,) = ps_table(host, "-a").values()
    assert row["STATUS"] == "exited (7)" and row["COMMAND"] == "sh"


def test_run_it_starts_with_the_terminal_window_size(host):
    with pty_session(host, "run", "-it", "busybox", "stty", "size", rows=33, cols=101) as term:
        assert term.wait() == 0
    assert "33 101" in terminal_lines(term.output)


def test_run_it_follows_the_terminal_window_size(host):
    with pty_session(host, "run", "-it", "busybox", "sh", rows=33, cols=101) as term:
        term.expect(b"# ")
        term.write(b"stty size\r")
        term.expect(b"33 101\r\n")
        # Resizing our terminal sends the CLI SIGWINCH; the new size must reach the container's tty.
        term.resize(40, 120)
        deadline = time.monotonic() + 10
        while b"40 120\r\n" not in term.output and time.monotonic() < deadline:
            term.write(b"stty size\r")
            with contextlib.suppress(AssertionError):
                term.expect(b"40 120\r\n", timeout=0.5)
        assert b"40 120\r\n" in term.output, term.output
        term.write(b"exit\r")
        assert term.wait() == 0


def test_ctrl_c_reaches_the_container(host):
    script = 'trap "echo got-int; exit 42" INT; echo ready; while true; do sleep 0.1; done'
    with pty_session(host, "run", "-it", "busybox", "sh", "-c", script) as term:
        term.expect(b"ready")
        term.write(b"\x03")
        assert term.wait() == 42
    # The terminal echoes the ^C, then the container's trap prints.
    assert any(line.endswith("got-int") for line in terminal_lines(term.output)), term.output
    # The CLI was in raw mode: the interrupt went to the container, not to the CLI.
    assert "Traceback" not in term.output.decode(errors="replace")


# -- pipes, environment, isolation, argv -----------------------------------------------------


def test_without_a_terminal_stdio_are_pipes(host):
    piped = host.mydocker("run", "-i", "busybox", "cat", stdin="hi\n")
    assert (piped.returncode, piped.stdout) == (0, "hi\n")

    split = host.mydocker("run", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (split.returncode, split.stdout, split.stderr) == (3, "out\n", "err\n")

    # Without -i, stdin is not attached: cat sees end of input at once.
    detached_stdin = host.mydocker("run", "busybox", "cat", stdin="ignored\n")
    assert (detached_stdin.returncode, detached_stdin.stdout) == (0, "")


def test_the_environment_is_exactly_path_hostname_home_term_and_e_values(host):
    leak = f"MDK_LEAK_{uuid.uuid4().hex[:8].upper()}"
    env = {**host.env, leak: "from-the-host", "MDK_PASS": "passed-through"}

    plain = mydocker_cli(env, "run", "--name", "envy", "-e", "K1=v1", "-e", "K2=a b=c", "-e", "MDK_PASS", "busybox", "env")
    assert plain.returncode == 0, plain.stderr
    variables = dict(line.split("=", 1) for line in plain.stdout.splitlines())
    # HOME from the image's /etc/passwd, as Docker sets it.
    assert variables == {
        "PATH": variables["PATH"],
        "HOSTNAME": "envy",
        "HOME": "/root",
        "K1": "v1",
        "K2": "a b=c",
        "MDK_PASS": "passed-through",
    }
    assert "/bin" in variables["PATH"].split(":")
    assert leak not in plain.stdout

    # With a terminal (-t alone, stdin closed), TERM is there too.
    with_tty = mydocker_cli(env, "run", "-t", "busybox", "env")
    assert with_tty.returncode == 0, with_tty.stderr
    assert sorted(line.split("=")[0] for line in with_tty.stdout.replace("\r", "").splitlines()) == ["HOME", "HOSTNAME", "PATH", "TERM"]

    # And at a real terminal with -it.
    with pty_session(host, "run", "-it", "-e", "K1=v1", "busybox", "env") as term:
        assert term.wait() == 0
    names = sorted(line.split("=")[0] for line in terminal_lines(term.output) if "=" in line)
    assert names == ["HOME", "HOSTNAME", "K1", "PATH", "TERM"]


def test_the_container_is_isolated(host):
    script = "; ".join(
        [
            "echo pid=$$",
            "echo host=$(hostname)",
            "ps",
            "echo x > /dev/null && echo devnull-ok",
            "touch /sys/mdk-probe 2>/dev/null; echo sys-touch=$?",
            "ip link show lo",
            "ping -c 1 -W 2 127.0.0.1 >/dev/null && echo ping-ok",
        ]
    )
    result = host.mydocker("run", "--name", "web", "busybox", "sh", "-c", script)
    lines = result.stdout.splitlines()
    assert "pid=1" in lines
    assert "host=web" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["PID", "USER"])
    processes = [line.split()[0] for line in lines[header + 1 :] if line.split() and line.split()[0].isdigit()]
    # /proc is the container's own: PID 1 (the shell) and ps, nothing of the host's.
    assert processes[0] == "1" and len(processes) == 2, lines
    assert "devnull-ok" in lines
    assert "sys-touch=1" in lines
    assert re.search(r"^1: lo: <[^>]*\bUP\b[^>]*>", result.stdout, re.MULTILINE), result.stdout
    assert "ping-ok" in lines

    assert host.mydocker("run", "--name", "web2", "--hostname", "h1", "busybox", "hostname").stdout == "h1\n"
    assert host.mydocker("run", "-w", "/tmp", "busybox", "pwd").stdout == "/tmp\n"

    # Seen from the host: the container's first process is in namespaces of its own.
    container_id = run_detached(host, "busybox", "top")
    pid = live_pid(host, container_id)
    for namespace in ("mnt", "uts", "ipc", "pid", "net"):
        assert os.readlink(f"/proc/{pid}/ns/{namespace}") != os.readlink(f"/proc/self/ns/{namespace}"), namespace
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"top\0"


def test_argv_keeps_spaces(host):
    assert host.mydocker("run", "busybox", "sh", "-c", 'echo "a  b"').stdout == "a  b\n"
    assert host.mydocker("run", "busybox", "echo", "a  b", "c").stdout == "a  b c\n"
    # Seed-style flags after the image belong to the command, untouched.
    assert host.mydocker("run", "busybox", "echo", "-name", "x").stdout == "-name x\n"


# -- detached, logs, ps ----------------------------------------------------------------------


def test_detached_logs_and_ps(host):
    container_id = run_detached(host, "busybox", "sh", "-c", "echo one; sleep 1; echo two >&2; echo three")
    assert ps_table(host)[container_id]["STATUS"] == "running"

    followed = host.mydocker("logs", "-f", container_id)
    # It followed the container to its end, so the line printed after the sleep is there.
    assert followed.stdout == "one\nthree\n" and followed.stderr == "two\n"

    logged = host.mydocker("logs", container_id)
    assert (logged.stdout, logged.stderr) == ("one\nthree\n", "two\n")
    assert container_id not in ps_table(host)
    assert ps_table(host, "-a")[container_id]["STATUS"] == "exited (0)"
    assert container_id not in ps_ids(host) and container_id in ps_ids(host, "-a")


def test_a_container_whose_process_died_is_never_shown_running(host):
    killed = run_detached(host, "--name", "victim", "busybox", "top")
    row = ps_table(host)[killed]
    pid = int(row["PID"])
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"top\0"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: killed not in ps_ids(host), what="the killed container to leave ps")
    assert ps_table(host, "-a")[killed]["STATUS"] == "exited (137)"

    # Shim and process both gone: the record is still not "running".
    orphaned = run_detached(host, "busybox", "top")
    live = inspect(host, orphaned)[0]["live"]
    pid, shim_pid = int(live["pid"]), int(live["shim_pid"])
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"top\0"
    assert Path(f"/proc/{shim_pid}/comm").read_text() == f"shim {orphaned}"[:15] + "\n"
    os.kill(shim_pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: orphaned not in ps_ids(host), what="the orphaned container to leave ps")
    assert ps_table(host, "-a")[orphaned]["STATUS"].startswith("exited (")
    assert inspect(host, orphaned)[0]["status"] != "CONTAINER_STATUS_RUNNING"


# -- exec ------------------------------------------------------------------------------------


def test_exec_runs_inside_with_the_real_exit_code(host):
    container_id = run_detached(host, "--name", "t1", "-e", "FROM_RUN=yes", "busybox", "top")

    assert host.mydocker("exec", container_id, "sh", "-c", "exit 5", check=False).returncode == 5
    assert host.mydocker("exec", container_id, "hostname").stdout == "t1\n"
    assert host.mydocker("exec", "t1", "cat", "/proc/1/cmdline").stdout == "top\0"
    environment = host.mydocker("exec", "-e", "K=V", "t1", "env").stdout.splitlines()
    assert "K=V" in environment and "FROM_RUN=yes" in environment and "HOSTNAME=t1" in environment
    # stdin is attached, as the seed's `exec ID /bin/sh`.
    assert host.mydocker("exec", "t1", "sh", stdin="echo $((2+3))\n").stdout == "5\n"
    # It joined the container's cgroup and pid namespace: from inside, it is not PID 1 and sees top.
    inside = host.mydocker("exec", "t1", "sh", "-c", "echo $$; cat /proc/1/comm").stdout.split()
    assert inside[0] != "1" and inside[1] == "top"

    host.mydocker("stop", "-t", "1", "t1")
    marker = Path(tempfile.gettempdir()) / f"mdk-exec-{uuid.uuid4().hex}"
    try:
        line = one_line_error(host.mydocker("exec", container_id, "touch", str(marker), check=False))
        assert "not running" in line
        assert not marker.exists()
    finally:
        marker.unlink(missing_ok=True)
    assert "no such container" in one_line_error(host.mydocker("exec", "nosuch", "true", check=False))


def test_exec_gives_the_command_only_its_stdio(host):
    container_id = run_detached(host, "busybox", "top")
    # 3 is ls's own listing of the directory: nothing of the exec helper's (its status pipe was 19).
    assert host.mydocker("exec", container_id, "ls", "/proc/self/fd").stdout.split() == ["0", "1", "2", "3"]
    # So a background process that closed its stdio does not keep exec waiting for its end.
    detached = host.mydocker("exec", container_id, "sh", "-c", "sleep 1000 >/dev/null 2>&1 </dev/null & echo started")
    assert detached.stdout == "started\n"


# -- stop and rm -----------------------------------------------------------------------------


def test_stop_kills_a_pid1_that_ignores_term(host):
    stubborn = run_detached(host, "busybox", "sh", "-c", 'trap "" TERM; while true; do sleep 1; done')
    started = time.monotonic()
    assert host.mydocker("stop", "-t", "1", stubborn).stdout.strip() == stubborn
    # Not a speed check: `-t 1` was honoured (the default would have waited 10 s before SIGKILL).
    assert time.monotonic() - started < 8
    assert ps_table(host, "-a")[stubborn]["STATUS"] == "stopped (137)"

    polite = run_detached(host, "busybox", "top")
    host.mydocker("stop", polite)
    # 143: SIGTERM ended it, without waiting for the SIGKILL after the timeout.
    assert ps_table(host, "-a")[polite]["STATUS"] == "stopped (143)"
    assert ps_ids(host) == []


def test_a_foreground_run_stopped_from_elsewhere_ends_quietly_with_one_exit_record(host):
    # Both CLIs see the same exit and record it without reading the record first: whichever comes
    # second is refused by the state service and keeps the first one's record, without an error.
    name = f"fg-{uuid.uuid4().hex[:8]}"
    foreground = subprocess.Popen(
        [MYDOCKER, "run", "--name", name, "busybox", "sleep", "1000"],
        env=host.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: name in host.mydocker("ps").stdout, what=f"{name} to run")
        host.mydocker("stop", "-t", "1", name)
        _, stderr = foreground.communicate(timeout=30)
    finally:
        if foreground.poll() is None:
            foreground.kill()
            foreground.wait()
    # sleep as PID 1 has no handler for TERM: the KILL after `-t 1` ends it.
    assert foreground.returncode == 137, stderr
    assert stderr == ""
    (row,) = [row for row in ps_table(host, "-a").values() if row["NAME"] == name]
    assert row["STATUS"] in ("stopped (137)", "exited (137)")
    host.mydocker("rm", name)


def shortest_unique_prefix(container_id: str, others: list[str]) -> str:
    for length in range(4, len(container_id)):
        prefix = container_id[:length]
        if not any(other != container_id and other.startswith(prefix) for other in others):
            return prefix
    return container_id


def test_rm_and_references_by_name_and_prefix(host):
    running = run_detached(host, "--name", "keeper", "busybox", "top")
    line = one_line_error(host.mydocker("rm", running, check=False))
    assert "running" in line and "-f" in line
    assert running in ps_ids(host)
    assert (host.root / "overlay2" / running).is_dir()

    # Names and unique prefixes work for logs, exec, inspect, stop and rm.
    host.mydocker("run", "--name", "first", "busybox", "echo", "first-out")
    first_id = next(cid for cid, row in ps_table(host, "-a").items() if row["NAME"] == "first")
    prefix = shortest_unique_prefix(running, ps_ids(host, "-a"))
    assert len(prefix) < len(running)
    assert host.mydocker("logs", "first").stdout == "first-out\n"
    assert host.mydocker("exec", prefix, "hostname").stdout == "keeper\n"
    assert [entry["id"] for entry in inspect(host, "keeper", prefix, "first")] == [running, running, first_id]
    assert host.mydocker("stop", "-t", "1", prefix).stdout.strip() == running
    assert running not in ps_ids(host)

    # Several at once, by name and id prefix.
    second_id = run_detached(host, "--name", "second", "busybox", "top")
    removed = host.mydocker("rm", "-f", "first", shortest_unique_prefix(second_id, ps_ids(host, "-a")), "keeper")
    assert removed.stdout.split() == [first_id, second_id, running]
    assert ps_ids(host, "-a") == []
    for container_id in (first_id, second_id, running):
        assert not (host.root / "overlay2" / container_id).exists()

    assert one_line_error(host.mydocker("rm", running, check=False)) == f"mydocker: no such container: {running}"

    # rm -f of a running container kills it and removes everything.
    doomed = run_detached(host, "busybox", "top")
    pid = live_pid(host, doomed)
    host.mydocker("rm", "-f", doomed)
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/cmdline").read_bytes() != b"top\0"
    assert ps_ids(host, "-a") == [] and not (host.root / "overlay2" / doomed).exists()


# -- volumes and commit ----------------------------------------------------------------------


def test_volumes(host):
    with temp_dir() as base:
        data, ro, other = base / "data", base / "ro", base / "other"
        ro.mkdir()
        (ro / "given").write_text("from-host\n")
        assert not data.exists()

        script = "echo inside > /data/f; echo more > /other/g; cat /ro/given; echo x > /ro/new 2>/dev/null; echo ro=$?"
        result = host.mydocker(
            "run", "-v", f"{data}:/data", "-v", f"{ro}:/ro:ro", "-v", f"{other}:/other", "busybox", "sh", "-c", script
        )
        assert result.stdout == "from-host\nro=1\n"
        # The missing host dirs were made, and what was written inside is on the host.
        assert (data / "f").read_text() == "inside\n"
        assert (other / "g").read_text() == "more\n"
        assert not (ro / "new").exists()

        # rm -f of a container with a volume leaves the host data; commit leaves it out.
        container_id = run_detached(
            host, "-v", f"{data}:/data", "busybox", "sh", "-c", "echo again > /data/h; echo layer > /layer.txt; exec top"
        )
        wait_until(lambda: (data / "h").exists(), what="the file written through the volume")
        assert host.mydocker("commit", container_id, "withvol").stdout.strip() == "withvol"
        host.mydocker("rm", "-f", container_id)
        assert sorted(os.listdir(data)) == ["f", "h"]
        committed = host.mydocker("run", "withvol", "sh", "-c", "cat /layer.txt; ls -A /data 2>/dev/null | wc -l")
        assert committed.stdout.split() == ["layer", "0"]
        # image/withvol.tar is a docker-archive; its last layer is the commit's: the changes, not the volume.
        with tarfile.open(host.root / "image" / "withvol.tar") as archive:
            manifest = json.load(archive.extractfile("manifest.json"))
            top = archive.extractfile(manifest[0]["Layers"][-1])
            with tarfile.open(fileobj=top) as layer:
                members = [member.name.lstrip("./") for member in layer.getmembers()]
        assert "layer.txt" in members
        assert not [name for name in members if name.startswith("data/")], members
    assert not base.exists()


# -- resources -------------------------------------------------------------------------------


def test_resource_limits_through_the_seed_flags(host):
    container_id = run_detached(host, "-mem", "64m", "-cpu", "50", "-cpuset", "0", "busybox", "top")
    (entry,) = inspect(host, container_id)
    resources = entry["resources"]
    assert int(resources["memory_bytes"]) == 67108864
    assert int(resources["nano_cpus"]) == 500000000
    assert resources["cpuset_cpus"] == "0"

    pid = int(entry["live"]["pid"])
    memory = cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max")
    assert int(memory) == 67108864
    quota = cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()[0]
    period = cgroup_value(pid, "cpu", "cpu.cfs_period_us", "cpu.max").split()[-1]
    assert int(quota) * 2 == int(period)
    assert cgroup_value(pid, "cpuset", "cpuset.cpus", "cpuset.cpus") == "0"
    host.mydocker("rm", "-f", container_id)

    # --cpus is the docker spelling of the same thing.
    cpus_id = run_detached(host, "--cpus", "1.5", "busybox", "top")
    assert int(inspect(host, cpus_id)[0]["resources"]["nano_cpus"]) == 1500000000


def test_a_memory_hog_is_oom_killed(host):
    hog = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo done"
    result = host.mydocker("run", "--name", "hog", "-m", "32m", "busybox", "sh", "-c", hog, check=False)
    assert result.returncode == 137, result
    assert "done" not in result.stdout
    (row,) = [row for row in ps_table(host, "-a").values() if row["NAME"] == "hog"]
    assert row["STATUS"] == "exited (137, OOM killed)"
    assert inspect(host, "hog")[0]["oom_killed"] is True


def test_pids_limit_stops_a_fork_storm(host):
    container_id = run_detached(host, "--pids-limit", "5", "busybox", "top")
    assert cgroup_value(live_pid(host, container_id), "pids", "pids.max", "pids.max") == "5"
    storm = "for i in $(seq 20); do sleep 2 >/dev/null 2>&1 </dev/null & done; echo all-started"
    result = host.mydocker("exec", container_id, "sh", "-c", storm, check=False)
    assert result.returncode != 0
    assert "all-started" not in result.stdout
    assert "fork" in result.stderr or "Resource temporarily unavailable" in result.stderr, result.stderr
    # The container itself survives.
    assert ps_table(host)[container_id]["STATUS"] == "running"
    assert host.mydocker("exec", container_id, "cat", "/proc/1/comm").stdout == "top\n"


# -- images ----------------------------------------------------------------------------------


def image_table(host) -> dict[str, list[str]]:
    lines = host.mydocker("images").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_images_import_and_rmi(host):
    busybox = image_table(host)["busybox"]
    assert busybox[1] == "latest" and re.fullmatch(r"[0-9a-f]{12}", busybox[2])
    assert re.fullmatch(r"\d+(\.\d)?(B|KiB|MiB|GiB)", busybox[-1])

    user = run_detached(host, "busybox", "top")
    line = one_line_error(host.mydocker("rmi", "busybox", check=False))
    assert user in line
    assert (host.root / "image" / "busybox.tar").is_file()

    with temp_dir() as base:
        tar_path = base / "tiny.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add("/bin/busybox", arcname="bin/busybox")
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", host.mydocker("import", str(tar_path), "tiny").stdout.strip())
        assert host.mydocker("run", "tiny", "/bin/busybox", "echo", "ok").stdout == "ok\n"

        with tar_path.open("rb") as stream:
            piped = subprocess.run(
                [MYDOCKER, "import", "-", "tiny2"], env=host.env, stdin=stream, capture_output=True, text=True, timeout=120
            )
        assert piped.returncode == 0 and piped.stdout.startswith("sha256:"), piped.stderr
        assert host.mydocker("run", "tiny2", "/bin/busybox", "echo", "ok2").stdout == "ok2\n"
    assert not base.exists()

    assert {"busybox", "tiny", "tiny2"} <= set(image_table(host))
    assert "already exists" in one_line_error(host.mydocker("import", str(host.root / "image" / "tiny.tar"), "tiny", check=False))

    # Used by exited containers: refused until they are removed, then removable.
    assert one_line_error(host.mydocker("rmi", "tiny", check=False))
    host.mydocker("rm", *[cid for cid, row in ps_table(host, "-a").items() if row["STATUS"].startswith("exited")])
    removed = host.mydocker("rmi", "tiny", "tiny2").stdout.splitlines()
    assert [line for line in removed if line.startswith("Untagged:")] == ["Untagged: tiny:latest", "Untagged: tiny2:latest"]
    assert len([line for line in removed if line.startswith("Deleted: sha256:")]) == 2
    assert set(image_table(host)) == {"busybox"}
    assert not (host.root / "image" / "tiny.tar").exists()
    assert "not found" in one_line_error(host.mydocker("rmi", "tiny", check=False))


# -- inspect ---------------------------------------------------------------------------------


def test_inspect_shows_the_record_and_live_state(host):
    container_id = run_detached(host, "--name", "seen", "busybox", "sh", "-c", "echo a  b; exec top")
    entries = inspect(host, "seen")
    assert isinstance(entries, list) and len(entries) == 1
    (entry,) = entries
    assert entry["id"] == container_id
    assert entry["name"] == "seen"
    assert entry["image"] == "busybox"
    assert entry["command"] == ["sh", "-c", "echo a  b; exec top"]
    assert entry["status"] == "CONTAINER_STATUS_RUNNING"
    live = entry["live"]
    assert live["status"] == "PROCESS_STATUS_RUNNING"
    assert int(live["pid"]) == int(ps_table(host)[container_id]["PID"]) > 0
    assert Path(f"/proc/{live['pid']}/cmdline").read_bytes() == b"top\0"

    host.mydocker("stop", "-t", "1", container_id)
    (stopped,) = inspect(host, container_id)
    assert stopped["status"] == "CONTAINER_STATUS_STOPPED"
    assert stopped["live"]["status"] == "PROCESS_STATUS_EXITED"
    assert stopped.get("exit_code") == 143


# -- bad input -------------------------------------------------------------------------------


def container_cgroups(host) -> set[str]:
    layout = CgroupLayout.from_host(parent=host.env["MYDOCKER_CGROUP_PARENT"])
    return {f"{d}/{child}" for d in layout.parent_dirs() if d.is_dir() for child in os.listdir(d) if (d / child).is_dir()}


def test_bad_input_is_one_line_and_leaves_nothing_behind(host):
    run_detached(host, "--name", "dup", "busybox", "top")
    before = (ps_ids(host, "-a"), sorted(os.listdir(host.root / "overlay2")), container_cgroups(host), mounts(host.root))

    cases = {
        ("run", "nosuchimage", "true"): "nosuchimage",
        ("run", "-m", "12x", "busybox", "true"): "--memory",
        ("run", "-mem", "-5m", "busybox", "true"): "--memory",
        ("run", "--cpu", "abc", "busybox", "true"): "--cpu",
        ("run", "-v", "relative:/data", "busybox", "true"): "volume",
        ("run", "-v", "/tmp/mdk-only-one-part", "busybox", "true"): "volume",
        ("run", "-v", "/tmp/mdk-x:/data:rx", "busybox", "true"): "volume",
        ("run", "--name", "dup", "busybox", "true"): "dup",
        ("run", "-it", "-d", "busybox", "true"): "-d",
        ("logs", "nosuch"): "no such container",
        ("exec", "nosuch", "true"): "no such container",
        ("stop", "nosuch"): "no such container",
        ("rm", "nosuch"): "no such container",
        ("inspect", "nosuch"): "no such container",
        ("commit", "dup", "busybox"): "already exists",
        ("commit", "dup", "../evil"): "..",
        ("import", "/nonexistent/mdk.tar", "x"): "/nonexistent/mdk.tar",
    }
    for args, needle in cases.items():
        line = one_line_error(host.mydocker(*args, check=False))
        assert needle in line, (args, line)

    after = (ps_ids(host, "-a"), sorted(os.listdir(host.root / "overlay2")), container_cgroups(host), mounts(host.root))
    assert after == before
    assert not Path("/tmp/mdk-x").exists() and not Path("/tmp/mdk-only-one-part").exists()
    assert not (host.root / "evil.tar").exists()


def mounts(root: Path) -> list[str]:
    """Mount points below this test's root: other work on the host may mount elsewhere meanwhile."""
    with open("/proc/self/mountinfo") as mountinfo:
        return sorted(point for point in (line.split()[4] for line in mountinfo) if point.startswith(f"{root}/"))


def test_an_image_of_sixty_layers_runs_and_commits(host):
    """More layers than one mount data page can name (~40 with these paths): the overlay takes them one by one."""
    from tests.imagetools import HandImage, docker_archive_members, image_config, sha256, tar_bytes, write_tar

    busybox = (host.root / "image" / "busybox.tar").read_bytes()
    layers = [busybox] + [tar_bytes({f"etc/layer-{index:02d}": f"{index}\n".encode(), "etc/top": f"{index}\n".encode()})
                          for index in range(1, 60)]
    image = HandImage(layers, layers, image_config([sha256(layer) for layer in layers], cmd="/bin/sh"))
    with temp_dir() as base:
        archive = write_tar(base / "deep.tar", docker_archive_members(image, ["deep:v1"], old_style=False))
        host.mydocker("load", "-i", str(archive))
    out = host.mydocker("run", "--rm", "deep:v1", "sh", "-c", "cat /etc/top; ls /etc | grep -c layer-").stdout
    assert out == "59\n59\n"
    container = host.mydocker("run", "-d", "deep:v1", "sh", "-c", "echo changed > /etc/top; exec sleep 60").stdout.strip()
    try:
        wait_until(lambda: host.mydocker("exec", container, "cat", "/etc/top").stdout == "changed\n", what="the change seen inside")
        host.mydocker("commit", container, "deeper")
        assert host.mydocker("run", "--rm", "deeper", "cat", "/etc/top").stdout == "changed\n"
        assert len(json.loads(host.mydocker("image", "inspect", "deeper").stdout)[0]["layers"]) == 61
    finally:
        host.mydocker("rm", "-f", container)
        host.mydocker("rmi", "deeper", "deep:v1")


def test_commit_keeps_the_container_run_config_and_changes_come_after(host):
    """As docker commit: the image runs what the container ran, with its -e, -w and -u; -c overrides after."""
    container = host.mydocker(
        "run", "-d", "-e", "GREETING=hi", "-w", "/tmp", "-u", "65534", "busybox",
        "sh", "-c", "echo $GREETING from $(pwd) as $(id -u); exec sleep 60",
    ).stdout.strip()
    try:
        host.mydocker("commit", container, "kept")
        host.mydocker("commit", "-c", "ENV GREETING=changed", "-c", "WORKDIR /", container, "changed")
    finally:
        host.mydocker("rm", "-f", container)
    try:
        kept = json.loads(host.mydocker("image", "inspect", "kept").stdout)[0]["config"]
        assert kept["cmd"]["values"][:2] == ["sh", "-c"] and "GREETING=hi" in kept["env"]
        assert (kept["working_dir"], kept["user"]) == ("/tmp", "65534")
        # The container's command ends in a 60 s sleep: give the run something quicker to say the same.
        assert host.mydocker("run", "--rm", "kept", "sh", "-c", "echo $GREETING from $(pwd) as $(id -u)").stdout == "hi from /tmp as 65534\n"
        changed = host.mydocker("run", "--rm", "changed", "sh", "-c", "echo $GREETING from $(pwd)").stdout
        assert changed == "changed from /\n"
    finally:
        host.mydocker("rmi", "kept", "changed")
