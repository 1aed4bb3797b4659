"""Device access of containers: Docker's default and --device rules, as v1 devices.* writes or a v2 eBPF program."""

from __future__ import annotations

import os
import posixpath
import stat
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.common import linux
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.security import DeviceMapping
from services.executor.cgroups import Cgroup, CgroupV2
from services.executor.plan import DeviceSpec

WILDCARD = -1
ALL_ACCESS = "rwm"
# The kernel keeps majors in 12 bits and minors in 20; the eBPF program compares against a signed 32-bit immediate.
MAX_DEVICE_NUMBER = 0x7FFFFFFF
DEVICE_KINDS = ("a", "c", "b")


def _is_permissions(text: str) -> bool:
    return bool(text) and not set(text) - set(ALL_ACCESS) and len(set(text)) == len(text)


def _canonical_permissions(text: str) -> str:
    return "".join(letter for letter in ALL_ACCESS if letter in text)


@dataclass(frozen=True)
class DeviceRule:
    """One device cgroup rule: `kind` "a" (all), "c" or "b"; major/minor WILDCARD (-1) for "*"; access within "rwm"."""

    kind: str
    major: int
    minor: int
    access: str
    allow: bool = True

    def __post_init__(self) -> None:
        if self.kind not in DEVICE_KINDS:
            raise InvalidArgument(f'device rule type "{self.kind}" is unknown: use "a", "c" or "b"')
        for name, number in (("major", self.major), ("minor", self.minor)):
            if not WILDCARD <= number <= MAX_DEVICE_NUMBER:
                raise InvalidArgument(
                    f"device rule {name} {number} is out of range: use 0-{MAX_DEVICE_NUMBER} or -1 for *"
                )
        if not _is_permissions(self.access):
            raise InvalidArgument(
                f'device rule access "{self.access}" is invalid: use one or more of r, w, m, each once'
            )
        # One spelling per access set, so equal rules compare equal ("wr" is "rw").
        object.__setattr__(self, "access", _canonical_permissions(self.access))
        # The v1 kernel ignores numbers and access after "a": a narrower "a" rule would silently mean "everything".
        if self.kind == "a" and (self.major, self.minor, self.access) != (WILDCARD, WILDCARD, ALL_ACCESS):
            raise InvalidArgument(
                'an "a" device rule always means "a *:* rwm": use type "c" or "b" for a narrower rule'
            )


ALLOW_ALL = DeviceRule("a", WILDCARD, WILDCARD, ALL_ACCESS, allow=True)
DENY_ALL = DeviceRule("a", WILDCARD, WILDCARD, ALL_ACCESS, allow=False)

# runc's specconv.AllowedDevices plus Docker's own default spec rules (/dev/console 5:1 comes from Docker's).
# The mknod-anything rules let images create nodes (e.g. during package installs) without being able to open them.
DEFAULT_ALLOWED: tuple[DeviceRule, ...] = (
    DeviceRule("c", WILDCARD, WILDCARD, "m"),
    DeviceRule("b", WILDCARD, WILDCARD, "m"),
    DeviceRule("c", 1, 3, ALL_ACCESS),  # /dev/null
    DeviceRule("c", 1, 8, ALL_ACCESS),  # /dev/random
    DeviceRule("c", 1, 7, ALL_ACCESS),  # /dev/full
    DeviceRule("c", 5, 0, ALL_ACCESS),  # /dev/tty
    DeviceRule("c", 1, 5, ALL_ACCESS),  # /dev/zero
    DeviceRule("c", 1, 9, ALL_ACCESS),  # /dev/urandom
    DeviceRule("c", 5, 1, ALL_ACCESS),  # /dev/console
    DeviceRule("c", 136, WILDCARD, ALL_ACCESS),  # /dev/pts/*
    DeviceRule("c", 5, 2, ALL_ACCESS),  # /dev/ptmx
    DeviceRule("c", 10, 200, ALL_ACCESS),  # /dev/net/tun
)


