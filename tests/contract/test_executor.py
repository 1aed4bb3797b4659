"""The executor through its gRPC API, as root on the real kernel: shims, namespaces, cgroups, stdio, exec, restarts.

Each test gets temp roots, its own cgroup parent (MYDOCKER_CGROUP_PARENT) and a busybox rootfs bind-mounted
onto itself; every container, cgroup and mount made here is removed here.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.executor.v1 import executor_pb2 as pb
from protos.executor.v1 import executor_pb2_grpc
from protos.types.v1 import types_pb2
from services.common.config import Config, unix_target
from services.executor import statefiles
from services.executor.__main__ import build
from services.executor.cgroup_layout import CgroupLayout
from services.executor.cgroups import cgroup_from_record
from tests.busybox import busybox_rootfs
from tests.waiting import wait_until

CODE = grpc.StatusCode
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.root

def until_none(requests: queue.Queue) -> Iterator:
    """A request stream fed from a queue; None ends it."""
    while (item := requests.get()) is not None:
        yield item


_ids = iter(range(10**9))


def new_id() -> str:
    # Ten digits like the state service's ids, unique per test run.
    return f"{7000000000 + os.getpid() % 100000 * 1000 + next(_ids) % 1000}"


@pytest.fixture(scope="module")
def busybox_tree() -> Iterator[Path]:
    """One busybox rootfs for the module; each test sees it where its own executor accepts a rootfs."""
    base = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
    try:
        with busybox_rootfs(base) as root:
            yield root
    finally:
        shutil.rmtree(base)


@pytest.fixture
def rootfs(busybox_tree, temp_config) -> Iterator[str]:
    """The module's busybox tree bound at <root>/overlay2/busybox/merged of this test's executor."""
    target = temp_config.root / "overlay2" / "busybox" / "merged"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(busybox_tree), str(target)], check=True)
    try:
        yield str(target)
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def cgroup_parent(monkeypatch) -> Iterator[str]:
    parent = f"mdk-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MYDOCKER_CGROUP_PARENT", parent)
    yield parent
    layout = CgroupLayout.from_host(parent=parent)
    assert layout.remove_parent(), "a cgroup of the test is still in use"
    for directory in layout.parent_dirs():
        assert not directory.exists(), f"stray cgroup {directory}"


@pytest.fixture
def executor(cgroup_parent, start_server, temp_config):
    """A stub of a real executor server; every container it still lists is force-deleted afterwards."""
    _, channel = start_server(build(temp_config))
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    yield stub
    cleanup(temp_config)


def cleanup(config: Config) -> None:
    """Force-delete whatever the tests left, through a fresh server (the test's own may be stopped)."""
    from services.executor.servicer import build_core

    core = build_core(config)
    for state in core.list():
        core.delete(state.id, force=True)
    assert core.list() == []


def create(stub, rootfs: str, args, container_id: str | None = None, **fields) -> pb.ContainerProcess:
    process_fields = {key: fields.pop(key) for key in ("env", "cwd", "terminal", "stdin") if key in fields}
    request = pb.CreateContainerRequest(
        id=container_id or new_id(),
        hostname=fields.pop("hostname", "box"),
        rootfs_path=rootfs,
        process=pb.ProcessSpec(args=list(args), **process_fields),
        **fields,
    )
    return stub.CreateContainer(request, timeout=30).process


def run(stub, rootfs: str, args, **fields) -> tuple[pb.ContainerProcess, bytes]:
    """Create, start, wait: the final state and the stdout+stderr bytes of its log."""
    process = create(stub, rootfs, args, **fields)
    stub.StartContainer(pb.StartContainerRequest(id=process.id), timeout=30)
    final = stub.WaitContainer(pb.WaitContainerRequest(id=process.id), timeout=30).process
    return final, b"".join(line.data for line in logs(stub, process.id))


def logs(stub, container_id: str, **fields) -> list[pb.LogsResponse]:
    return list(stub.Logs(pb.LogsRequest(id=container_id, **fields), timeout=30))


def expect(code: grpc.StatusCode, call, request, fragment: str = "", timeout: float = 30) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, timeout=timeout)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)
    assert caught.value.code() == code, caught.value.details()
    assert fragment in caught.value.details()
    return caught.value.details()


