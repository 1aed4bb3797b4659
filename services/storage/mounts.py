"""The storage service's only syscalls into libc: mount(2), umount2(2), syncfs(2), raising OSError with the real errno."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

MNT_FORCE = 0x1
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.umount2.restype = ctypes.c_int


def _encode(value: str | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | None, target: str | os.PathLike, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2); raises OSError(errno) naming the target."""
    if _libc.mount(_encode(source), _encode(target), _encode(fstype), flags, _encode(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or ''} {source or ''} on {os.fsdecode(target)}: {os.strerror(err)}", os.fsdecode(target))


def umount2(target: str | os.PathLike, flags: int = 0) -> None:
    """umount2(2); raises OSError(errno) naming the target."""
    if _libc.umount2(_encode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {os.fsdecode(target)}: {os.strerror(err)}", os.fsdecode(target))


_libc.syncfs.argtypes = (ctypes.c_int,)
_libc.syncfs.restype = ctypes.c_int


def syncfs(path: str | os.PathLike) -> None:
    """syncfs(2) of the filesystem holding `path`: one flush for a whole extracted tree."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {os.fsdecode(path)}: {os.strerror(err)}", os.fsdecode(path))
    finally:
        os.close(fd)