def _number(value: int) -> str:
    return "*" if value == WILDCARD else str(value)


def format_v1(rule: DeviceRule) -> str:
    """The rule in devices.allow / devices.deny syntax: "c 1:3 rwm", "a *:* rwm", "c 136:* rwm"."""
    return f"{rule.kind} {_number(rule.major)}:{_number(rule.minor)} {rule.access}"


def _allow_rules(rules: Iterable[DeviceRule]) -> list[DeviceRule]:
    """The allow rules; a leading deny-all is dropped since every container starts from deny-all anyway."""
    remaining = list(rules)
    if remaining and remaining[0] == DENY_ALL:
        remaining = remaining[1:]
    for rule in remaining:
        if not rule.allow:
            raise InvalidArgument(
                f'device rule "{format_v1(rule)}" denies access: only allow rules are supported, access starts denied'
            )
    return remaining


# ---------------------------------------------------------------------------------------------------------------
# docker run --device HOST[:CONTAINER[:PERMISSIONS]]


def _stat_host(host_path: str) -> os.stat_result:
    # Follows symlinks like Docker, so /dev/disk/by-id/... names the device itself.
    try:
        return os.stat(host_path)
    except FileNotFoundError:
        raise InvalidArgument(f"--device {host_path}: no such file on this host") from None
    except OSError as err:
        raise InvalidArgument(f"--device {host_path}: cannot stat it ({err.strerror})") from None


def _node_kind(mode: int) -> str | None:
    if stat.S_ISCHR(mode):
        return "c"
    if stat.S_ISBLK(mode):
        return "b"
    return None


def _device_from_stat(
    info: os.stat_result, kind: str, container_path: str, permissions: str
) -> tuple[DeviceSpec, DeviceRule]:
    major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
    spec = DeviceSpec(container_path, major, minor, stat.S_IMODE(info.st_mode), kind, info.st_uid, info.st_gid)
    return spec, DeviceRule(kind, major, minor, permissions)


def resolve_device(mapping: DeviceMapping) -> tuple[DeviceSpec, DeviceRule]:
    """The node init creates for one host device node, and the rule allowing it."""
    info = _stat_host(mapping.host_path)
    kind = _node_kind(info.st_mode)
    if kind is None:
        raise InvalidArgument(
            f"--device {mapping.host_path}: not a character or block device; name a device node such as /dev/sda"
        )
    return _device_from_stat(info, kind, mapping.container_path, mapping.permissions)


def resolve_devices(mapping: DeviceMapping) -> list[tuple[DeviceSpec, DeviceRule]]:
    """Like resolve_device; for a directory, every device below it, at its relative path under the container path."""
    info = _stat_host(mapping.host_path)
    if not stat.S_ISDIR(info.st_mode):
        return [resolve_device(mapping)]
    top = os.path.realpath(mapping.host_path)
    found: list[tuple[DeviceSpec, DeviceRule]] = []
    # followlinks=False: a symlinked directory could loop; symlinks to device nodes are still followed below.
    for directory, subdirectories, names in os.walk(top, followlinks=False):
        subdirectories.sort()
        for name in sorted(names):
            host_path = os.path.join(directory, name)
            try:
                entry = os.stat(host_path)
            except OSError:
                # A dangling symlink or a node removed meanwhile (udev): Docker skips those too.
                continue
            kind = _node_kind(entry.st_mode)
            if kind is None:
                continue
            container_path = posixpath.join(mapping.container_path, os.path.relpath(host_path, top))
            found.append(_device_from_stat(entry, kind, container_path, mapping.permissions))
    if not found:
        raise InvalidArgument(f"--device {mapping.host_path}: the directory holds no character or block devices")
    return found


# ---------------------------------------------------------------------------------------------------------------
# --privileged: every device of the host


# What runc's devices.HostDevices leaves out: the container mounts its own pts, shm, mqueue and fd; console is its
# own pty; the rest are LXC/LXD and udev bookkeeping.
HOST_DEVICES_SKIPPED_DIRS = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
HOST_DEVICES_SKIPPED_NAMES = frozenset({"console"})


