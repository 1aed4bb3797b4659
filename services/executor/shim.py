"""Per-container shim, forked by the launcher: parent and reaper of the container's init; holds its stdio, log and exit."""

import _signal as signal
import posix
import select
import sys
import time

from services.executor import framing, logfmt, statefiles

READ_SIZE = 64 * 1024
# Output kept for the first attach client when the container starts before it connects.
PREATTACH_LIMIT = 1 << 20
# After the container exits, how long to wait for its last output and for a first attach client.
DRAIN_SECONDS = 2.0
LINGER_SECONDS = 5.0
CLIENT_SEND_TIMEOUT = 5.0
_POLL_IN = select.POLLIN | select.POLLHUP | select.POLLERR


def fail(state_dir, message):
    """Record a failure before the container's init ran: the error, and the container as exited."""
    statefiles.write_atomic(
        f"{state_dir}/{statefiles.ERROR}", statefiles.format_error(statefiles.ERROR_FAILED, message)
    )
    statefiles.write_atomic(f"{state_dir}/{statefiles.STATUS}", statefiles.EXITED + "\n")
    statefiles.notify(state_dir)


class Client:
    """One attach connection: frames in, frames out."""

    def __init__(self, sock):
        self.sock = sock
        self.reader = framing.FrameReader()

    def send(self, frame):
        self.sock.sendall(frame)


class Shim:
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
        while data:
            data = data[posix.write(self.log_fd, data):]

    def forward(self, kind, data):
        for start in range(0, len(data), framing.MAX_PAYLOAD):
            frame = framing.encode(kind, data[start:start + framing.MAX_PAYLOAD])
            if not self.ever_attached:
                self.preattach.append(frame)
                self.preattach_size += len(frame)
                while self.preattach_size > PREATTACH_LIMIT and len(self.preattach) > 1:
                    self.preattach_size -= len(self.preattach.pop(0))
            for fd in list(self.clients):
                self.send(fd, frame)

    def send(self, fd, frame):
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            client.send(frame)
        except OSError:
            # Gone or stuck past the send timeout: drop it, the container goes on.
            self.drop_client(fd)

    # -- attach clients ----------------------------------------------------------------------

    def on_accept(self, fd, events):
        try:
            conn_fd, _ = self.listener._accept()
        except BlockingIOError:
            return
        import _socket

        sock = _socket.socket(fileno=conn_fd)
        sock.settimeout(CLIENT_SEND_TIMEOUT)
        self.clients[conn_fd] = Client(sock)
        self.watch(conn_fd, self.on_client)
        if not self.ever_attached:
            self.ever_attached = True
            backlog, self.preattach = self.preattach, []
            for frame in backlog:
                self.send(conn_fd, frame)

    def on_client(self, fd, events):
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            data = client.sock.recv(READ_SIZE)
        except (BlockingIOError, TimeoutError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop_client(fd)
            return
        try:
            frames = client.reader.feed(data)
        except framing.FrameError:
            self.drop_client(fd)
            return
        for kind, payload in frames:
            self.on_frame(kind, payload)

    def drop_client(self, fd):
        client = self.clients.pop(fd, None)
        if client is None:
            return
        self.unwatch(fd)
        client.sock.close()
        if not self.clients and not self.terminal:
            # Like docker's StdinOnce: input ends with the client that gave it.
            self.close_stdin()

    def on_frame(self, kind, payload):
        if kind == framing.STDIN:
            if self.stdin_fd >= 0 and not self.stdin_closing:
                self.stdin_buffer += payload
                self.flush_stdin()
        elif kind == framing.CLOSE_STDIN:
            if self.terminal:
                # A terminal has no end of file; ^D at a line start is how a tty says it.
                if self.stdin_fd >= 0:
                    self.stdin_buffer += b"\x04"
                    self.flush_stdin()
            else:
                self.stdin_closing = True
                self.flush_stdin()
        elif kind == framing.RESIZE and self.master >= 0:
            self.set_window(*framing.decode_resize(payload))
        elif kind == framing.SIGNAL and self.child and self.wait_status is None:
            # We are its parent and have not reaped it: the pid cannot have been recycled.
            posix.kill(self.child, framing.decode_int(payload))

    def set_window(self, rows, cols):
        # Imported here: only terminal containers pay for these modules.
        import fcntl
        import termios

        winsize = rows.to_bytes(2, sys.byteorder) + cols.to_bytes(2, sys.byteorder) + bytes(4)
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, winsize)

    def flush_stdin(self):
        if self.stdin_fd < 0:
            return
        while self.stdin_buffer:
            try:
                written = posix.write(self.stdin_fd, self.stdin_buffer)
            except BlockingIOError:
                if self.stdin_fd == self.master:
                    self.poll.modify(self.master, _POLL_IN | select.POLLOUT)
                elif self.stdin_fd not in self.handlers:
                    self.watch(self.stdin_fd, self.on_stdin_writable, select.POLLOUT)
                return
            except OSError:
                # The container closed its stdin: drop what it will never read.
                self.stdin_buffer = b""
                self.close_stdin()
                return
            self.stdin_buffer = self.stdin_buffer[written:]
        if self.stdin_fd == self.master:
            if self.master in self.handlers:
                self.poll.modify(self.master, _POLL_IN)
        elif self.stdin_fd in self.handlers:
            self.unwatch(self.stdin_fd)
        if self.stdin_closing:
            self.close_stdin()

    def on_master(self, fd, events):
        """The pty master carries both directions: output to read, input waiting for room."""
        if events & select.POLLOUT:
            self.flush_stdin()
        if events & _POLL_IN:
            self.on_output(fd, events)

    def on_stdin_writable(self, fd, events):
        self.flush_stdin()

    def close_stdin(self):
        if self.stdin_fd < 0 or self.stdin_fd == self.master:
            return
        self.unwatch(self.stdin_fd)
        posix.close(self.stdin_fd)
        self.stdin_fd = -1

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
