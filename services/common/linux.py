"""mydocker's only syscall module: ctypes wrappers for what `os` lacks, raising OSError with the real errno."""

from __future__ import annotations

import _socket
import ctypes
import errno
import fcntl
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24

MNT_FORCE = 0x1
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Generic ioctl numbers (x86, arm64, riscv) of the pty multiplexer.
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# glibc has no pivot_root() wrapper; the syscall number depends on the architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

# Namespace names under /proc/<pid>/ns/ and the clone flag setns() expects for each.
NAMESPACE_FLAGS = {
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "net": CLONE_NEWNET,
    "pid": CLONE_NEWPID,
    "cgroup": CLONE_NEWCGROUP,
    "mnt": CLONE_NEWNS,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.syscall.restype = ctypes.c_long
_libc.syncfs.argtypes = (ctypes.c_int,)


def _encode(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return os.fsencode(value)


def _check(result: int, what: str, path: str | os.PathLike | None = None) -> None:
    if result == -1:
        code = ctypes.get_errno()
        if path is None:
            raise OSError(code, f"{what}: {os.strerror(code)}")
        raise OSError(code, f"{what}: {os.strerror(code)}", os.fsdecode(path))


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(
    source: str | os.PathLike | None, target: str | os.PathLike, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    result = _libc.mount(_encode(source), _encode(target), _encode(fstype), flags, _encode(data))
    _check(result, f"mount {os.fsdecode(source) if source else fstype} on {os.fsdecode(target)}", target)


def umount2(target: str | os.PathLike, flags: int = 0) -> None:
    _check(_libc.umount2(_encode(target), flags), f"umount {os.fsdecode(target)}", target)


def syncfs(path: str | os.PathLike) -> None:
    """syncfs(2) of the filesystem holding `path`: one flush for a whole extracted tree."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.syncfs(fd), f"syncfs {os.fsdecode(path)}", path)
    finally:
        os.close(fd)


def pivot_root(new_root: str, put_old: str) -> None:
    machine = os.uname().machine
    if machine not in _SYS_PIVOT_ROOT:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {machine}")
    result = _libc.syscall(_SYS_PIVOT_ROOT[machine], _encode(new_root), _encode(put_old))
    _check(result, f"pivot_root({new_root}, {put_old})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname({name})")


def prctl(option: int, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg2, 0, 0, 0), f"prctl({option})")


def set_link_up(name: str) -> None:
    """Set IFF_UP on an interface of the current network namespace (used for `lo`).

    struct ifreq is 40 bytes: the name in 16, then ifr_flags as a native short.
    """
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = name.encode().ljust(16, b"\0") + bytes(24)
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
        flags = int.from_bytes(reply[16:18], sys.byteorder) | IFF_UP
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, request[:16] + flags.to_bytes(2, sys.byteorder) + bytes(22))
    finally:
        sock.close()


def open_pty(ptmx: str = "/dev/ptmx") -> tuple[int, int]:
    """(master, slave) from the devpts instance behind `ptmx`: inside a container, the container's own.

    Neither fd becomes a controlling terminal here (O_NOCTTY); both are close-on-exec.
    """
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, (0).to_bytes(4, sys.byteorder))
        number = int.from_bytes(fcntl.ioctl(master, TIOCGPTN, bytes(4)), sys.byteorder)
        slave = os.open(os.path.join(os.path.dirname(ptmx), "pts", str(number)), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        os.close(master)
        raise
    return master, slave
