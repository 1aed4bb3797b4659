"""Exec helper, spawned fresh by the executor: joins a running container's cgroup and namespaces, then runs one process.

Any failure before the exec is reported and ends the helper: the command never runs on the host.
Status lines on the status fd: "P <host pid>" once forked into the container, "E <kind> <message>"
on failure, "X <exit code>" last. With a terminal, the pty comes from the container's own devpts and
its master is sent back over the console socket (SCM_RIGHTS), so ttyname() works inside, as with runc.
"""

import json
import os
import socket
import sys

from services.common import linux
from services.executor import cgroup_join, confine, statefiles
from services.executor.init import ExecError, confined_identity, exec_command, report, resolve_executable, setup_stdio

BOOTSTRAP = "import sys; from services.executor.nsexec import main; main(sys.argv[1:])"
# setns order: the mount namespace last, since joining it changes our root and /proc.
NAMESPACE_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


class NotRunning(Exception):
    """The target is gone or is not the recorded process: nothing may run."""


def open_namespaces(pid: int, start_time: int) -> list[tuple[str, int]]:
    """Open /proc/<pid>/ns/* of exactly the recorded process, checked before and after opening."""
    if not statefiles.is_alive(pid, start_time):
        raise NotRunning(f"process {pid} of the container is gone")
    opened = []
    try:
        for name in NAMESPACE_ORDER:
            path = f"/proc/{pid}/ns/{name}"
            if name == "cgroup" and not os.path.exists("/proc/self/ns/cgroup"):
                continue
            opened.append((name, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
    except OSError as err:
        for _, fd in opened:
            os.close(fd)
        raise NotRunning(f"cannot open the namespaces of process {pid}: {err.strerror}") from None
    # A recycled pid between the first check and the opens would have another start time.
    if not statefiles.is_alive(pid, start_time):
        for _, fd in opened:
            os.close(fd)
        raise NotRunning(f"process {pid} of the container is gone")
    return opened


def enter(spec: dict) -> None:
    namespaces = open_namespaces(spec["pid"], spec["start_time"])
    # The cgroup first, through the host's /sys, before our view of it changes.
    cgroup_join.join(spec["cgroup_procs"])
    for name, fd in namespaces:
        linux.setns(fd, linux.NAMESPACE_FLAGS[name])
        os.close(fd)


def open_console(console_fd: int) -> tuple[int, int, int]:
    """A pty of the container's own devpts; the master goes to the executor over the console socket."""
    master, slave = linux.open_pty("/dev/ptmx")
    with socket.socket(fileno=console_fd) as sock:
        socket.send_fds(sock, [b"m"], [master])
    os.close(master)
    return slave, slave, slave


def confine_child(security: dict | None, env, programs) -> list:
    """The container's profile (or the exec's variant of it) on this process; returns the env with HOME."""
    if security is None:
        # A container created before profiles existed runs unconfined; its execs do too.
        return list(env)
    who, env = confined_identity(security, env)
    # The helper inherited the executor's low OOM score and its limits: the container's apply instead.
    confine.set_oom_score_adj(security["oom_score_adj"])
    confine.set_rlimits(security["rlimits"])
    confine.drop_privileges(security, who, programs)
    return env


def run_child(spec: dict, status_fd: int, console_fd: int, programs) -> None:
    """In the forked child, inside every namespace: never returns."""
    # Open until the exec, to report a failure before it, and closed by it: the command must not
    # inherit them (a background process holding the status pipe kept `exec` waiting for its end).
    for fd in (status_fd, console_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)
    try:
        try:
            os.chdir(spec["cwd"] or "/")
        except OSError as err:
            raise ExecError(f'cannot use working directory "{spec["cwd"]}": {err.strerror}', exit_code=126) from None
        env = confine_child(spec["security"], spec["env"], programs)
        executable = resolve_executable(spec["args"][0], env)
        stdio = open_console(console_fd) if spec["terminal"] else (0, 1, 2)
        setup_stdio(stdio, spec["terminal"])
        exec_command(spec["args"], env, executable)
    except ExecError as err:
        report(status_fd, "E " + statefiles.format_error(err.kind, str(err)))
        os._exit(err.exit_code)
    except BaseException as err:  # noqa: BLE001 - a forked child must never return into the helper's code
        report(status_fd, "E " + statefiles.format_error(statefiles.ERROR_FAILED, f"exec: {type(err).__name__}: {err}"))
        os._exit(126)


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    status_fd = int(argv[1])
    console_fd = int(argv[2])
    try:
        # Under the executor's run dir, out of reach once we join the container's mount namespace.
        programs = confine.read_programs((spec["security"] or {}).get("seccomp_file", ""))
        enter(spec)
        # setns(pid) applies to our children only: fork so the command is inside the pid namespace.
        pid = os.fork()
    except NotRunning as err:
        report(status_fd, "E " + statefiles.format_error(statefiles.ERROR_FAILED, f"container is not running: {err}"))
        sys.exit(1)
    except OSError as err:
        report(status_fd, "E " + statefiles.format_error(statefiles.ERROR_FAILED, f"cannot enter the container: {err}"))
        sys.exit(1)
    if pid == 0:
        run_child(spec, status_fd, console_fd, programs)
    if console_fd >= 0:
        os.close(console_fd)
    report(status_fd, f"P {pid}\n")
    _, status = os.waitpid(pid, 0)
    exit_code, _ = statefiles.exit_code_of(status)
    report(status_fd, f"X {exit_code}\n")
