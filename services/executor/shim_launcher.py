"""Shim launcher: one warm, grpc-free helper per executor that gives each container its shim on request, no exec.

The shim is a standby forked ahead while the launcher was idle (shim_standby.py), or one forked now.
"""

import _signal
import gc
import marshal
import posix
import select
import sys

from services.common import linux
from services.executor import cgroup_join, framing, shim, shim_standby, statefiles

# Loaded once here, before any fork, so no shim or container init pays an interpreter start or an import:
# they share these pages copy-on-write with the launcher and with each other.
from services.executor import init, logfmt  # noqa: F401

# Started by the executor (fork+exec, its end of a socketpair as our stdin). The first reply, READY, comes
# once every import is done (nothing is written under MYDOCKER_RUN/pycache after it); then one request at
# a time, each answered once the intermediate child has exited. End of file on stdin: the executor is gone.
BOOTSTRAP = "from services.executor.shim_launcher import main; main()"
CONTROL_FD = 0
LENGTH_SIZE = shim_standby.LENGTH_SIZE
# A reply is one big-endian signed 32-bit status.
REPLY_SIZE = 4
MAX_REQUEST = 1 << 20
READ_SIZE = 64 * 1024
READY = 0
# Reply of a fork that failed in the launcher itself; otherwise the reply is the child's exit status.
FORK_FAILED = -1
# A fork copies the launcher's page tables and its first writes copy pages: ~1.5 ms of CPU that, done
# at once, competes with the create that just got its shim (2 CPUs here). Once idle this long, the
# create is over (or another request came, and that one is served first).
STANDBY_IDLE_MS = 50


class RequestError(ValueError):
    """The executor sent something that is not a request of this protocol."""


def encode_request(options: dict) -> bytes:
    """A 4-byte big-endian length, then the shim's options in marshal format.

    The options: state, log, stdio, oom (str), terminal, stdin (bool), shim_procs (the files joining the shims' cgroups),
    window ((rows, cols) or None) and plan (the container init's plan, marshal bytes).
    marshal because it is built in: the launcher decodes without importing json.
    """
    try:
        payload = marshal.dumps(options)
    except ValueError as err:
        raise RequestError(f"shim options that marshal cannot carry: {err}") from None
    if len(payload) > MAX_REQUEST:
        raise RequestError(f"request of {len(payload)} bytes is over {MAX_REQUEST}")
    return len(payload).to_bytes(LENGTH_SIZE, "big") + payload


class RequestReader:
    """Turns the control stream into requests; feed() returns the (option dict, its marshal bytes) completed so far."""

    def __init__(self):
        self._buffer = b""

    def feed(self, data: bytes) -> list:
        self._buffer += data
        requests = []
        while len(self._buffer) >= LENGTH_SIZE:
            size = int.from_bytes(self._buffer[:LENGTH_SIZE], "big")
            if size > MAX_REQUEST:
                raise RequestError(f"request of {size} bytes is over {MAX_REQUEST}")
            if len(self._buffer) < LENGTH_SIZE + size:
                break
            payload = self._buffer[LENGTH_SIZE:LENGTH_SIZE + size]
            self._buffer = self._buffer[LENGTH_SIZE + size:]
            try:
                options = marshal.loads(payload)
            except (EOFError, ValueError, TypeError) as err:
                raise RequestError(f"undecodable request: {err}") from None
            if not isinstance(options, dict):
                raise RequestError(f"a request is a dict of options, not {type(options).__name__}")
            requests.append((options, payload))
        return requests


def encode_reply(status: int) -> bytes:
    return framing.encode_int(status)


def decode_reply(data: bytes) -> int:
    return framing.decode_int(data)


def main() -> None:
    """Serve spawn requests on stdin (the executor's socketpair) until end of file.

    Signal dispositions stay the interpreter's defaults, so a shim forked from here starts as a fresh
    interpreter would; gc.freeze() keeps the shims' collections off the pages they share with us.
    """
    statefiles.set_comm("shim-launcher")
    reader = RequestReader()
    if not _reply(READY):
        return
    standby = None
    # The cgroup files of the last request: a standby is forked for those once the launcher is idle.
    wanted = None
    try:
        while True:
            if wanted is not None and not _readable(CONTROL_FD, STANDBY_IDLE_MS):
                standby = shim_standby.fork_standby(wanted)
                wanted = None
            try:
                data = posix.read(CONTROL_FD, READ_SIZE)
            except ConnectionResetError:
                data = b""
            if not data:
                # The executor closed its end or died: nothing more will come. Shims are not ours to stop.
                return
            for options, payload in reader.feed(data):
                status, standby = serve(options, payload, standby)
                if not _reply(status):
                    return
                if standby is None:
                    wanted = options["shim_procs"]
    finally:
        if standby is not None:
            standby.dismiss()


