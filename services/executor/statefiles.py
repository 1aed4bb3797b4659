"""Files of a container's state dir MYDOCKER_RUN/<id>/ and /proc/<pid>/stat; light enough for the shim launcher."""

import posix

# The shim and the CLI share these: which process a pid is, by its start time.
from services.common.procinfo import is_alive, parse_stat, proc_start_time  # noqa: F401

PLAN = "plan.json"
CGROUP = "cgroup.json"
SHIM_PID = "shim.pid"
PID = "pid"
STATUS = "status"
EXIT = "exit"
ERROR = "error"
START_FIFO = "start"
# Poked by the shim after every status change, so a waiting executor wakes at once instead of polling.
NOTIFY_FIFO = "notify"
ATTACH_SOCKET = "attach.sock"
SHIM_LOG = "shim.log"
# Written before a container is plugged into a network, removed once it is unplugged: whoever
# deletes the state dir knows there is a veth and rules to remove first.
NETWORK = "network.json"
# The CreateContainer request as given (window size cleared), the caller's record inside: what
# `system check --rebuild-state` rebuilds a lost state record from. Never read by the executor itself.
REQUEST = "request.pb"

# Status file values; no file yet means creating, or created once the pid file exists (older shims wrote "created").
CREATING = "creating"
RUNNING = "running"
EXITED = "exited"

# Kinds of pre-exec error: the request was wrong for this image, or the system failed.
ERROR_INVALID = "invalid"
ERROR_FAILED = "failed"


def write_atomic(path: str, text: str | bytes) -> None:
    """Write via a temp file and rename, so readers see the old content or the new, never half."""
    tmp = f"{path}.tmp{posix.getpid()}"
    fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC, 0o600)
    try:
        data = text.encode() if isinstance(text, str) else text
        while data:
            data = data[posix.write(fd, data):]
    finally:
        posix.close(fd)
    posix.replace(tmp, path)


def notify(state_dir: str) -> None:
    """One byte down the notify fifo if an executor is waiting on it; nothing (ENXIO) when none is."""
    try:
        fd = posix.open(f"{state_dir}/{NOTIFY_FIFO}", posix.O_WRONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except OSError:
        return
    try:
        posix.write(fd, b"\n")
    except OSError:
        pass  # full: a wakeup is pending anyway
    finally:
        posix.close(fd)


def read_text(path: str) -> str | None:
    """The whole (small) file, None when it does not exist; raw fds: `ps` reads several per container."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
    finally:
        posix.close(fd)
    return b"".join(chunks).decode()


def set_comm(name: str) -> None:
    """Name the calling process in ps and top: the launcher's forks all share its command line."""
    fd = posix.open("/proc/self/comm", posix.O_WRONLY | posix.O_CLOEXEC)
    try:
        posix.write(fd, name[:15].encode())
    finally:
        posix.close(fd)


def format_pid(pid: int, start_time: int) -> str:
    return f"{pid} {start_time}\n"


def parse_pid(text: str | None) -> tuple[int, int]:
    """(pid, start time) of a pid file; (0, 0) when missing or torn."""
    if not text:
        return 0, 0
    parts = text.split()
    if len(parts) != 2:
        return 0, 0
    return int(parts[0]), int(parts[1])


def exit_code_of(wait_status: int) -> tuple[int, int]:
    """(exit code, signal) of a waitpid status: a kill by signal N is 128+N, as shells report."""
    if posix.WIFSIGNALED(wait_status):
        signum = posix.WTERMSIG(wait_status)
        return 128 + signum, signum
    return posix.WEXITSTATUS(wait_status), 0


def format_exit(exit_code: int, signum: int, oom_killed: bool, exited_at_ns: int) -> str:
    oom = "true" if oom_killed else "false"
    return (
        f'{{"exit_code": {exit_code}, "signal": {signum}, "oom_killed": {oom}, '
        f'"exited_at_ns": {exited_at_ns}}}\n'
    )


def format_lost_exit(exit_code: int, started: bool, exited_at_ns: int) -> str:
    """The exit record the executor writes for a shim that died without writing one: marked lost.

    `started` tells a container whose command ran from one that was only created (its id is then free again).
    """
    started_text = "true" if started else "false"
    return (
        f'{{"exit_code": {exit_code}, "signal": 0, "oom_killed": false, "exited_at_ns": {exited_at_ns}, '
        f'"lost": true, "started": {started_text}}}\n'
    )


def parse_exit(text: str) -> dict:
    import json

    record = json.loads(text)
    return {
        "exit_code": int(record["exit_code"]),
        "signal": int(record.get("signal", 0)),
        "oom_killed": bool(record.get("oom_killed", False)),
        "exited_at_ns": int(record.get("exited_at_ns", 0)),
        "lost": bool(record.get("lost", False)),
        "started": bool(record.get("started", True)),
    }


def format_error(kind: str, message: str) -> str:
    """One line: `<kind> <message>`, newlines folded so the line stays one."""
    return f"{kind} {' '.join(message.split())}\n"


def parse_error(text: str) -> tuple[str, str]:
    kind, _, message = text.strip().partition(" ")
    if kind not in (ERROR_INVALID, ERROR_FAILED):
        return ERROR_FAILED, text.strip()
    return kind, message
