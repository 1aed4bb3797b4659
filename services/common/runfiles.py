"""Keep a running service findable: its socket bound again, its pidfile and lock made again, when someone removes them."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket as sockets
import stat
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# How often a service looks at its socket, pidfile and lock: a deleted socket is served again within this.
WATCH_SECONDS = 1.0

# (st_dev, st_ino) of a path: what a socket, pidfile or lock was when we made it.
Identity = tuple[int, int]


def identity_of(path: Path) -> Identity | None:
    """What is at `path` itself (a symlink is not followed), or None when nothing is."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_dev, info.st_ino


def someone_listens(path: Path, kind: int = sockets.SOCK_STREAM) -> bool:
    """True when a live socket at `path` takes connections: another process's, never to be taken over.

    A socket whose server died refuses the connection; so does a path that is no socket at all.
    """
    probe = sockets.socket(sockets.AF_UNIX, kind | sockets.SOCK_NONBLOCK | sockets.SOCK_CLOEXEC)
    try:
        probe.connect(str(path))
    except OSError as err:
        # EAGAIN: its backlog is full, EPROTOTYPE: it listens with another socket type; alive either way.
        return err.errno in (errno.EAGAIN, errno.EINPROGRESS, errno.EPROTOTYPE)
    finally:
        probe.close()
    return True


class SocketKeeper:
    """Notices that the unix socket a service bound was deleted or replaced, and has a fresh one bound there.

    `bind` binds a new socket at `path` (and serves on it) and returns its identity. A path that
    another live server now binds is left alone: taking it over would cut that server's clients off,
    and a second server of the same service cannot start beside us while we hold its lock.
    """

    def __init__(
        self, service: str, path: Path, bound: Identity | None, bind: Callable[[], Identity | None], kind: int = sockets.SOCK_STREAM
    ):
        self.service = service
        self.path = path
        self.bound = bound
        self._bind = bind
        self._kind = kind
        # What was last logged, so a state that lasts is one line in the log, not one a second.
        self._said: object = None

    def check(self) -> bool:
        """Bind again if our socket is no longer at the path; True when it did."""
        try:
            info = os.lstat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            info = None
        # The type too: a file made after ours was deleted may get its inode number.
        if info is not None and (info.st_dev, info.st_ino) == self.bound and stat.S_ISSOCK(info.st_mode):
            return False
        if info is not None and stat.S_ISSOCK(info.st_mode) and someone_listens(self.path, self._kind):
            self._say(
                ("rival", info.st_ino),
                "%s: %s is now another live server's socket: left to it; scripts/down, then scripts/up, to serve there again",
                self.service, self.path,
            )
            return False
        what = "deleted" if info is None else "replaced"
        try:
            self.bound = self._bind()
        except (OSError, RuntimeError, ValueError) as err:
            # RuntimeError: grpc's "Failed to bind"; the cause (a directory put there, a full disk) may pass.
            # The reason without file names: each attempt binds a private name of its own first.
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            self._say(
                ("failed", why), "%s: cannot bind %s again (%s): retrying every %.0f s", self.service, self.path, why, WATCH_SECONDS
            )
            return False
        self._said = None
        log.warning("%s: socket %s was %s: bound it again", self.service, self.path, what)
        return True

    def _say(self, key: object, message: str, *args: object) -> None:
        if key != self._said:
            self._said = key
            log.warning(message, *args)


def write_pidfile(path: Path) -> None:
    """Write our pid atomically, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


class RunFiles:
    """A running service's pidfile and lock, made again when deleted or replaced.

    Without its pidfile `scripts/down` would not find the service and `scripts/up` would start a
    second one; without its lock file that second one would get a lock of its own and run beside it.
    """

    def __init__(self, service: str, pid_path: Path, lock_path: Path, lock_fd: int):
        self.service = service
        self.pid_path = pid_path
        self.lock_path = lock_path
        # The fd single_instance() holds: a new lock takes over its number, so whoever closes it
        # (single_instance at exit, a forked worker of the CLI server) closes the lock actually held.
        self.lock_fd = lock_fd
        # Per file, what was last logged about it: a lasting failure is one line, not one a second.
        self._said: dict[str, object] = {}

    def check(self) -> None:
        # The pidfile follows the lock: with a second instance holding a new lock, the two would
        # otherwise overwrite each other's pid every second.
        if self._check_lock():
            self._check_pidfile()

    def _check_pidfile(self) -> None:
        try:
            text = self.pid_path.read_text()
        except FileNotFoundError:
            text = None
        except OSError as err:
            text = f"unreadable: {err.strerror}"
        if text is not None and text.strip() == str(os.getpid()):
            return
        try:
            write_pidfile(self.pid_path)
        except OSError as err:
            self._say("pidfile", str(err), "%s: cannot write %s again (%s): retrying", self.service, self.pid_path, err)
            return
        self._said.pop("pidfile", None)
        log.warning("%s: pidfile %s was %s: wrote pid %d again", self.service, self.pid_path,
                    "deleted" if text is None else f"changed ({text.strip()[:40]!r})", os.getpid())

    def _check_lock(self) -> bool:
        """True when the lock at lock_path is ours (again)."""
        held = os.fstat(self.lock_fd)
        if identity_of(self.lock_path) == (held.st_dev, held.st_ino):
            return True
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            self._say("lock", str(err), "%s: cannot make %s again (%s): retrying", self.service, self.lock_path, err)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._say("lock", "taken", "%s: %s was replaced and another %s service holds the new one: stop one of them",
                      self.service, self.lock_path, self.service)
            return False
        os.dup2(fd, self.lock_fd, inheritable=False)
        os.close(fd)
        self._said.pop("lock", None)
        log.warning("%s: lock %s was deleted or replaced: locked it again", self.service, self.lock_path)
        return True

    def _say(self, topic: str, key: object, message: str, *args: object) -> None:
        if self._said.get(topic) != key:
            self._said[topic] = key
            log.warning(message, *args)
