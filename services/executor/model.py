"""Dataclasses of the executor service: what is asked of it and the live state it reports; no gRPC here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.common.security import SecurityOptions
from services.executor.cgroups import Limits
from services.executor.profile import SecurityProfile


class ProcessStatus(str, enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


class StdioMode(str, enum.Enum):
    LOG = "log"
    ATTACH = "attach"


@dataclass(frozen=True)
class ProcessSpec:
    """What to run: argv (never joined), extra environment, working dir, terminal and stdin."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = ""
    terminal: bool = False
    stdin: bool = False
    # Exec only: `exec --user` (empty: the container's user) and `exec --privileged`.
    user: str = ""
    privileged: bool = False


@dataclass(frozen=True)
class CreateSpec:
    """A CreateContainer request."""

    id: str
    hostname: str
    rootfs_path: str
    process: ProcessSpec
    limits: Limits = field(default_factory=Limits)
    stdio_mode: StdioMode = StdioMode.LOG
    network_namespace: bool = False
    # (rows, cols) of the terminal when process.terminal is set; None leaves the kernel's 0x0.
    window: tuple[int, int] | None = None
    # Address on the container's network, for its /etc/hosts; empty with loopback only.
    ip_address: str = ""
    security: SecurityOptions = field(default_factory=SecurityOptions)
    # The serialized request, kept verbatim in the state dir (statefiles.REQUEST); b"" keeps nothing.
    saved_request: bytes = b""


@dataclass(frozen=True)
class ProcessState:
    """The executor's live view of one container, read from its state dir and /proc."""

    id: str
    status: ProcessStatus
    pid: int = 0
    pid_start_time: int = 0
    shim_pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    exited_at_ns: int | None = None
    cgroup_path: str = ""
    log_path: str = ""
    # Filled in by create and get only; None for a container of an older plan (unconfined).
    security: SecurityProfile | None = None


@dataclass(frozen=True)
class ServiceInfo:
    version: str
    run_root: str
    cgroup_version: str
    kernel: str
    containers_running: int
    pid: int


@dataclass(frozen=True)
class LogEntry:
    stream: str  # "stdout" or "stderr"
    data: bytes
    time_ns: int


# Events of the Exec and Attach streams, in both directions.


@dataclass(frozen=True)
class Stdin:
    data: bytes


@dataclass(frozen=True)
class CloseStdin:
    pass


@dataclass(frozen=True)
class Resize:
    rows: int
    cols: int


@dataclass(frozen=True)
class Signal:
    signum: int


@dataclass(frozen=True)
class Output:
    stream: str  # "stdout" or "stderr"
    data: bytes


@dataclass(frozen=True)
class Started:
    pid: int


@dataclass(frozen=True)
class Exited:
    exit_code: int
    # Attach reports it (the shim recorded it before the exit frame); exec sessions never set it.
    oom_killed: bool = False


InputEvent = Stdin | CloseStdin | Resize | Signal
OutputEvent = Output | Started | Exited