def launcher_of(config: Config, parent: int | None = None) -> int:
    """The pid of the shim launcher of `config`'s executor (a child of `parent`, by default this process), or 0."""
    parent = os.getpid() if parent is None else parent
    marker = f"PYTHONPYCACHEPREFIX={config.run / 'pycache'}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if comm == "shim-launcher" and ppid == parent and marker in environ:
            return int(entry)
    return 0


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` no longer exists at all: exited and reaped."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.01)
    return not os.path.exists(f"/proc/{pid}")


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def container_cgroup(config: Config, container_id: str):
    record = json.loads((config.run / container_id / statefiles.CGROUP).read_text())
    return cgroup_from_record(record)


# -- lifecycle --------------------------------------------------------------------------------


def test_exit_code_and_lifecycle_states(executor, rootfs):
    created = create(executor, rootfs, ["sh", "-c", "exit 3"])
    assert created.status == pb.PROCESS_STATUS_CREATED
    assert created.pid > 0 and created.shim_pid > 0 and created.pid_start_time > 0
    assert statefiles.proc_start_time(created.pid) == created.pid_start_time
    started = executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30).process
    # Running as far as the start goes, even though `exit 3` may be over already.
    assert (started.status, started.pid, started.pid_start_time) == (pb.PROCESS_STATUS_RUNNING, created.pid, created.pid_start_time)
    final = executor.WaitContainer(pb.WaitContainerRequest(id=created.id), timeout=30).process
    assert final.status == pb.PROCESS_STATUS_EXITED
    assert (final.exit_code, final.oom_killed, final.pid) == (3, False, 0)
    assert final.exited_at.seconds > 0
    assert executor.GetContainer(pb.GetContainerRequest(id=created.id), timeout=5).process.exit_code == 3
    expect(CODE.FAILED_PRECONDITION, executor.StartContainer, pb.StartContainerRequest(id=created.id))
    expect(CODE.FAILED_PRECONDITION, executor.KillContainer, pb.KillContainerRequest(id=created.id, signal=9))


def test_command_is_pid_1_with_hostname_proc_dev_and_readonly_sys(executor, rootfs):
    script = (
        "echo pid=$$; hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
        "echo data > /dev/null && echo devnull-ok; head -c 4 /dev/zero | wc -c; "
        "ls /dev; touch /sys/x 2>/dev/null || echo sys-readonly; "
        "cat /sys/class/net/lo/flags; ls /sys/class/net; "
        # The mount point field exactly: /proc/sys, read-only now, also has " /sys " as its root field.
        "awk '$5 == \"/proc\"' /proc/self/mountinfo | wc -l; awk '$5 == \"/sys\" && $6 ~ /^ro/' /proc/self/mountinfo | wc -l"
    )
    final, output = run(executor, rootfs, ["sh", "-c", script], hostname="web-1")
    assert final.exit_code == 0, output
    lines = output.decode().splitlines()
    assert lines[0] == "pid=1"
    assert lines[1] == "web-1"
    assert lines[2].startswith("sh -c echo pid=$$")
    assert "devnull-ok" in lines and "4" in lines
    for device in ("null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin", "stdout", "stderr"):
        assert device in lines, device
    assert "sys-readonly" in lines
    # IFF_UP | IFF_LOOPBACK, and loopback is the only interface of the new network namespace.
    assert int(lines[lines.index("sys-readonly") + 1], 16) & 0x1
    assert lines[lines.index("sys-readonly") + 2] == "lo"
    assert lines[-2:] == ["1", "1"]


def test_environment_is_exactly_path_hostname_home_and_given(executor, rootfs, monkeypatch):
    monkeypatch.setenv("MDK_HOST_SECRET", "leak")
    final, output = run(executor, rootfs, ["env"], hostname="envbox", env=["FOO=bar", "EMPTY="])
    assert final.exit_code == 0
    # HOME comes from the user's passwd entry, as Docker sets it.
    assert sorted(output.decode().splitlines()) == sorted(
        [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=envbox",
            "HOME=/root",
            "FOO=bar",
            "EMPTY=",
        ]
    )


def test_argv_is_a_list_so_quoted_spaces_survive(executor, rootfs):
    final, output = run(executor, rootfs, ["sh", "-c", 'printf "[%s]\\n" "$@"', "sh", "a  b", "c"])
    assert final.exit_code == 0
    assert output == b"[a  b]\n[c]\n"


def test_working_directory(executor, rootfs):
    final, output = run(executor, rootfs, ["pwd"], cwd="/tmp")
    assert (final.exit_code, output) == (0, b"/tmp\n")


def test_mounts_stay_inside_the_container(executor, rootfs):
    before = Path("/proc/self/mountinfo").read_text().count(rootfs)
    # Mounting needs CAP_SYS_ADMIN, which a default container does not have.
    final, _ = run(
        executor, rootfs, ["sh", "-c", "mount -t tmpfs none /tmp && echo ok"],
        security=types_pb2.SecurityOptions(cap_add=["SYS_ADMIN"]),
    )
    assert final.exit_code == 0
    assert Path("/proc/self/mountinfo").read_text().count(rootfs) == before


def test_unknown_command_fails_at_create_and_leaves_nothing(executor, rootfs, temp_config):
    container_id = new_id()
    details = expect(
        CODE.INVALID_ARGUMENT,
        executor.CreateContainer,
        pb.CreateContainerRequest(id=container_id, hostname="box", rootfs_path=rootfs, process=pb.ProcessSpec(args=["nosuchcmd"])),
    )
    assert details == 'exec: "nosuchcmd": executable file not found in $PATH'
    assert not (temp_config.run / container_id).exists()
    layout = CgroupLayout.from_host(parent=os.environ["MYDOCKER_CGROUP_PARENT"])
    assert not any(d.exists() for d in layout.container(container_id).dirs())
    expect(CODE.NOT_FOUND, executor.GetContainer, pb.GetContainerRequest(id=container_id))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"process": pb.ProcessSpec(args=[])}, "command is empty"),
        ({"id": "../etc"}, "invalid container id"),
        ({"hostname": ""}, "hostname"),
        ({"rootfs_path": "/nonexistent/mdk"}, "not a directory"),
        ({"rootfs_path": "relative"}, "absolute"),
        ({"rootfs_path": "/"}, "absolute, normalised path other than /"),
        ({"rootfs_path": "/tmp"}, "is not below"),
        ({"process": pb.ProcessSpec(args=["true"], env=["NOEQUALS"])}, "KEY=VALUE"),
        ({"resources": types_pb2.Resources(memory_bytes=1024)}, "too small"),
        ({"resources": types_pb2.Resources(nano_cpus=1000)}, "too small"),
        ({"resources": types_pb2.Resources(cpuset_cpus="0-a")}, "cpuset"),
        ({"resources": types_pb2.Resources(cpuset_cpus="99")}, "CPU 99"),
    ],
)
def test_bad_create_requests_are_invalid_argument(executor, rootfs, fields, fragment):
    request = {"id": new_id(), "hostname": "box", "rootfs_path": rootfs, "process": pb.ProcessSpec(args=["true"])}
    request.update(fields)
    expect(CODE.INVALID_ARGUMENT, executor.CreateContainer, pb.CreateContainerRequest(**request), fragment)


def test_unknown_container_is_not_found(executor):
    for call, request in [
        (executor.GetContainer, pb.GetContainerRequest(id="1111111111")),
        (executor.StartContainer, pb.StartContainerRequest(id="1111111111")),
        (executor.KillContainer, pb.KillContainerRequest(id="1111111111")),
        (executor.WaitContainer, pb.WaitContainerRequest(id="1111111111")),
        (executor.Logs, pb.LogsRequest(id="1111111111")),
    ]:
        expect(CODE.NOT_FOUND, call, request)
    assert executor.DeleteContainer(pb.DeleteContainerRequest(id="1111111111"), timeout=5).HasField("process") is False


def test_same_id_twice_is_already_exists(executor, rootfs):
    created = create(executor, rootfs, ["sleep", "100"])
    expect(
        CODE.ALREADY_EXISTS,
        executor.CreateContainer,
        pb.CreateContainerRequest(id=created.id, hostname="box", rootfs_path=rootfs, process=pb.ProcessSpec(args=["true"])),
    )


# -- logs -------------------------------------------------------------------------------------


def test_detached_logs_keep_streams_and_times_and_follow_ends_at_exit(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sh", "-c", "echo hi; echo oops >&2; sleep 0.5; printf 'no newline'"])
    follower = executor.Logs(pb.LogsRequest(id=created.id, follow=True), timeout=30)
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    lines = list(follower)  # ends by itself once the container exited
    assert [(line.stream, line.data) for line in lines] == [
        (pb.LOG_STREAM_STDOUT, b"hi\n"),
        (pb.LOG_STREAM_STDERR, b"oops\n"),
        (pb.LOG_STREAM_STDOUT, b"no newline"),
    ] or sorted(line.data for line in lines) == [b"hi\n", b"no newline", b"oops\n"]
    assert all(line.time.seconds > 0 for line in lines)
    assert [line.data for line in logs(executor, created.id, tail=1)] == [b"no newline"]
    late = lines[-1].time
    assert [line.data for line in logs(executor, created.id, since=late)] == [b"no newline"]
    # The file is docker's json-file format.
    raw = (temp_config.root / "containers" / created.id / f"{created.id}-json.log").read_text().splitlines()
    assert {"log", "stream", "time"} <= set(json.loads(raw[0]))
    assert json.loads(raw[0])["log"] == "hi\n" and json.loads(raw[0])["time"].endswith("Z")


def test_logs_keep_bytes_that_are_not_utf8(executor, rootfs):
    final, output = run(executor, rootfs, ["printf", "\\377\\000\"\\\\\\n"])
    assert final.exit_code == 0
    assert output == b'\xff\x00"\\\n'


# -- signals and stop ---------------------------------------------------------------------


def test_stop_falls_back_to_sigkill_for_a_pid_1_ignoring_term(executor, rootfs):
    created = create(executor, rootfs, ["sh", "-c", "trap '' TERM; sleep 1000 & wait"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    executor.KillContainer(pb.KillContainerRequest(id=created.id, signal=signal.SIGTERM), timeout=5)
    expect(CODE.DEADLINE_EXCEEDED, executor.WaitContainer, pb.WaitContainerRequest(id=created.id), timeout=1.0)
    executor.KillContainer(pb.KillContainerRequest(id=created.id, signal=signal.SIGKILL), timeout=5)
    final = executor.WaitContainer(pb.WaitContainerRequest(id=created.id), timeout=10).process
    assert final.exit_code == 128 + signal.SIGKILL


def test_kill_all_signals_every_process_of_the_cgroup(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    cgroup = container_cgroup(temp_config, created.id)
    deadline = time.monotonic() + 5
    while len(cgroup.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(cgroup.pids()) == 3
    executor.KillContainer(pb.KillContainerRequest(id=created.id, signal=signal.SIGKILL, all=True), timeout=5)
    final = executor.WaitContainer(pb.WaitContainerRequest(id=created.id), timeout=10).process
    assert final.exit_code == 137


def test_a_recycled_pid_is_never_signalled(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sleep", "1000"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    # Pretend the recorded start time belongs to another process: the kill must refuse.
    pid_file = temp_config.run / created.id / statefiles.PID
    pid, start = statefiles.parse_pid(pid_file.read_text())
    pid_file.write_text(statefiles.format_pid(pid, start + 1))
    expect(CODE.FAILED_PRECONDITION, executor.KillContainer, pb.KillContainerRequest(id=created.id, signal=9))
    assert statefiles.is_alive(pid, start)
    pid_file.write_text(statefiles.format_pid(pid, start))


# -- cgroups ------------------------------------------------------------------------------


def test_memory_hog_is_oom_killed(executor, rootfs):
    final, _ = run(
        executor,
        rootfs,
        ["sh", "-c", 'x=$(head -c 200m /dev/zero | tr "\\0" a); echo survived'],
        resources=types_pb2.Resources(memory_bytes=32 << 20),
    )
    assert final.oom_killed
    assert final.exit_code == 137


def test_cpu_quota_holds_a_busy_loop_to_its_share(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sh", "-c", "while :; do :; done"], resources=types_pb2.Resources(nano_cpus=500_000_000))
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    cgroup = container_cgroup(temp_config, created.id)
    if cgroup.version == "v1":
        cpu_dir = cgroup.dir("cpu")
        assert (cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"
    # Measured from when the loop is seen burning CPU, not from an assumed start-up time.
    first = cgroup.cpu_usage_ns()
    wait_until(lambda: cgroup.cpu_usage_ns() > first + 10_000_000, what="the busy loop to use 10 ms of CPU")
    used_before, wall_before = cgroup.cpu_usage_ns(), time.monotonic()
    time.sleep(2.0)
    used = (cgroup.cpu_usage_ns() - used_before) / 1e9
    wall = time.monotonic() - wall_before
    assert used / wall <= 0.5 * 1.25, f"{used:.2f}s of CPU in {wall:.2f}s"
    assert used / wall >= 0.05, f"the busy loop barely ran: {used:.2f}s in {wall:.2f}s"
    executor.KillContainer(pb.KillContainerRequest(id=created.id, signal=9), timeout=5)


def test_cpuset_and_pids_limit(executor, rootfs, temp_config):
    final, output = run(
        executor,
        rootfs,
        ["sh", "-c", "grep Cpus_allowed_list /proc/self/status; for i in 1 2 3 4 5 6; do sleep 2 & done; wait"],
        resources=types_pb2.Resources(cpuset_cpus="0", pids_limit=4),
    )
    text = output.decode()
    assert "Cpus_allowed_list:\t0\n" in text
    assert "can't fork" in text or "Resource temporarily unavailable" in text, text


def test_cgroup_files_hold_the_limits(executor, rootfs, temp_config):
    created = create(
        executor,
        rootfs,
        ["sleep", "100"],
        resources=types_pb2.Resources(memory_bytes=64 << 20, nano_cpus=1_500_000_000, cpuset_cpus="0-1", pids_limit=64),
    )
    cgroup = container_cgroup(temp_config, created.id)
    if cgroup.version == "v1":
        assert (cgroup.dir("memory") / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        memsw = cgroup.dir("memory") / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            assert memsw.read_text().strip() == str(64 << 20)
        assert (cgroup.dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "150000"
        assert (cgroup.dir("cpuset") / "cpuset.cpus").read_text().strip() == "0-1"
        assert (cgroup.dir("cpuset") / "cpuset.mems").read_text().strip() != ""
        assert (cgroup.dir("pids") / "pids.max").read_text().strip() == "64"
    else:
        assert (cgroup.path() / "cpu.max").read_text().strip() == "150000 100000"
    # One cgroup per container, never shared, holding the container's process.
    assert created.pid in cgroup.pids()
    other = create(executor, rootfs, ["sleep", "100"])
    assert container_cgroup(temp_config, other.id).path() != cgroup.path()


# -- delete -------------------------------------------------------------------------------


def test_delete_removes_cgroups_state_and_logs_and_is_idempotent(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sleep", "1000"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    cgroup = container_cgroup(temp_config, created.id)
    expect(CODE.FAILED_PRECONDITION, executor.DeleteContainer, pb.DeleteContainerRequest(id=created.id), "force")
    final = executor.DeleteContainer(pb.DeleteContainerRequest(id=created.id, force=True), timeout=30).process
    assert final.status == pb.PROCESS_STATUS_EXITED and final.exit_code == 137
    assert not any(directory.exists() for directory in cgroup.dirs())
    assert not (temp_config.run / created.id).exists()
    assert not (temp_config.root / "containers" / created.id).exists()
    assert not statefiles.is_alive(created.shim_pid, statefiles.proc_start_time(created.shim_pid) or 0)
    again = executor.DeleteContainer(pb.DeleteContainerRequest(id=created.id, force=True), timeout=30)
    assert not again.HasField("process")


def test_delete_of_a_created_container_kills_its_parked_init(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sleep", "1000"])
    executor.DeleteContainer(pb.DeleteContainerRequest(id=created.id, force=True), timeout=30)
    assert not statefiles.is_alive(created.pid, created.pid_start_time)
    assert not (temp_config.run / created.id).exists()


# -- exec ---------------------------------------------------------------------------------


def exec_call(stub, container_id: str, args, env=(), terminal=False, stdin: list[bytes] | None = None, close=True):
    """Run an Exec stream; returns (pid, stdout, stderr, exit code)."""
    requests: queue.Queue = queue.Queue()
    process = pb.ProcessSpec(args=list(args), env=list(env), terminal=terminal, stdin=stdin is not None)
    start = pb.ExecStart(container_id=container_id, process=process)
    requests.put(pb.ExecRequest(start=start))
    for data in stdin or []:
        requests.put(pb.ExecRequest(stdin=data))
    if stdin is not None and close:
        requests.put(pb.ExecRequest(close_stdin=True))

    pid, out, err, code = 0, b"", b"", None
    responses = stub.Exec(until_none(requests), timeout=30)
    try:
        for response in responses:
            kind = response.WhichOneof("event")
            if kind == "pid":
                pid = response.pid
            elif kind == "stdout":
                out += response.stdout
            elif kind == "stderr":
                err += response.stderr
            elif kind == "exit_code":
                code = response.exit_code
                break
    finally:
        requests.put(None)
        responses.cancel()
    return pid, out, err, code


def test_exec_runs_inside_and_returns_the_real_exit_code(executor, rootfs):
    created = create(executor, rootfs, ["sleep", "1000"], hostname="inside", env=["CONTAINER_VAR=1"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    pid, out, err, code = exec_call(
        executor,
        created.id,
        ["sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $CONTAINER_VAR $EXTRA; echo to-err >&2; exit 5"],
        env=["EXTRA=2"],
    )
    assert code == 5
    assert pid > 0 and pid != created.pid
    assert out.decode().splitlines() == ["inside", "sleep 1000 ", "1 2"]
    assert err == b"to-err\n"


def test_exec_joins_the_container_cgroup_and_gets_stdin(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sleep", "1000"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    _, out, _, code = exec_call(executor, created.id, ["sh", "-c", "cat; cat /proc/self/cgroup"], stdin=[b"line one\n", b"two\n"])
    assert code == 0
    text = out.decode()
    assert text.startswith("line one\ntwo\n")
    # In its own cgroup namespace the container's cgroup is the root (v1's memory line, v2's "0::" line).
    assert any(line.endswith(":/") for line in text.splitlines() if "memory" in line or line.startswith("0::"))


def test_exec_with_a_terminal(executor, rootfs):
    created = create(executor, rootfs, ["sleep", "1000"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    _, out, _, code = exec_call(
        executor, created.id, ["sh", "-c", "tty; [ -t 0 ] && echo is-a-tty; echo $TERM; exit 4"], terminal=True
    )
    assert code == 4
    # The pty comes from the container's own devpts, so ttyname() works inside.
    assert out.decode().splitlines() == ["/dev/pts/0", "is-a-tty", "xterm"]


def test_exec_never_runs_on_the_host(executor, rootfs):
    marker = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp")) / "ran-on-host"
    try:
        created = create(executor, rootfs, ["sleep", "1000"])
        executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
        # Inside, the host's temp dir does not exist: the command fails there and the host stays untouched.
        _, _, _, code = exec_call(executor, created.id, ["touch", str(marker)])
        assert code != 0 and not marker.exists()
        executor.KillContainer(pb.KillContainerRequest(id=created.id, signal=9), timeout=5)
        executor.WaitContainer(pb.WaitContainerRequest(id=created.id), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            exec_call(executor, created.id, ["touch", str(marker)])
        assert caught.value.code() == CODE.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as caught:
            exec_call(executor, "2222222222", ["touch", str(marker)])
        assert caught.value.code() == CODE.NOT_FOUND
        assert not marker.exists()
    finally:
        shutil.rmtree(marker.parent)


def test_exec_of_a_missing_command_is_a_clear_error(executor, rootfs):
    created = create(executor, rootfs, ["sleep", "1000"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    with pytest.raises(grpc.RpcError) as caught:
        exec_call(executor, created.id, ["nosuchcmd"])
    assert caught.value.code() == CODE.INVALID_ARGUMENT
    assert caught.value.details() == 'exec: "nosuchcmd": executable file not found in $PATH'


# -- attach -------------------------------------------------------------------------------


def attach_call(stub, container_id: str, inputs: list, start: bool = True, after: bytes = b""):
    """Open Attach, start the container, feed `inputs` (once `after` was output); returns (output, exit code)."""
    requests: queue.Queue = queue.Queue()
    requests.put(pb.AttachRequest(container_id=container_id))

    responses = stub.Attach(until_none(requests), timeout=30)
    if start:
        stub.StartContainer(pb.StartContainerRequest(id=container_id), timeout=30)
    pending = list(inputs)

    def send_when_ready():
        if after in output:
            for item in pending:
                requests.put(item)
            pending.clear()

    output, code = b"", None
    send_when_ready()
    try:
        for response in responses:
            kind = response.WhichOneof("event")
            if kind == "exit_code":
                code = response.exit_code
                break
            output += response.stdout + response.stderr
            send_when_ready()
    finally:
        requests.put(None)
        responses.cancel()
    return output, code


def test_attach_with_a_tty_echoes_input_and_ends_with_the_exit_code(executor, rootfs):
    created = create(executor, rootfs, ["sh"], terminal=True, stdin=True, stdio_mode=pb.STDIO_MODE_ATTACH)
    output, code = attach_call(
        executor,
        created.id,
        [
            pb.AttachRequest(resize=pb.WindowSize(rows=40, cols=100)),
            pb.AttachRequest(stdin=b"stty size; echo $TERM; tty\n"),
            pb.AttachRequest(stdin=b"echo hi\n"),
            pb.AttachRequest(stdin=b"exit 7\n"),
        ],
    )
    assert code == 7
    text = output.decode(errors="replace")
    assert "echo hi" in text  # the terminal echoes what was typed
    assert "\nhi\r\n" in text or "hi\r\n" in text
    assert "40 100" in text and "xterm" in text and "/dev/console" in text
    # Attached output goes to the log as well.
    assert b"hi" in b"".join(line.data for line in logs(executor, created.id))


def test_attach_without_tty_pipes_stdin_until_closed(executor, rootfs):
    created = create(executor, rootfs, ["sh", "-c", "cat; echo done >&2; exit 2"], stdin=True, stdio_mode=pb.STDIO_MODE_ATTACH)
    output, code = attach_call(
        executor, created.id, [pb.AttachRequest(stdin=b"hello\n"), pb.AttachRequest(close_stdin=True)]
    )
    assert code == 2
    assert output == b"hello\ndone\n"


def test_attach_signal_reaches_pid_1(executor, rootfs):
    # PID 1 of a pid namespace drops signals it has no handler for: send only once the trap is set.
    script = "trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.1; done"
    created = create(executor, rootfs, ["sh", "-c", script], stdio_mode=pb.STDIO_MODE_ATTACH)
    output, code = attach_call(executor, created.id, [pb.AttachRequest(signal=signal.SIGINT)], after=b"ready\n")
    assert code == 9 and b"got-int" in output


def attached_exit(stub, container_id: str) -> pb.AttachResponse:
    """Attach, start, and return the stream's last message: the exit."""
    requests: queue.Queue = queue.Queue()
    requests.put(pb.AttachRequest(container_id=container_id))
    responses = stub.Attach(until_none(requests), timeout=60)
    try:
        stub.StartContainer(pb.StartContainerRequest(id=container_id), timeout=30)
        return next(response for response in responses if response.WhichOneof("event") == "exit_code")
    finally:
        requests.put(None)
        responses.cancel()


def test_the_attached_exit_carries_the_oom_verdict_wait_would_give(executor, rootfs):
    hog = create(
        executor, rootfs, ["sh", "-c", 'x=$(head -c 200m /dev/zero | tr "\\0" a); echo survived'],
        stdio_mode=pb.STDIO_MODE_ATTACH, resources=types_pb2.Resources(memory_bytes=32 << 20),
    )
    calm = create(executor, rootfs, ["sh", "-c", "exit 3"], stdio_mode=pb.STDIO_MODE_ATTACH)
    for created, code, oom in ((hog, 137, True), (calm, 3, False)):
        last = attached_exit(executor, created.id)
        waited = executor.WaitContainer(pb.WaitContainerRequest(id=created.id), timeout=30).process
        assert (last.exit_code, last.oom_killed) == (waited.exit_code, waited.oom_killed) == (code, oom)


def test_attach_to_a_detached_container_is_refused(executor, rootfs):
    created = create(executor, rootfs, ["sleep", "100"])

    def one():
        yield pb.AttachRequest(container_id=created.id)

    with pytest.raises(grpc.RpcError) as caught:
        list(executor.Attach(one(), timeout=10))
    assert caught.value.code() == CODE.FAILED_PRECONDITION


# -- restarts -----------------------------------------------------------------------------


def test_a_restarted_executor_finds_its_running_containers(cgroup_parent, start_server, temp_config, rootfs):
    running, channel = start_server(build(temp_config))
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    try:
        created = create(stub, rootfs, ["sh", "-c", "echo before; sleep 1000"])
        stub.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
        running.stop(grace=1)
        _, channel = start_server(build(temp_config))
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        listed = stub.ListContainers(pb.ListContainersRequest(), timeout=5).processes
        assert [(p.id, p.status, p.pid) for p in listed] == [(created.id, pb.PROCESS_STATUS_RUNNING, created.pid)]
        assert stub.GetInfo(pb.GetInfoRequest(), timeout=5).containers_running == 1
        deadline = time.monotonic() + 5
        while not logs(stub, created.id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [line.data for line in logs(stub, created.id)] == [b"before\n"]
        stub.KillContainer(pb.KillContainerRequest(id=created.id, signal=signal.SIGKILL), timeout=5)
        assert stub.WaitContainer(pb.WaitContainerRequest(id=created.id), timeout=10).process.exit_code == 137
    finally:
        cleanup(temp_config)


@pytest.fixture
def executor_process(cgroup_parent, temp_config) -> Iterator[subprocess.Popen]:
    """`python -m services.executor` on the test's roots, once its socket is there; killed and cleaned up after."""
    socket = temp_config.socket_path("executor")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "services.executor", "--root", str(temp_config.root), "--run", str(temp_config.run)],
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield server
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        cleanup(temp_config)


def _start_sleeper(config: Config, server: subprocess.Popen, rootfs: str) -> tuple[pb.ContainerProcess, int]:
    """A running `sleep 1000` through the executor process `server`, and that executor's shim launcher pid."""
    with grpc.insecure_channel(unix_target(config.socket_path("executor"))) as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=20)
        created = create(stub, rootfs, ["sleep", "1000"])
        stub.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    launcher = launcher_of(config, server.pid)
    assert launcher
    return created, launcher


def _kill_through_a_new_executor(start_server, config: Config, container_id: str) -> None:
    """A fresh executor finds the container running, kills it and reports SIGKILL's exit code."""
    _, channel = start_server(build(config))
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    assert stub.GetContainer(pb.GetContainerRequest(id=container_id), timeout=5).process.status == pb.PROCESS_STATUS_RUNNING
    stub.KillContainer(pb.KillContainerRequest(id=container_id, signal=signal.SIGKILL), timeout=5)
    assert stub.WaitContainer(pb.WaitContainerRequest(id=container_id), timeout=10).process.exit_code == 137


def test_the_shim_survives_the_executor_being_killed(cgroup_parent, executor_process, start_server, temp_config, rootfs):
    server = executor_process
    created, launcher = _start_sleeper(temp_config, server, rootfs)
    server.kill()
    server.wait()
    # The launcher sees end of file on its control socket and exits; it never stops a shim.
    assert gone(launcher)
    # Not a wait for a state: the shim must stay alive, and a shim that dies with its launcher takes a moment.
    time.sleep(0.2)
    shim_start = int(statefiles.parse_pid((temp_config.run / created.id / statefiles.SHIM_PID).read_text())[1])
    assert statefiles.is_alive(created.shim_pid, shim_start)
    assert statefiles.is_alive(created.pid, created.pid_start_time)
    # The shim left the executor's session, process group and cgroups.
    assert os.getsid(created.shim_pid) != os.getsid(0)
    assert os.getpgid(created.shim_pid) != os.getpgid(0)
    shim_cgroups = Path(f"/proc/{created.shim_pid}/cgroup").read_text()
    assert f"/{cgroup_parent}/shims" in shim_cgroups
    _kill_through_a_new_executor(start_server, temp_config, created.id)


def test_sigterm_stops_the_executor_and_its_launcher_and_leaves_the_shims(cgroup_parent, executor_process, start_server, temp_config, rootfs):
    server = executor_process
    created, launcher = _start_sleeper(temp_config, server, rootfs)
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    # Stopped and reaped by the executor itself before it exited: no orphan, no zombie.
    assert not os.path.exists(f"/proc/{launcher}")
    assert statefiles.is_alive(created.pid, created.pid_start_time)
    _kill_through_a_new_executor(start_server, temp_config, created.id)


def test_a_killed_launcher_is_reaped_and_replaced_and_its_shims_live_on(executor, rootfs, temp_config):
    before = create(executor, rootfs, ["sleep", "1000"])
    executor.StartContainer(pb.StartContainerRequest(id=before.id), timeout=30)
    launcher = launcher_of(temp_config)
    assert launcher
    os.kill(launcher, signal.SIGKILL)
    assert gone(launcher), "the killed launcher was left a zombie"
    shim_start = statefiles.parse_pid((temp_config.run / before.id / statefiles.SHIM_PID).read_text())[1]
    assert statefiles.is_alive(before.shim_pid, shim_start)
    final, output = run(executor, rootfs, ["echo", "again"])
    assert (final.exit_code, output) == (0, b"again\n")
    assert launcher_of(temp_config) not in (0, launcher)
    executor.KillContainer(pb.KillContainerRequest(id=before.id, signal=signal.SIGKILL), timeout=5)
    assert executor.WaitContainer(pb.WaitContainerRequest(id=before.id), timeout=10).process.exit_code == 137


def test_a_shim_is_nobodys_child_and_keeps_no_fd_or_signal_of_the_launcher(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sleep", "1000"])
    launcher = launcher_of(temp_config)
    shim = proc_status(created.shim_pid)
    assert int(shim["PPid"]) not in (os.getpid(), launcher)
    assert shim["Name"] == f"shim {created.id}"[:15]
    fds = {int(fd): os.readlink(f"/proc/{created.shim_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{created.shim_pid}/fd")}
    assert fds[0] == fds[1] == "/dev/null"
    assert fds[2] == str(temp_config.run / created.id / statefiles.SHIM_LOG)
    # A detached container's shim has no socket at all: the launcher's control socket stayed behind.
    assert not [target for target in fds.values() if target.startswith("socket:")], fds
    # A fresh interpreter's dispositions (SIGPIPE, SIGXFSZ ignored) plus the shim's own SIGHUP; nothing blocked.
    ignored = {signum for signum in range(1, 65) if int(shim["SigIgn"], 16) >> (signum - 1) & 1}
    assert ignored == {signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ}
    assert int(shim["SigBlk"], 16) == 0
    # The parked init carries its own name until the exec.
    assert proc_status(created.pid)["Name"] == f"init {created.id}"[:15]


def test_info_counts_live_shims(executor, rootfs):
    assert executor.GetInfo(pb.GetInfoRequest(), timeout=5).containers_running == 0
    create(executor, rootfs, ["sleep", "100"])
    assert executor.GetInfo(pb.GetInfoRequest(), timeout=5).containers_running == 1


def test_the_exec_helper_refuses_a_gone_or_recycled_process(tmp_path):
    """The helper itself: with no live target it reports why and runs nothing, not even on the host."""
    from services.executor import nsexec

    marker = tmp_path / "ran-on-host"
    sleeper = subprocess.Popen(["sleep", "100"])
    try:
        start = statefiles.proc_start_time(sleeper.pid)
        for pid, start_time in [(sleeper.pid, start + 1), (2**22 + 1, 1)]:
            spec = {"pid": pid, "start_time": start_time, "cgroup_procs": [], "args": ["touch", str(marker)],
                    "env": ["PATH=/usr/bin:/bin"], "cwd": "/", "terminal": False, "security": None}
            status_r, status_w = os.pipe()
            helper = subprocess.Popen(
                [sys.executable, "-S", "-c", nsexec.BOOTSTRAP, json.dumps(spec), str(status_w), "-1"],
                pass_fds=(status_w,), env={"PYTHONPATH": str(REPO), "PATH": os.defpath},
            )
            os.close(status_w)
            assert helper.wait(timeout=30) != 0
            with os.fdopen(status_r, "rb") as status:
                report = status.read().decode()
            assert report.startswith("E failed container is not running"), report
            assert not marker.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_parallel_creates_each_get_their_own_working_cgroup(executor, rootfs):
    """Concurrent first creates race to make the parent cpuset; none may end up with empty cpus (ENOSPC)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(code: int) -> int:
        final, _ = run(executor, rootfs, ["sh", "-c", f"exit {code}"])
        return final.exit_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, range(6))) == list(range(6))


# -- cgroups without state, reconcile on start, reboots, calls cut short ----------------------


def layout_of(cgroup_parent: str) -> CgroupLayout:
    return CgroupLayout.from_host(parent=cgroup_parent)


def kill_recorded(pid: int, start_time: int) -> None:
    """SIGKILL the very process recorded (a shim or an init we made) and wait until it is gone."""
    pidfd = os.pidfd_open(pid)
    try:
        assert statefiles.is_alive(pid, start_time), f"process {pid} is not the recorded one"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    deadline = time.monotonic() + 10
    while statefiles.is_alive(pid, start_time) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not statefiles.is_alive(pid, start_time)


def shim_of(config: Config, container_id: str) -> tuple[int, int]:
    return statefiles.parse_pid((config.run / container_id / statefiles.SHIM_PID).read_text())


def restarted(start_server, config: Config):
    """A new executor on the same roots (its reconcile runs before it serves), as a stub."""
    _, channel = start_server(build(config))
    return executor_pb2_grpc.ExecutorServiceStub(channel)


def status_of(stub, container_id: str) -> tuple[int, int]:
    process = stub.GetContainer(pb.GetContainerRequest(id=container_id), timeout=5).process
    return process.status, process.exit_code


def age(cgroup, seconds: float) -> None:
    """Make a cgroup look `seconds` old: the reconcile leaves younger orphans to a create that may be in flight."""
    for directory in cgroup.dirs():
        if directory.exists():
            then = time.time() - seconds
            os.utime(directory, (then, then))


def test_list_cgroups_names_every_container_cgroup_and_delete_removes_an_orphan(executor, rootfs, temp_config, cgroup_parent):
    created = create(executor, rootfs, ["sleep", "1000"])
    orphan_id = new_id()
    orphan = layout_of(cgroup_parent).container(orphan_id)
    orphan.create()
    listed = executor.ListCgroups(pb.ListCgroupsRequest(), timeout=5)
    assert list(listed.container_ids) == sorted([created.id, orphan_id])
    assert cgroup_parent in listed.parent
    # No state, no processes: the orphan goes, and a second delete finds nothing to do.
    assert not executor.DeleteContainer(pb.DeleteContainerRequest(id=orphan_id), timeout=30).HasField("process")
    assert not orphan.exists()
    executor.DeleteContainer(pb.DeleteContainerRequest(id=orphan_id), timeout=30)
    assert list(executor.ListCgroups(pb.ListCgroupsRequest(), timeout=5).container_ids) == [created.id]
    expect(CODE.INVALID_ARGUMENT, executor.DeleteContainer, pb.DeleteContainerRequest(id="shims"), "uses that name")


def test_delete_refuses_an_orphan_cgroup_with_processes_and_kills_none(executor, temp_config, cgroup_parent):
    orphan_id = new_id()
    orphan = layout_of(cgroup_parent).container(orphan_id)
    orphan.create()
    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        for procs in orphan.procs_files():
            Path(procs).write_text(str(stranger.pid))
        details = expect(CODE.FAILED_PRECONDITION, executor.DeleteContainer, pb.DeleteContainerRequest(id=orphan_id, force=True))
        assert str(orphan.path()) in details and str(stranger.pid) in details and "not ours to kill" in details
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
    executor.DeleteContainer(pb.DeleteContainerRequest(id=orphan_id), timeout=30)
    assert not orphan.exists()


def test_reconcile_on_start_settles_what_dead_shims_and_a_dead_executor_left(cgroup_parent, start_server, temp_config, rootfs):
    running_server, channel = start_server(build(temp_config))
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    layout = layout_of(cgroup_parent)
    try:
        running = create(stub, rootfs, ["sleep", "1000"])
        stub.StartContainer(pb.StartContainerRequest(id=running.id), timeout=30)
        parked = create(stub, rootfs, ["sleep", "1000"])
        exited, _ = run(stub, rootfs, ["sh", "-c", "exit 3"])
        # A shim killed alone: its init runs on with nobody to record its exit.
        orphaned = create(stub, rootfs, ["sleep", "1000"])
        stub.StartContainer(pb.StartContainerRequest(id=orphaned.id), timeout=30)
        kill_recorded(*shim_of(temp_config, orphaned.id))
        assert statefiles.is_alive(orphaned.pid, orphaned.pid_start_time)
        # A parked container whose shim died: its command never ran.
        parked_lost = create(stub, rootfs, ["sleep", "1000"])
        kill_recorded(*shim_of(temp_config, parked_lost.id))
        running_server.stop(grace=1)

        # What an executor killed mid-create or mid-delete leaves: a dir without a shim, a dir without a plan.
        no_shim, no_plan, old_orphan, young_orphan = new_id(), new_id(), new_id(), new_id()
        (temp_config.run / no_shim).mkdir()
        (temp_config.run / no_shim / statefiles.PLAN).write_text("{}")
        layout.container(no_shim).create()
        (temp_config.run / no_plan).mkdir()
        (temp_config.run / no_plan / statefiles.SHIM_LOG).write_text("")
        for orphan_id in (old_orphan, young_orphan):
            layout.container(orphan_id).create()
        age(layout.container(old_orphan), 3600)
        age(layout.container(no_shim), 3600)

        stub = restarted(start_server, temp_config)
        assert status_of(stub, running.id) == (pb.PROCESS_STATUS_RUNNING, 0)
        assert status_of(stub, exited.id) == (pb.PROCESS_STATUS_EXITED, 3)
        # Lost exits are recorded for good, with the process left by the shim killed.
        assert not statefiles.is_alive(orphaned.pid, orphaned.pid_start_time)
        for lost in (orphaned, parked_lost):
            final = stub.WaitContainer(pb.WaitContainerRequest(id=lost.id), timeout=10).process
            assert (final.status, final.exit_code) == (pb.PROCESS_STATUS_EXITED, 255)
            assert "exit code is lost" in (temp_config.run / lost.id / statefiles.ERROR).read_text()
        assert statefiles.parse_exit((temp_config.run / orphaned.id / statefiles.EXIT).read_text())["lost"]
        expect(CODE.FAILED_PRECONDITION, stub.StartContainer, pb.StartContainerRequest(id=orphaned.id), "exited")
        expect(CODE.ALREADY_EXISTS, stub.CreateContainer, pb.CreateContainerRequest(
            id=orphaned.id, hostname="box", rootfs_path=rootfs, process=pb.ProcessSpec(args=["true"])))
        # The parked one never ran its command: its id is free for a retried create.
        assert create(stub, rootfs, ["sh", "-c", "exit 4"], container_id=parked_lost.id).status == pb.PROCESS_STATUS_CREATED
        stub.StartContainer(pb.StartContainerRequest(id=parked_lost.id), timeout=30)
        assert stub.WaitContainer(pb.WaitContainerRequest(id=parked_lost.id), timeout=10).process.exit_code == 4
        # A live parked container stays startable by the restarted executor.
        assert status_of(stub, parked.id) == (pb.PROCESS_STATUS_CREATED, 0)
        assert stub.StartContainer(pb.StartContainerRequest(id=parked.id), timeout=30).process.status == pb.PROCESS_STATUS_RUNNING
        # Debris is gone, cgroups and all; an orphan cgroup made a moment ago may be a create in flight.
        for debris in (no_shim, no_plan, old_orphan):
            assert not (temp_config.run / debris).exists()
            assert not layout.container(debris).exists()
        assert layout.container(young_orphan).exists()
        stub.DeleteContainer(pb.DeleteContainerRequest(id=young_orphan), timeout=30)
        assert not layout.container(young_orphan).exists()
        # A second reconcile has nothing left to do.
        from services.executor.servicer import build_core

        assert build_core(temp_config).reconcile() == []
        assert status_of(stub, parked.id)[0] == pb.PROCESS_STATUS_RUNNING
    finally:
        cleanup(temp_config)


def test_reboot_simulation_every_container_reads_exited_and_delete_and_run_work(cgroup_parent, start_server, temp_config, rootfs):
    first, channel = start_server(build(temp_config))
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    try:
        started = [create(stub, rootfs, ["sh", "-c", "echo up; sleep 1000"]) for _ in range(2)]
        for process in started:
            stub.StartContainer(pb.StartContainerRequest(id=process.id), timeout=30)
        parked = create(stub, rootfs, ["sleep", "1000"])
        first.stop(grace=1)
        everyone = [*started, parked]
        # A reboot: shims die with their containers, and none records an exit.
        shims = [shim_of(temp_config, p.id) for p in everyone]
        for shim in shims:
            kill_recorded(*shim)
        for process in everyone:
            kill_recorded(process.pid, process.pid_start_time)
        # /run is a tmpfs: one container's state dir is gone with it (its cgroup, here, is not).
        lost_dir = started[1]
        shutil.rmtree(temp_config.run / lost_dir.id)

        stub = restarted(start_server, temp_config)
        for process in (started[0], parked):
            final = stub.WaitContainer(pb.WaitContainerRequest(id=process.id), timeout=10).process
            assert (final.status, final.exit_code) == (pb.PROCESS_STATUS_EXITED, 255)
        assert [line.data for line in logs(stub, started[0].id)] == [b"up\n"]
        expect(CODE.NOT_FOUND, stub.GetContainer, pb.GetContainerRequest(id=lost_dir.id), "no state for it")
        expect(CODE.NOT_FOUND, stub.WaitContainer, pb.WaitContainerRequest(id=lost_dir.id), "no such container")
        for process in everyone:
            stub.DeleteContainer(pb.DeleteContainerRequest(id=process.id), timeout=30)
            stub.DeleteContainer(pb.DeleteContainerRequest(id=process.id), timeout=30)
            assert not (temp_config.run / process.id).exists()
        assert list(stub.ListCgroups(pb.ListCgroupsRequest(), timeout=5).container_ids) == []
        assert stub.ListContainers(pb.ListContainersRequest(), timeout=5).processes == []
        final, output = run(stub, rootfs, ["echo", "after"])
        assert (final.exit_code, output) == (0, b"after\n")
    finally:
        cleanup(temp_config)


def spawn_executor(config: Config) -> subprocess.Popen:
    """`python -m services.executor` on `config`, once its socket answers."""
    socket = config.socket_path("executor")
    server = subprocess.Popen(
        [sys.executable, "-m", "services.executor", "--root", str(config.root), "--run", str(config.run)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    with grpc.insecure_channel(unix_target(socket)) as channel:
        grpc.channel_ready_future(channel).result(timeout=20)
    return server


@pytest.mark.parametrize("step", ["dir", statefiles.PLAN, statefiles.SHIM_PID, statefiles.PID])
def test_a_create_cut_short_by_a_killed_executor_can_be_retried(cgroup_parent, start_server, temp_config, rootfs, step):
    import threading

    container_id = new_id()
    marker = temp_config.run / container_id if step == "dir" else temp_config.run / container_id / step
    server = spawn_executor(temp_config)
    try:
        channel = grpc.insecure_channel(unix_target(temp_config.socket_path("executor")))
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        outcome: list = []

        def call() -> None:
            try:
                outcome.append(create(stub, rootfs, ["sleep", "1000"], container_id=container_id))
            except grpc.RpcError as err:
                outcome.append(err.code())

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.0005)
        server.kill()
        server.wait()
        caller.join(timeout=30)
        channel.close()
        assert outcome, "the create call never ended"

        stub = restarted(start_server, temp_config)
        try:
            again = create(stub, rootfs, ["sleep", "1000"], container_id=container_id)
            assert again.status == pb.PROCESS_STATUS_CREATED
        except grpc.RpcError as err:
            # The first create got far enough to leave a live, parked container: it is that one.
            assert err.code() == CODE.ALREADY_EXISTS, err.details()
        started = stub.StartContainer(pb.StartContainerRequest(id=container_id), timeout=30).process
        assert started.status == pb.PROCESS_STATUS_RUNNING
        expect(CODE.FAILED_PRECONDITION, stub.StartContainer, pb.StartContainerRequest(id=container_id), "already started")
        final = stub.DeleteContainer(pb.DeleteContainerRequest(id=container_id, force=True), timeout=30).process
        assert final.exit_code == 137
        assert container_id not in stub.ListCgroups(pb.ListCgroupsRequest(), timeout=5).container_ids
        assert not (temp_config.run / container_id).exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        cleanup(temp_config)


def test_a_delete_cut_short_is_finished_by_the_next(executor, rootfs, temp_config, cgroup_parent):
    final, _ = run(executor, rootfs, ["true"])
    # Killed inside the delete's rmtree: the plan is gone, the rest of the dir and the cgroup are not.
    (temp_config.run / final.id / statefiles.PLAN).unlink()
    assert executor.ListContainers(pb.ListContainersRequest(), timeout=5).processes == []
    expect(CODE.NOT_FOUND, executor.GetContainer, pb.GetContainerRequest(id=final.id))
    assert final.id in executor.ListCgroups(pb.ListCgroupsRequest(), timeout=5).container_ids
    executor.DeleteContainer(pb.DeleteContainerRequest(id=final.id), timeout=30)
    assert not (temp_config.run / final.id).exists()
    assert not layout_of(cgroup_parent).container(final.id).exists()
    executor.DeleteContainer(pb.DeleteContainerRequest(id=final.id), timeout=30)


def test_exec_into_a_container_whose_shim_died_is_refused(executor, rootfs, temp_config):
    marker = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp")) / "ran"
    try:
        created = create(executor, rootfs, ["sleep", "1000"])
        executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
        kill_recorded(*shim_of(temp_config, created.id))
        with pytest.raises(grpc.RpcError) as caught:
            exec_call(executor, created.id, ["touch", str(marker)])
        assert caught.value.code() == CODE.FAILED_PRECONDITION
        assert "lost its shim" in caught.value.details()
        assert not marker.exists()
        # Its init is still ours to stop, by its recorded start time.
        executor.DeleteContainer(pb.DeleteContainerRequest(id=created.id, force=True), timeout=30)
        assert not statefiles.is_alive(created.pid, created.pid_start_time)
    finally:
        shutil.rmtree(marker.parent)


# -- networking (issue #5) ----------------------------------------------------------------------


def test_network_rpcs_plumb_a_container_and_leave_iptables_as_they_were(executor, rootfs, temp_config):
    import ipaddress

    from services.common.netnames import bridge_name, veth_name
    from tests.netutil import free_port, free_subnets, iptables_save

    network = f"ct{uuid.uuid4().hex[:6]}"
    bridge = bridge_name(network)
    subnet = ipaddress.IPv4Network(free_subnets(1)[0])
    gateway, address = str(subnet.network_address + 1), str(subnet.network_address + 2)
    host_port = free_port()
    before = iptables_save()
    bridge_request = pb.CreateBridgeRequest(network=network, bridge_name=bridge, subnet=str(subnet), gateway=gateway)
    remove_request = pb.RemoveBridgeRequest(network=network, bridge_name=bridge, subnet=str(subnet))
    try:
        executor.CreateBridge(bridge_request, timeout=30)
        executor.CreateBridge(bridge_request, timeout=30)  # idempotent
        (listed,) = executor.ListBridges(pb.ListBridgesRequest(), timeout=30).bridges
        assert (listed.network, listed.bridge_name, listed.subnet, listed.present) == (network, bridge, str(subnet), True)
        shell = "ip -4 addr show eth0; ip route; cat /etc/hosts /etc/hostname"
        process = create(executor, rootfs, ["sh", "-c", shell], hostname="webbox", ip_address=address)
        ports = [types_pb2.PortMapping(host_port=host_port, container_port=80, protocol=types_pb2.PROTOCOL_TCP)]
        connect = pb.ConnectContainerRequest(
            container_id=process.id, bridge_name=bridge, address=address, prefix_length=subnet.prefixlen,
            gateway=gateway, ports=ports,
        )
        reply = executor.ConnectContainer(connect, timeout=30)
        assert reply.host_interface == veth_name(process.id)
        assert Path(f"/sys/class/net/{reply.host_interface}/master").resolve().name == bridge
        expect(CODE.ALREADY_EXISTS, executor.ConnectContainer, connect)
        # Tagged with this instance (a temp root), and so is the host end of the veth.
        assert f"ctr={process.id}@{temp_config.instance} port={host_port}/tcp" in iptables_save()
        assert Path(f"/sys/class/net/{reply.host_interface}/ifalias").read_text().strip() == f"mydocker {temp_config.instance}"
        expect(CODE.FAILED_PRECONDITION, executor.RemoveBridge, remove_request, "still has containers")

        executor.StartContainer(pb.StartContainerRequest(id=process.id), timeout=30)
        executor.WaitContainer(pb.WaitContainerRequest(id=process.id), timeout=30)
        output = b"".join(line.data for line in logs(executor, process.id)).decode()
        assert f"inet {address}/{subnet.prefixlen}" in output
        assert f"default via {gateway} dev eth0" in output
        assert f"{address}\twebbox" in output and "127.0.0.1\tlocalhost" in output and "webbox\n" in output

        # The namespace went with the process; the rules stay until a disconnect, which is idempotent.
        executor.DisconnectContainer(pb.DisconnectContainerRequest(container_id=process.id), timeout=30)
        executor.DisconnectContainer(pb.DisconnectContainerRequest(container_id=process.id), timeout=30)
        assert f"ctr={process.id}" not in iptables_save()
        assert not os.path.exists(f"/sys/class/net/{reply.host_interface}")
        expect(CODE.FAILED_PRECONDITION, executor.ConnectContainer, connect, "no process")
    finally:
        executor.RemoveBridge(remove_request, timeout=30)
    executor.RemoveBridge(remove_request, timeout=30)  # idempotent
    assert not os.path.exists(f"/sys/class/net/{bridge}")
    assert executor.ListBridges(pb.ListBridgesRequest(), timeout=30).bridges == []
    assert iptables_save() == before


def test_connect_to_a_missing_bridge_is_not_found_and_bad_requests_are_invalid(executor, rootfs):
    process = create(executor, rootfs, ["true"])
    connect = pb.ConnectContainerRequest(
        container_id=process.id, bridge_name="mdb-nosuchnet", address="10.9.9.2", prefix_length=24, gateway="10.9.9.1"
    )
    expect(CODE.NOT_FOUND, executor.ConnectContainer, connect, "bridge mdb-nosuchnet does not exist")
    for field, value in (("address", "10.9.9"), ("gateway", "10.8.0.1"), ("prefix_length", 31), ("bridge_name", "x" * 16)):
        bad = pb.ConnectContainerRequest()
        bad.CopyFrom(connect)
        setattr(bad, field, value)
        expect(CODE.INVALID_ARGUMENT, executor.ConnectContainer, bad)
    expect(
        CODE.INVALID_ARGUMENT, executor.CreateBridge,
        pb.CreateBridgeRequest(network="n", bridge_name="mdb-n", subnet="10.9.9.0/24", gateway="10.1.1.1"), "outside",
    )


def test_a_shim_killed_while_the_executor_runs_is_settled_at_the_next_look(executor, rootfs, temp_config):
    created = create(executor, rootfs, ["sleep", "1000"])
    executor.StartContainer(pb.StartContainerRequest(id=created.id), timeout=30)
    kill_recorded(*shim_of(temp_config, created.id))
    # Nobody would collect its output or exit status: it is killed and its exit recorded as lost.
    (listed,) = [p for p in executor.ListContainers(pb.ListContainersRequest(), timeout=30).processes if p.id == created.id]
    assert (listed.status, listed.exit_code, listed.shim_pid) == (pb.PROCESS_STATUS_EXITED, 255, 0)
    assert gone(created.pid)
    process = executor.GetContainer(pb.GetContainerRequest(id=created.id), timeout=30).process
    assert (process.status, process.exit_code) == (pb.PROCESS_STATUS_EXITED, 255)
    executor.DeleteContainer(pb.DeleteContainerRequest(id=created.id), timeout=30)


def test_network_files_are_mounted_through_an_image_link_as_docker_does(executor, temp_config):
    # systemd images link /etc/resolv.conf into /run: the file lands at the link's target, inside the rootfs.
    try:
        with busybox_rootfs(temp_config.root, "linked") as linked:
            (linked / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
            final, output = run(
                executor, str(linked), ["sh", "-c", "cat /etc/resolv.conf /etc/hostname"], hostname="linked", ip_address="10.9.9.2"
            )
            assert final.exit_code == 0, output
            assert output.decode().endswith("linked\n")
            # The link is the image's and stays; nothing was written outside the rootfs.
            assert os.readlink(linked / "etc" / "resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"
            assert (linked / "run" / "systemd" / "resolve" / "stub-resolv.conf").exists()
    finally:
        shutil.rmtree(temp_config.root / "overlay2" / "linked")
