"""The shim's attach side: clients on its socket, their frames, and the container's stdin and terminal size."""

import posix
import select
import sys

from services.executor import framing

READ_SIZE = 64 * 1024
# Output kept for the first attach client when the container starts before it connects.
PREATTACH_LIMIT = 1 << 20
CLIENT_SEND_TIMEOUT = 5.0
_POLL_IN = select.POLLIN | select.POLLHUP | select.POLLERR


class Client:
    """One attach connection: frames in, frames out."""

    def __init__(self, sock):
        self.sock = sock
        self.reader = framing.FrameReader()

    def send(self, frame):
        self.sock.sendall(frame)


class AttachMixin:
    """Shim methods for attach clients and stdin; the Shim holds the state they use (clients, stdin_fd, master...)."""

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
