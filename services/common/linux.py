"""mydocker's only syscall module: ctypes wrappers for what `os` lacks, raising OSError with the real errno."""

from __future__ import annotations

import _socket
import ctypes
import errno
import fcntl
import os
import struct
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
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

# capset(2): _LINUX_CAPABILITY_VERSION_3 takes two 32-bit words per set.
_CAPABILITY_VERSION_3 = 0x20080522

# bpf(2) commands, program and attach types of cgroup device programs.
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

# mount_setattr(2) (Linux 5.12): same number on every architecture since 5.x's unified table.
_SYS_MOUNT_SETATTR = 442
# The new mount API (Linux 5.2; the same numbers on every architecture since 424).
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

# Generic ioctl numbers (x86, arm64, riscv) of the pty multiplexer.
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# glibc has no pivot_root() or bpf() wrapper; the syscall numbers depend on the architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

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
_libc.capset.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_libc.syscall.restype = ctypes.c_long
_libc.syncfs.argtypes = (ctypes.c_int,)
_libc.statx.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
_libc.statfs.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
STATX_ATTR_MOUNT_ROOT = 0x2000
OVERLAYFS_SUPER_MAGIC = 0x794C7630
# struct statx: stx_attributes at 8, stx_attributes_mask at 56, 256 bytes in all; struct statfs starts
# with f_type (a long), 120 bytes on 64-bit Linux.
_STATX_SIZE = 256
_STATFS_SIZE = 120


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


def mount_root_type(path: str | os.PathLike, dir_fd: int = AT_FDCWD) -> int | None:
    """The filesystem type (statfs f_type) of the mount whose root `path` is, or None when `path` is no mount point.

    statx's STATX_ATTR_MOUNT_ROOT looks at one path, where reading /proc/self/mountinfo costs the kernel
    ~7 ms with 1,000 mounts. A symlink is not followed. OSError ENOTSUP where the kernel does not report
    mount roots (before Linux 5.8). With `dir_fd`, a relative `path` is looked up from that directory.
    """
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    _check(_libc.statx(dir_fd, _encode(path), AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, 0, buffer), "statx", path)
    attributes, = struct.unpack_from("=Q", buffer, 8)
    known, = struct.unpack_from("=Q", buffer, 56)
    if not known & STATX_ATTR_MOUNT_ROOT:
        raise OSError(errno.ENOTSUP, "statx does not report mount roots on this kernel", os.fsdecode(path))
    if not attributes & STATX_ATTR_MOUNT_ROOT:
        return None
    filesystem = ctypes.create_string_buffer(_STATFS_SIZE)
    if dir_fd == AT_FDCWD:
        _check(_libc.statfs(_encode(path), filesystem), "statfs", path)
    else:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _check(_libc.fstatfs(fd, filesystem), "fstatfs", path)
        finally:
            os.close(fd)
    fs_type, = struct.unpack_from("=q", filesystem, 0)
    return fs_type & 0xFFFFFFFF


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


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    result = _libc.prctl(option, arg2, arg3, 0, 0)
    _check(result, f"prctl({option})")
    return result


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets, each a bit mask of capability numbers (64 bits)."""
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(
        effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF,
        effective >> 32, permitted >> 32, inheritable >> 32,
    )
    _check(_libc.capset(header, data), "capset")


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load_seccomp(program: bytes) -> None:
    """Install a classic-BPF seccomp filter (8-byte instructions in host order) on this thread.

    Needs no_new_privs or CAP_SYS_ADMIN; the filter is inherited across fork and execve.
    """
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, f"seccomp: a filter is a non-empty multiple of 8 bytes, not {len(program)}")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp filter")


def _syscall_number(table: dict[str, int], name: str) -> int:
    machine = os.uname().machine
    if machine not in table:
        raise OSError(errno.ENOSYS, f"{name}: unknown syscall number on {machine}")
    return table[machine]


def bpf_prog_load_cgroup_device(instructions: bytes, license: str = "Apache-2.0") -> int:
    """Load an eBPF cgroup device program (8-byte instructions in host order); returns its fd."""
    insns = ctypes.create_string_buffer(instructions, len(instructions))
    license_buffer = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(65536)
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size, log_buf.
    attr = bytearray(128)
    attr[0:4] = BPF_PROG_TYPE_CGROUP_DEVICE.to_bytes(4, sys.byteorder)
    attr[4:8] = (len(instructions) // 8).to_bytes(4, sys.byteorder)
    attr[8:16] = ctypes.addressof(insns).to_bytes(8, sys.byteorder)
    attr[16:24] = ctypes.addressof(license_buffer).to_bytes(8, sys.byteorder)
    attr[24:28] = (1).to_bytes(4, sys.byteorder)
    attr[28:32] = len(log).to_bytes(4, sys.byteorder)
    attr[32:40] = ctypes.addressof(log).to_bytes(8, sys.byteorder)
    raw = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = _libc.syscall(ctypes.c_long(_syscall_number(_SYS_BPF, "bpf")), ctypes.c_long(BPF_PROG_LOAD), raw, ctypes.c_long(len(attr)))
    if fd == -1:
        code = ctypes.get_errno()
        verifier = log.value.decode(errors="replace").strip().splitlines()
        detail = f" (verifier: {verifier[-1]})" if verifier else ""
        raise OSError(code, f"bpf prog load: {os.strerror(code)}{detail}")
    return fd


def bpf_prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach a loaded program to a target (a cgroup directory fd for BPF_CGROUP_DEVICE)."""
    attr = bytearray(128)
    attr[0:4] = target_fd.to_bytes(4, sys.byteorder)
    attr[4:8] = prog_fd.to_bytes(4, sys.byteorder)
    attr[8:12] = attach_type.to_bytes(4, sys.byteorder)
    attr[12:16] = flags.to_bytes(4, sys.byteorder)
    raw = (ctypes.c_char * len(attr)).from_buffer(attr)
    number = ctypes.c_long(_syscall_number(_SYS_BPF, "bpf"))
    _check(_libc.syscall(number, ctypes.c_long(BPF_PROG_ATTACH), raw, ctypes.c_long(len(attr))), "bpf prog attach")