def serve(options: dict, payload: bytes, standby):
    """One request, through the standby shim if there is one alive, else a shim forked now.

    Returns the reply's status and the standby if it is still unused.
    """
    if standby is not None:
        try:
            # Recorded before the shim has its options: a standby that dies at once is then seen dead.
            _record_shim(options["state"], standby.pid, kill_on_failure=False)
        except OSError as err:
            # No state dir to run in (the forked path fails the same way); the standby waits for the next.
            print(f"shim launcher: recording the shim of {options['state']}: {err}", file=sys.stderr)
            return FORK_FAILED, standby
        if standby.hand_over(payload):
            return 0, None
    return spawn(options), None


def _readable(fd: int, timeout_ms: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(timeout_ms))


def _reply(status: int) -> bool:
    """Send one reply; False when the executor is gone."""
    data = encode_reply(status)
    try:
        while data:
            data = data[posix.write(CONTROL_FD, data):]
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def spawn(options: dict) -> int:
    """Fork the intermediate child, wait for it: 0 once the shim is forked."""
    # Everything allocated so far stays out of the children's collections, which would otherwise
    # touch (and so copy) every page of objects shared with the launcher.
    gc.freeze()
    try:
        pid = posix.fork()
    except OSError as err:
        print(f"shim launcher: fork: {err}", file=sys.stderr)
        return FORK_FAILED
    if pid == 0:
        _intermediate(options)
    _, status = posix.waitpid(pid, 0)
    return posix.waitstatus_to_exitcode(status)


def _intermediate(options) -> None:
    """In the forked child: never returns into the launcher's loop."""
    try:
        posix.setsid()
        stdio_for(options["state"])
        # Double fork: this child exits at once and the shim is reparented away from the launcher.
        pid = posix.fork()
        if pid:
            _record_shim(options["state"], pid)
            posix._exit(0)
        run_shim(options)
    except BaseException:  # noqa: BLE001 - a forked child must never return into the launcher's loop
        sys.excepthook(*sys.exc_info())
    finally:
        posix._exit(1)


def stdio_for(state_dir: str) -> None:
    """stdin and stdout on /dev/null, stderr to the container's shim.log, and no other fd open."""
    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    log = posix.open(f"{state_dir}/{statefiles.SHIM_LOG}", posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC, 0o600)
    # dup2 over fd 0 closes this child's copy of the control socket.
    posix.dup2(null, 0)
    posix.dup2(null, 1)
    posix.dup2(log, 2)
    posix.closerange(3, posix.sysconf("SC_OPEN_MAX"))


def _record_shim(state_dir: str, pid: int, kill_on_failure: bool = True) -> None:
    """shim.pid, written before the launcher replies: a shim that dies at once is then seen dead, not awaited."""
    try:
        statefiles.write_atomic(
            # A shim that failed at once is our unreaped child, a zombie: its start time still names it.
            f"{state_dir}/{statefiles.SHIM_PID}",
            statefiles.format_pid(pid, statefiles.proc_start_time(pid, zombie_too=True) or 0),
        )
    except BaseException:
        if kill_on_failure:
            # Unrecorded, the shim could not be found to be stopped: it must not run. It is our child, not yet reaped.
            posix.kill(pid, _signal.SIGKILL)
        raise


def run_shim(options, joined=None, unshared: bool = False) -> None:
    """Become the container's shim; a standby has `joined` these cgroup files and `unshared` already."""
    state_dir = options["state"]
    try:
        statefiles.set_comm(f"shim {state_dir.rsplit('/', 1)[-1]}")
        # Out of the executor's cgroups, so stopping or limiting the executor leaves shims alone.
        if joined != list(options["shim_procs"]):
            cgroup_join.join(options["shim_procs"])
        # Our next child, the container's init, is PID 1 of a new pid namespace.
        if not unshared:
            linux.unshare(linux.CLONE_NEWPID)
    except OSError as err:
        shim.fail(state_dir, f"shim: {err}")
        posix._exit(1)
    shim.Shim(options).run()