def host_devices(dev_root: Path = Path("/dev")) -> list[DeviceSpec]:
    """Every character and block node below `dev_root` as runc finds them (symlinks and fifos skipped), under /dev."""
    found: list[DeviceSpec] = []
    _collect_host_devices(Path(dev_root), "/dev", found, top=True)
    return found


def _collect_host_devices(directory: Path, container_dir: str, found: list[DeviceSpec], top: bool = False) -> None:
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except FileNotFoundError:
        if top:
            raise
        return  # a directory udev removed meanwhile
    for entry in entries:
        container_path = posixpath.join(container_dir, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if entry.name not in HOST_DEVICES_SKIPPED_DIRS:
                _collect_host_devices(Path(entry.path), container_path, found)
            continue
        if entry.name in HOST_DEVICES_SKIPPED_NAMES:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        kind = _node_kind(info.st_mode)
        if kind is None:
            continue
        found.append(
            DeviceSpec(
                container_path,
                os.major(info.st_rdev),
                os.minor(info.st_rdev),
                stat.S_IMODE(info.st_mode),
                kind,
                info.st_uid,
                info.st_gid,
            )
        )


# ---------------------------------------------------------------------------------------------------------------
# cgroup v1: the devices controller


def v1_writes(rules: Iterable[DeviceRule]) -> list[tuple[str, str]]:
    """(file, value) in order: a fresh cgroup inherits allow-all, so "a" in devices.deny first makes it deny-all."""
    return [("devices.deny", "a"), *(("devices.allow", format_v1(rule)) for rule in _allow_rules(rules))]


def apply_v1(devices_dir: Path, rules: Iterable[DeviceRule]) -> None:
    """Write v1_writes into a devices cgroup; call it before any process joins, since "a" resets what they can open."""
    for name, value in v1_writes(rules):
        target = Path(devices_dir) / name
        try:
            # One rule per write(2): the kernel parses each write as a single rule.
            with open(target, "w") as handle:
                handle.write(value)
        except OSError as err:
            raise FailedPrecondition(f'cannot write "{value}" to {target}: {err.strerror}') from None


# ---------------------------------------------------------------------------------------------------------------
# cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program, laid out like runc's devicefilter

# struct bpf_insn opcode parts (linux/bpf_common.h, linux/bpf.h).
BPF_LDX = 0x01
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_W = 0x00
BPF_MEM = 0x60
BPF_K = 0x00
BPF_X = 0x08
BPF_AND = 0x50
BPF_RSH = 0x70
BPF_MOV = 0xB0
BPF_JNE = 0x50
BPF_EXIT = 0x90

# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }: access_type = (access << 16) | type.
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
_DEV_TYPES = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_CTX_ACCESS_TYPE, _CTX_MAJOR, _CTX_MINOR = 0, 4, 8

# Registers: R0 the verdict, R1 the context (then scratch), R2..R5 the request's type, access, major and minor.
R0, R1, R2, R3, R4, R5 = range(6)
# Sentinel offset of a jump to the next rule's block, resolved when the block is complete.
_NEXT_BLOCK = None


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    # dst_reg:4, src_reg:4 are C bitfields: the low nibble holds dst on little-endian hosts, the high one on big-endian.
    registers = (dst << 4 | src) if sys.byteorder == "big" else (src << 4 | dst)
    return struct.pack("=BBhi", code, registers, off, imm)


def _prologue() -> list[bytes]:
    return [
        _insn(BPF_LDX | BPF_MEM | BPF_W, R2, R1, _CTX_ACCESS_TYPE),
        _insn(BPF_ALU | BPF_AND | BPF_K, R2, imm=0xFFFF),
        _insn(BPF_LDX | BPF_MEM | BPF_W, R3, R1, _CTX_ACCESS_TYPE),
        _insn(BPF_ALU | BPF_RSH | BPF_K, R3, imm=16),
        _insn(BPF_LDX | BPF_MEM | BPF_W, R4, R1, _CTX_MAJOR),
        _insn(BPF_LDX | BPF_MEM | BPF_W, R5, R1, _CTX_MINOR),
    ]


def _return(verdict: int) -> list[bytes]:
    return [_insn(BPF_ALU | BPF_MOV | BPF_K, R0, imm=verdict), _insn(BPF_JMP | BPF_EXIT)]


def _rule_block(rule: DeviceRule) -> list[bytes]:
    """Returns 1 when the request matches `rule`; every mismatch jumps to the first instruction after the block."""
    # (code, dst, src, off, imm) with off None for "next block", packed once the block's length is known.
    parts: list[tuple[int, int, int, int | None, int]] = [
        (BPF_JMP | BPF_JNE | BPF_K, R2, 0, _NEXT_BLOCK, _DEV_TYPES[rule.kind]),
    ]
    if rule.access != ALL_ACCESS:
        access = sum(_ACCESS_BITS[letter] for letter in rule.access)
        # The request's access must be a subset: (requested & allowed) != requested means something extra was asked.
        parts += [
            (BPF_ALU | BPF_MOV | BPF_X, R1, R3, 0, 0),
            (BPF_ALU | BPF_AND | BPF_K, R1, 0, 0, access),
            (BPF_JMP | BPF_JNE | BPF_X, R1, R3, _NEXT_BLOCK, 0),
        ]
    if rule.major != WILDCARD:
        parts.append((BPF_JMP | BPF_JNE | BPF_K, R4, 0, _NEXT_BLOCK, rule.major))
    if rule.minor != WILDCARD:
        parts.append((BPF_JMP | BPF_JNE | BPF_K, R5, 0, _NEXT_BLOCK, rule.minor))
    block_length = len(parts) + 2
    block = [
        _insn(code, dst, src, block_length - (index + 1) if off is _NEXT_BLOCK else off, imm)
        for index, (code, dst, src, off, imm) in enumerate(parts)
    ]
    return block + _return(1)


def device_program(rules: Iterable[DeviceRule]) -> bytes:
    """The eBPF instructions (host byte order) allowing exactly `rules`; everything else is denied."""
    allowed = _allow_rules(rules)
    instructions = _prologue()
    if ALLOW_ALL in allowed:
        # Blocks after an unconditional accept would be unreachable, and the verifier refuses unreachable code.
        return b"".join(instructions + _return(1))
    for rule in allowed:
        instructions += _rule_block(rule)
    return b"".join(instructions + _return(0))


def attach_v2(cgroup_dir: Path, rules: Iterable[DeviceRule]) -> None:
    """Load the device program and attach it to the cgroup2 directory; the attachment lives as long as the cgroup.

    BPF_F_ALLOW_MULTI as runc does: ancestors' programs keep running too, and a request must pass all of them.
    Attaching again adds a second program rather than replacing the first.
    """
    program = device_program(rules)
    directory_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        program_fd = linux.bpf_prog_load_cgroup_device(program)
        try:
            linux.bpf_prog_attach(directory_fd, program_fd, linux.BPF_CGROUP_DEVICE, linux.BPF_F_ALLOW_MULTI)
        finally:
            os.close(program_fd)
    finally:
        os.close(directory_fd)


def apply(cgroup: Cgroup, rules: Iterable[DeviceRule]) -> None:
    """Restrict the container's cgroup to `rules`: an eBPF program on v2, the devices controller on v1."""
    if isinstance(cgroup, CgroupV2):
        attach_v2(cgroup.path(), rules)
        return
    if "devices" not in cgroup.paths:
        # Never run a container with every host device open to it because a hierarchy was left out.
        raise FailedPrecondition(
            "the container's v1 cgroup has no devices hierarchy: add \"devices\" to its controllers"
        )
    apply_v1(cgroup.dir("devices"), rules)
