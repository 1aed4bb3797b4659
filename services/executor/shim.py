"""Per-container shim, forked by the launcher: parent and reaper of the container's init; holds its stdio, log and exit."""

import _signal as signal
import errno
import posix
import select
import time

from services.executor import framing, logfmt, statefiles
from services.executor.shim_attach import _POLL_IN, READ_SIZE, AttachMixin

# After the container exits, how long to wait for its last output and for a first attach client.
DRAIN_SECONDS = 2.0
LINGER_SECONDS = 5.0
# A full disk (or quota) under the log: ENOSPC, EDQUOT. The output is dropped, the container goes on.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def fail(state_dir, message):
    """Record a failure before the container's init ran: the error, and the container as exited."""
    statefiles.write_atomic(
        f"{state_dir}/{statefiles.ERROR}", statefiles.format_error(statefiles.ERROR_FAILED, message)
    )
    statefiles.write_atomic(f"{state_dir}/{statefiles.STATUS}", statefiles.EXITED + "\n")
    statefiles.notify(state_dir)


def note(message):
    """A line for shim.log; lost if that cannot be written either, which must not stop the container's shim."""
    try:
        posix.write(2, (message + "\n").encode())
    except OSError:
        pass  # shim.log is only a diagnostic: the container and its exit matter more


