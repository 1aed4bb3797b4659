"""The front of `mydocker`: hands the command line and stdio to the warm CLI server, or runs the CLI itself.

The launcher runs this with `python -S`, so it imports only built-in modules (no os, no socket: their
imports cost more than the whole exchange). A command costs the CLI server a fork of a process that has
already imported typer, grpc and the generated protos, instead of ~150 ms of imports per command.
The worker the server forks is a copy of the CLI and runs the command with our stdin, stdout, stderr,
directory, umask and environment; we forward our signals to it and exit with its status.
Without a server (none started, `MYDOCKER_CLI_SERVER=off`, or one serving older code) the CLI runs
here, in-process, exactly as before; `MYDOCKER_CLI_SERVER=require` makes that an error instead.
cli/front.c is this module compiled by hand (no interpreter start): ./mydocker prefers it once built,
and any change to the protocol here must be made there too (tests run both).
"""

import _signal
import _socket
import marshal
import posix
import sys

PROTOCOL = 1
SOCKET_NAME = "cli.sock"
DEFAULT_RUN = b"/run/mydocker"
SWITCH = b"MYDOCKER_CLI_SERVER"
MAX_PACKET = 1 << 16
# Everything a terminal or a supervisor sends to a foreground command; the worker handles them as the
# in-process CLI would (Ctrl-C and TERM are forwarded to the container, WINCH resizes its tty).
FORWARDED_SIGNALS = (
    _signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGWINCH,
    _signal.SIGUSR1, _signal.SIGUSR2,
)

# Requests (client -> server) and replies (server -> client), one marshal-encoded tuple per packet.
# argv: str here, bytes from cli/front.c (the worker decodes both alike).
RUN = "run"  # (RUN, PROTOCOL, argv, environ, umask) with fds [cwd, stdin, stdout, stderr]
PID = "pid"  # (PID, pid): the worker that runs the command; signals go to it
EXIT = "exit"  # (EXIT, status)
FALLBACK = "fallback"  # (FALLBACK, why): nothing ran; run the command in-process


def socket_path(environ, cwd: bytes) -> bytes:
    """The server's socket: <MYDOCKER_RUN>/cli.sock, as services.common.config.Config resolves it."""
    run = environ.get(b"MYDOCKER_RUN") or DEFAULT_RUN
    if not run.startswith(b"/"):
        run = cwd.rstrip(b"/") + b"/" + run
    return run.rstrip(b"/") + b"/" + SOCKET_NAME.encode()


def encode(message) -> bytes:
    return marshal.dumps(message)


def decode(packet: bytes):
    """A reply or request tuple; ValueError for anything that is not one."""
    try:
        message = marshal.loads(packet)
    except (EOFError, ValueError, TypeError) as err:
        raise ValueError(f"unreadable packet: {err}") from None
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise ValueError(f"not a message: {message!r}")
    return message


def pack_fds(fds) -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


def run_in_process(argv) -> None:
    """Run the full CLI here: add the site-packages `python -S` left out (cheaper than a new interpreter)."""
    import site

    site.main()
    from cli.main import main

    main(argv)


def connect(path: bytes):
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        raise
    return conn


class Forwarder:
    """Signal handlers that pass each signal on to the worker, or hold it until the worker is known."""

    def __init__(self):
        self.worker = 0
        self.pending = []

    def handle(self, signum, frame):
        if self.worker:
            posix.kill(self.worker, signum)
        else:
            self.pending.append(signum)

    def install(self):
        for signum in FORWARDED_SIGNALS:
            _signal.signal(signum, self.handle)

    def uninstall(self):
        """Python's own dispositions back, for a CLI that runs here after all."""
        for signum in FORWARDED_SIGNALS:
            _signal.signal(signum, _signal.default_int_handler if signum == _signal.SIGINT else _signal.SIG_DFL)

    def set_worker(self, pid):
        self.worker = pid
        while self.pending:
            posix.kill(pid, self.pending.pop(0))

    def nothing_ran(self):
        """None (run the command in-process), unless a signal came meanwhile: it ends the command unstarted."""
        if self.pending:
            return 128 + self.pending[0]
        self.uninstall()
        return None


def delegate(argv) -> int | None:
    """Run the command in a worker of the server; the worker's exit status, or None when nothing ran."""
    environ = posix.environ
    if environ.get(SWITCH) == b"off":
        return None
    try:
        cwd_fd = posix.open(".", posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    except OSError:
        return None
    if cwd_fd < 3:
        # The lowest free fd: one of our stdio is closed, which the in-process CLI copes with.
        posix.close(cwd_fd)
        return None
    try:
        conn = connect(socket_path(environ, posix.getcwdb()))
    except OSError:
        posix.close(cwd_fd)
        return None
    forwarder = Forwarder()
    forwarder.install()
    umask = posix.umask(0o022)
    posix.umask(umask)
    request = encode((RUN, PROTOCOL, list(argv), dict(environ), umask))
    try:
        conn.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, pack_fds((cwd_fd, 0, 1, 2)))])
    except OSError:
        # The server cannot take it (EMSGSIZE: more than the socket's buffer): the CLI runs here.
        return forwarder.nothing_ran()
    posix.close(cwd_fd)
    started = False
    while True:
        try:
            packet = conn.recv(MAX_PACKET)
        except ConnectionResetError:
            packet = b""
        if not packet:
            if not started:
                return forwarder.nothing_ran()
            sys.stderr.write("mydocker: the CLI server's worker vanished before reporting its exit status\n")
            return 1
        try:
            message = decode(packet)
        except ValueError as err:
            sys.stderr.write(f"mydocker: the CLI server sent {err}: restart it with scripts/up\n")
            return 1
        if message[0] == PID:
            started = True
            forwarder.set_worker(message[1])
        elif message[0] == EXIT:
            if started:
                return message[1]
            # The worker died before it took the command (the server's log says why).
            return forwarder.nothing_ran()
        elif message[0] == FALLBACK and not started:
            return forwarder.nothing_ran()


def main() -> None:
    argv = sys.argv[1:]
    status = delegate(argv)
    if status is None:
        if posix.environ.get(SWITCH) == b"require":
            path = socket_path(posix.environ, posix.getcwdb()).decode(errors="replace")
            sys.stderr.write(f"mydocker: no CLI server answers at {path} (MYDOCKER_CLI_SERVER=require): run scripts/up\n")
            posix._exit(1)
        run_in_process(argv)
    posix._exit(status)


if __name__ == "__main__":
    main()