def mount_setattr(path: str | os.PathLike, attr_set: int, attr_clr: int = 0, recursive: bool = True) -> None:
    """Change the flags of the mount at `path` (and every mount below it when `recursive`)."""
    # struct mount_attr: attr_set, attr_clr, propagation, userns_fd (4 x u64).
    attr = (ctypes.c_uint64 * 4)(attr_set, attr_clr, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    result = _libc.syscall(
        ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_long(AT_FDCWD), _encode(path), ctypes.c_long(flags), attr,
        ctypes.c_long(ctypes.sizeof(attr)),
    )
    _check(result, f"mount_setattr {os.fsdecode(path)}", path)


def mount_configured(
    fstype: str, target: str | os.PathLike, settings: list[tuple[str, str | None]], attr_flags: int = 0
) -> None:
    """Mount a new `fstype` at `target` configured key by key (fsopen, fsconfig, fsmount, move_mount).

    Each (key, value) is one fsconfig call: a string, or a flag when value is None. Unlike mount(2),
    there is no one-page limit on all options together: overlay's repeated "lowerdir+" (Linux 6.8)
    stacks more layers than one mount data page can name.
    """
    fs_fd = _libc.syscall(ctypes.c_long(_SYS_FSOPEN), _encode(fstype), ctypes.c_long(FSOPEN_CLOEXEC))
    _check(fs_fd, f"fsopen {fstype}")
    try:
        for key, value in settings:
            command = FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING
            result = _libc.syscall(
                ctypes.c_long(_SYS_FSCONFIG), ctypes.c_long(fs_fd), ctypes.c_long(command), _encode(key),
                _encode(value), ctypes.c_long(0),
            )
            _check(result, f"fsconfig {fstype} {key}")
        result = _libc.syscall(
            ctypes.c_long(_SYS_FSCONFIG), ctypes.c_long(fs_fd), ctypes.c_long(FSCONFIG_CMD_CREATE), None, None,
            ctypes.c_long(0),
        )
        _check(result, f"fsconfig {fstype} create")
        mount_fd = _libc.syscall(
            ctypes.c_long(_SYS_FSMOUNT), ctypes.c_long(fs_fd), ctypes.c_long(FSMOUNT_CLOEXEC), ctypes.c_long(attr_flags)
        )
        _check(mount_fd, f"fsmount {fstype}")
    finally:
        os.close(fs_fd)
    try:
        result = _libc.syscall(
            ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_long(mount_fd), b"", ctypes.c_long(AT_FDCWD), _encode(target),
            ctypes.c_long(MOVE_MOUNT_F_EMPTY_PATH),
        )
        _check(result, f"move_mount {os.fsdecode(target)}", target)
    finally:
        os.close(mount_fd)


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