class Shim(AttachMixin):
    def __init__(self, options):
        self.state_dir = options["state"]
        self.log_path = options["log"]
        self.attach = options["stdio"] == "attach"
        self.terminal = options["terminal"]
        self.want_stdin = options["stdin"]
        self.oom_file = options["oom"]
        self.window = options["window"]
        self.init_plan = options["plan"]
        self.poll = select.poll()
        self.handlers = {}
        self.pending = {}  # output fd -> unfinished line
        self.streams = {}  # output fd -> "stdout" / "stderr"
        self.clients = {}
        self.ever_attached = False
        self.preattach = []
        self.preattach_size = 0
        self.stdin_fd = -1
        self.stdin_buffer = b""
        self.stdin_closing = False
        self.master = -1
        self.child = 0
        self.wait_status = None
        self.ready = False
        self.errored = False
        self.listener = None
        self.dropped = 0  # log lines dropped since the disk filled up

    def path(self, name):
        return f"{self.state_dir}/{name}"

    # -- setup -------------------------------------------------------------------------------

    def run(self):
        self.log_fd = posix.open(self.log_path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_CLOEXEC, 0o640)
        wake_r, wake_w = posix.pipe()
        posix.set_blocking(wake_r, False)
        posix.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.set_wakeup_fd(wake_w)
        self.watch(wake_r, self.on_wakeup)

        child_stdio, child_only = self.make_stdio()
        status_r, status_w = posix.pipe()
        if self.attach:
            self.listen()
        pid = posix.fork()
        if pid == 0:
            self.become_init(child_stdio, status_w, (status_r, wake_r, wake_w))
        self.child = pid
        # Only the init needed it: the idle shim keeps nothing it will not use.
        self.init_plan = None
        for fd in child_only:
            posix.close(fd)
        posix.close(status_w)
        self.status_reader = status_r
        self.status_buffer = b""
        self.watch(status_r, self.on_status)
        self.loop()

    def make_stdio(self):
        """(stdin, stdout, stderr) for the child, and the fds only the child keeps."""
        if self.terminal:
            self.master, slave = posix.openpty()
            if self.window:
                self.set_window(*self.window)
            self.add_output(self.master, "stdout")
            self.handlers[self.master] = self.on_master
            if self.attach and self.want_stdin:
                self.stdin_fd = self.master
            return (slave, slave, slave), (slave,)
        out_r, out_w = posix.pipe()
        err_r, err_w = posix.pipe()
        self.add_output(out_r, "stdout")
        self.add_output(err_r, "stderr")
        if self.attach and self.want_stdin:
            in_r, self.stdin_fd = posix.pipe()
            posix.set_blocking(self.stdin_fd, False)
        else:
            in_r = posix.open("/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
        return (in_r, out_w, err_w), (in_r, out_w, err_w)

    def listen(self):
        import _socket

        path = self.path(statefiles.ATTACH_SOCKET)
        try:
            posix.unlink(path)
        except FileNotFoundError:
            pass
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        old = posix.umask(0o077)
        try:
            sock.bind(path)
        finally:
            posix.umask(old)
        sock.listen(8)
        sock.setblocking(False)
        self.listener = sock
        self.watch(sock.fileno(), self.on_accept)

    def become_init(self, stdio, status_w, close_fds):
        """In the forked child: never returns into the shim's loop."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in close_fds:
                posix.close(fd)
            from services.executor import init

            init.run(self.state_dir, self.init_plan, stdio, status_w)
        finally:
            posix._exit(127)

    # -- event loop --------------------------------------------------------------------------

    def watch(self, fd, handler, events=_POLL_IN):
        self.handlers[fd] = handler
        self.poll.register(fd, events)

    def unwatch(self, fd):
        self.handlers.pop(fd, None)
        try:
            self.poll.unregister(fd)
        except KeyError:
            pass

    def loop(self):
        drain_deadline = None
        while True:
            if self.wait_status is not None:
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + DRAIN_SECONDS
                if not self.streams or time.monotonic() > drain_deadline:
                    break
            timeout = None if drain_deadline is None else max(0, drain_deadline - time.monotonic()) * 1000
            for fd, events in self.poll.poll(timeout):
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler(fd, events)
        self.finish()

    def on_wakeup(self, fd, events):
        try:
            while posix.read(fd, 512):
                pass
        except BlockingIOError:
            pass
        self.reap()

    def reap(self):
        while self.child:
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.wait_status = status
                self.exited_ns = time.time_ns()
                # Its status pipe has no writer left: whatever it said before dying is there to read.
                if self.status_reader >= 0:
                    posix.set_blocking(self.status_reader, False)
                    self.on_status(self.status_reader, select.POLLIN)
                return

    # -- the child's status pipe: "R" when parked before exec, "E <error>" on failure, EOF at exec

    def on_status(self, fd, events):
        try:
            data = posix.read(fd, 4096)
        except BlockingIOError:
            return
        if data:
            self.status_buffer += data
            while b"\n" in self.status_buffer:
                line, _, self.status_buffer = self.status_buffer.partition(b"\n")
                self.status_line(line.decode(errors="replace"))
            if self.wait_status is not None:
                self.on_status(fd, events)
            return
        self.unwatch(fd)
        posix.close(fd)
        self.status_reader = -1
        if self.ready and not self.errored:
            statefiles.write_atomic(self.path(statefiles.STATUS), statefiles.RUNNING + "\n")
            statefiles.notify(self.state_dir)

    def status_line(self, line):
        if line == "R":
            self.ready = True
            start = statefiles.proc_start_time(self.child) or 0
            # The pid file is what "created" means to the executor: no status write on the create path.
            statefiles.write_atomic(self.path(statefiles.PID), statefiles.format_pid(self.child, start))
            statefiles.notify(self.state_dir)
        elif line.startswith("E "):
            self.errored = True
            statefiles.write_atomic(self.path(statefiles.ERROR), line[2:] + "\n")
            statefiles.notify(self.state_dir)

    # -- output ------------------------------------------------------------------------------

    def add_output(self, fd, stream):
        posix.set_blocking(fd, False)
        self.streams[fd] = stream
        self.pending[fd] = b""
        self.watch(fd, self.on_output)

    def on_output(self, fd, events):
        try:
            data = posix.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            # A pty master reads EIO once the last slave is closed: that is its end of file.
            data = b""
        stream = self.streams[fd]
        if not data:
            self.write_log(stream, self.pending.pop(fd), final=True)
            del self.streams[fd]
            self.unwatch(fd)
            if fd != self.master:
                posix.close(fd)
            return
        lines, self.pending[fd] = logfmt.split_lines(self.pending[fd], data)
        self.write_log(stream, lines)
        if self.attach:
            self.forward(framing.STDOUT if stream == "stdout" else framing.STDERR, data)

    def write_log(self, stream, lines, final=False):
        if final:
            lines = [lines] if lines else []
        if not lines:
            return
        now = time.time_ns()
        data = b"".join(logfmt.encode_entry(stream, line, now) for line in lines)
        written = 0
        try:
            while written < len(data):
                written += posix.write(self.log_fd, data[written:])
        except OSError as err:
            if err.errno not in _NO_SPACE:
                raise
            if written:
                # Part of a line went out: take it back, so the log stays whole json-file lines for `logs`.
                posix.ftruncate(self.log_fd, posix.fstat(self.log_fd).st_size - written)
            if not self.dropped:
                note(f"shim: {self.log_path}: {err.strerror}: dropping output until there is room")
            self.dropped += len(lines)
            return
        if self.dropped:
            note(f"shim: {self.log_path}: writing again; {self.dropped} line(s) dropped")
            self.dropped = 0

    # -- exit --------------------------------------------------------------------------------

    def finish(self):
        for fd in list(self.streams):
            self.write_log(self.streams.pop(fd), self.pending.pop(fd, b""), final=True)
        posix.close(self.log_fd)
        exit_code, signum = statefiles.exit_code_of(self.wait_status)
        if self.errored and not signum:
            exit_code = exit_code or 1
        oom = self.oom_killed()
        statefiles.write_atomic(
            self.path(statefiles.EXIT), statefiles.format_exit(exit_code, signum, oom, self.exited_ns)
        )
        statefiles.write_atomic(self.path(statefiles.STATUS), statefiles.EXITED + "\n")
        statefiles.notify(self.state_dir)
        if self.attach:
            self.deliver_exit(framing.encode(framing.EXIT, framing.encode_int(exit_code)))
        posix._exit(0)

    def oom_killed(self):
        """The container cgroup's `oom_kill N` counter (v1 memory.oom_control, v2 memory.events) is not 0."""
        try:
            with open(self.oom_file) as handle:
                for line in handle:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == "oom_kill":
                        return parts[1] != "0"
        except OSError:
            return False
        return False

    def deliver_exit(self, frame):
        """Send the exit code to every client; wait a little for a first one that never came."""
        deadline = time.monotonic() + LINGER_SECONDS
        while not self.ever_attached and time.monotonic() < deadline:
            for fd, events in self.poll.poll(50):
                if fd == self.listener.fileno():
                    self.on_accept(fd, events)
        for fd in list(self.clients):
            self.send(fd, frame)
            self.drop_client(fd)
        self.listener.close()
        try:
            posix.unlink(self.path(statefiles.ATTACH_SOCKET))
        except FileNotFoundError:
            pass
