"""A shim forked by the launcher ahead of its container: two forks, the cgroup move and the pid namespace done while no create waits."""

import gc
import marshal
import posix
import select
import sys

from services.common import linux
from services.executor import cgroup_join, statefiles

# The standby's end of its request pipe, once everything else is closed.
REQUEST_FD = 3
# How long a launcher that is stopping waits for its standby to see end of file and exit.
DISMISS_WAIT_MS = 5000
PID_SIZE = 4
# A request's framing, the launcher's own (shim_launcher.encode_request): a big-endian length, then
# the marshal payload. The standby's pipe carries the request as the launcher received it.
LENGTH_SIZE = 4


class Standby:
    """The launcher's handle on one waiting shim: its pid (and pidfd), and the pipe its request goes down."""

    def __init__(self, pid: int, pidfd: int, request_fd: int):
        self.pid = pid
        self.pidfd = pidfd
        self.request_fd = request_fd

    def hand_over(self, payload: bytes) -> bool:
        """Send the shim its options (the launcher's request, as it came); False if the standby is gone."""
        try:
            data = len(payload).to_bytes(LENGTH_SIZE, "big") + payload
            while data:
                data = data[posix.write(self.request_fd, data):]
            return True
        except OSError:
            return False  # EPIPE: it died waiting (killed by hand); the caller forks a shim itself
        finally:
            self._close()

    def dismiss(self) -> None:
        """End of file on its pipe makes it exit; wait for that, so the shims' cgroup is empty when we are gone."""
        posix.close(self.request_fd)
        try:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            poller.poll(DISMISS_WAIT_MS)
        finally:
            posix.close(self.pidfd)

    def _close(self) -> None:
        posix.close(self.request_fd)
        posix.close(self.pidfd)


def fork_standby(shim_procs) -> "Standby | None":
    """Fork a standby shim that joins `shim_procs`' cgroups; None if that failed (a request then forks its own)."""
    request_r, request_w = posix.pipe()
    pid_r, pid_w = posix.pipe()
    gc.freeze()
    try:
        pid = posix.fork()
    except OSError as err:
        print(f"shim launcher: fork of a standby shim: {err}", file=sys.stderr)
        for fd in (request_r, request_w, pid_r, pid_w):
            posix.close(fd)
        return None
    if pid == 0:
        posix.close(request_w)
        posix.close(pid_r)
        _intermediate(request_r, pid_w, shim_procs)
    posix.close(request_r)
    posix.close(pid_w)
    _, status = posix.waitpid(pid, 0)
    try:
        data = posix.read(pid_r, PID_SIZE)
    finally:
        posix.close(pid_r)
    standby = int.from_bytes(data, "big") if status == 0 and len(data) == PID_SIZE else 0
    try:
        # A pidfd, not the pid: the standby is not our child, and its number could be reused once it is gone.
        pidfd = posix.pidfd_open(standby) if standby else -1
    except OSError:
        pidfd = -1
    if pidfd < 0:
        posix.close(request_w)
        return None
    return Standby(standby, pidfd, request_w)


def _intermediate(request_r: int, pid_w: int, shim_procs) -> None:
    """Between launcher and standby: a new session, then a double fork so the standby leaves the launcher's children."""
    try:
        posix.setsid()
        pid = posix.fork()
        if pid:
            posix.write(pid_w, pid.to_bytes(PID_SIZE, "big"))
            posix._exit(0)
        posix.close(pid_w)
        _wait(request_r, shim_procs)
    except BaseException:  # noqa: BLE001 - a forked child must never return into the launcher's loop
        sys.excepthook(*sys.exc_info())
    finally:
        posix._exit(1)


def _wait(request_r: int, shim_procs) -> None:
    """The standby: prepared as far as no request is needed, then a shim with the options that come."""
    from services.executor import shim_launcher

    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    for target in (0, 1, 2):
        posix.dup2(null, target)
    if request_r != REQUEST_FD:
        posix.dup2(request_r, REQUEST_FD, inheritable=False)
    posix.closerange(REQUEST_FD + 1, posix.sysconf("SC_OPEN_MAX"))
    # Done here when they can be; a step that fails is left to the shim, which records why in its state dir.
    joined = None
    try:
        cgroup_join.join(shim_procs)
        joined = list(shim_procs)
    except OSError:
        pass
    unshared = False
    try:
        linux.unshare(linux.CLONE_NEWPID)
        unshared = True
    except OSError:
        pass
    # Named once ready, so ps shows a standby only as it will take a request.
    statefiles.set_comm("shim-standby")
    payload = _read_request()
    posix.close(REQUEST_FD)
    if payload is None:
        posix._exit(0)  # dismissed: the launcher is gone or stopping
    options = marshal.loads(payload)
    shim_launcher.stdio_for(options["state"])
    shim_launcher.run_shim(options, joined=joined, unshared=unshared)


def _read_request() -> "bytes | None":
    """The length-prefixed request from the launcher; None on end of file."""
    header = _read_exactly(LENGTH_SIZE)
    if header is None:
        return None
    return _read_exactly(int.from_bytes(header, "big"))


def _read_exactly(size: int) -> "bytes | None":
    chunks = []
    while size:
        chunk = posix.read(REQUEST_FD, min(size, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
