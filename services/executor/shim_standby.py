"""A shim forked by the launcher ahead of its container: three forks, the cgroup move and the pid namespace done while no create waits.

The standby's own child, forked ahead too, is the container's init to be: PID 1 of the new pid
namespace, parked until the shim hands it its plan and stdio over a socketpair.
"""

import _socket
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


class Standby:
    """The launcher's handle on one waiting shim: its pid (and pidfd), and the pipe its request goes down."""

    def __init__(self, pid: int, pidfd: int, request_fd: int):
        self.pid = pid
        self.pidfd = pidfd
        self.request_fd = request_fd

    def hand_over(self, payload: bytes) -> bool:
        """Send the shim its options (the launcher's request, as it came); False if the standby is gone."""
        try:
            data = len(payload).to_bytes(4, "big") + payload
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
    parked = park_init() if unshared else None
    # Named once ready, so ps shows a standby only as it will take a request.
    statefiles.set_comm("shim-standby")
    payload = _await_request(parked)
    posix.close(REQUEST_FD)
    if payload is None:
        # Dismissed (the launcher is gone or stopping), or the parked init died (the pid namespace
        # died with it): the launcher forks the next shim itself. Our init first, so the shims'
        # cgroup is empty once we are gone.
        if parked is not None:
            posix.close(parked[1])
            posix.waitpid(parked[0], 0)
        posix._exit(0)
    options = marshal.loads(payload)
    shim_launcher.stdio_for(options["state"], keep=parked[1] if parked else -1)
    shim_launcher.run_shim(options, joined=joined, unshared=unshared, parked=parked)


def _await_request(parked) -> "bytes | None":
    """The length-prefixed request from the launcher; None on end of file, or if the parked init died first."""
    poller = select.poll()
    poller.register(REQUEST_FD, select.POLLIN | select.POLLHUP)
    init_pidfd = -1
    if parked is not None:
        try:
            init_pidfd = posix.pidfd_open(parked[0])
            poller.register(init_pidfd, select.POLLIN)
        except OSError:
            return None
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if REQUEST_FD in ready:
            break
        if init_pidfd in ready:
            posix.close(init_pidfd)
            return None
    if init_pidfd >= 0:
        posix.close(init_pidfd)
    header = _read_exactly(4)
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


def park_init() -> "tuple[int, int] | None":
    """Fork the container's init to be (PID 1 of our new pid namespace); its pid and our end of its socket."""
    try:
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return None
    ours_fd, theirs_fd = ours.detach(), theirs.detach()
    try:
        pid = posix.fork()
    except OSError:
        posix.close(ours_fd)
        posix.close(theirs_fd)
        return None
    if pid == 0:
        posix.close(ours_fd)
        _parked_init(theirs_fd)
    posix.close(theirs_fd)
    return pid, ours_fd


def hand_over_init(parked, state_dir: str, plan: bytes, stdio, status_w: int) -> "OSError | None":
    """Send the parked init its plan, stdio and status pipe; the error if it is gone (None once sent)."""
    pid, fd = parked
    payload = marshal.dumps((state_dir, plan))
    data = len(payload).to_bytes(4, "big") + payload
    fds = b"".join(f.to_bytes(4, sys.byteorder) for f in (*stdio, status_w))
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
    try:
        sent = sock.sendmsg([data[:READ_CHUNK]], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(data):
            # Only with something left: sendall sends even nothing, and the init, done reading and
            # gone on with its plan, has closed its end by now (EPIPE).
            sock.sendall(data[sent:])
        return None
    except OSError as err:
        return err
    finally:
        sock.close()


READ_CHUNK = 1 << 16
FD_COUNT = 4


def _parked_init(fd: int) -> None:
    """In the parked init: wait for the shim's hand-over, then be the container's init (init.run never returns)."""
    try:
        posix.closerange(3, fd)
        posix.closerange(fd + 1, posix.sysconf("SC_OPEN_MAX"))
        statefiles.set_comm("init-standby")
        received = _receive(fd)
        posix.close(fd)
        if received is None:
            posix._exit(0)  # the standby was dismissed
        (state_dir, plan), fds = received
        from services.executor import init

        init.run(state_dir, plan, tuple(fds[:3]), fds[3])
    except BaseException:  # noqa: BLE001 - a forked child must never return into the standby's code
        sys.excepthook(*sys.exc_info())
    finally:
        posix._exit(127)


def _receive(fd: int):
    """((state_dir, plan), [stdin, stdout, stderr, status_w]) from the shim; None at end of file."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
    try:
        # CLOEXEC, as the pipes a forked init inherits are: the status pipe must close at exec.
        data, ancillary, _, _ = sock.recvmsg(READ_CHUNK, _socket.CMSG_SPACE(4 * FD_COUNT), _socket.MSG_CMSG_CLOEXEC)
        fds = []
        for level, kind, cdata in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += [int.from_bytes(cdata[i:i + 4], sys.byteorder) for i in range(0, len(cdata) - len(cdata) % 4, 4)]
        if not data:
            return None
        size = int.from_bytes(data[:4], "big")
        payload = data[4:]
        while len(payload) < size:
            chunk = sock.recv(min(READ_CHUNK, size - len(payload)))
            if not chunk:
                return None
            payload += chunk
        if len(fds) != FD_COUNT:
            raise OSError(f"the shim handed over {len(fds)} fds, not {FD_COUNT}")
        return marshal.loads(payload), fds
    finally:
        sock.detach()
