"""Seccomp profiles compiled to classic BPF by libseccomp, plus runc's ENOSYS stub, cached as files per profile."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import hashlib
import json
import marshal
import os
import struct
import tempfile
import threading
from pathlib import Path

import pyseccomp

from services.common.errors import InvalidArgument
from services.executor.seccomp_profile import (
    HOST_KERNEL,
    HOST_MACHINE,
    OPS,
    SCMP_ARCHES,
    ArgRule,
    Condition,
    Profile,
    SyscallRule,
    effective_rules,
    filter_arches,
    native_scmp_arch,
    parse_profile,
)

# The profile's data and parsing live in seccomp_profile; callers get the whole API here.
__all__ = [
    "ArgRule", "Condition", "Profile", "SyscallRule", "parse_profile", "effective_rules", "filter_arches",
    "compile_programs", "enosys_program", "SeccompCache",
]

_FIXED_ACTIONS = {
    "SCMP_ACT_ALLOW": pyseccomp.ALLOW,
    "SCMP_ACT_LOG": pyseccomp.LOG,
    "SCMP_ACT_TRAP": pyseccomp.TRAP,
    # Docker's SCMP_ACT_KILL predates KILL_PROCESS and kills the thread only.
    "SCMP_ACT_KILL": pyseccomp.KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": pyseccomp.KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS,
}
_DATA_ACTIONS = {"SCMP_ACT_ERRNO": pyseccomp.ERRNO, "SCMP_ACT_TRACE": pyseccomp.TRACE}
# pyseccomp's constants carry the names' suffixes: SCMP_CMP_MASKED_EQ is MASKED_EQ, SCMP_ARCH_X86_64 is Arch.X86_64.
_OPS = {name: getattr(pyseccomp, name.removeprefix("SCMP_CMP_")) for name in OPS}
_ARCH_TOKENS = {name: getattr(pyseccomp.Arch, name.removeprefix("SCMP_ARCH_")) for name in SCMP_ARCHES}
# resolve_syscall's answers for a name libseccomp does not know (__NR_SCMP_ERROR, __NR_SCMP_UNDEF). Other negative
# numbers are pseudo syscalls: names of other arches (chown32: -10004) or multiplexed ones (recv via socketcall: -110).
_UNKNOWN_SYSCALL = (-1, -2)
# 2: programs compiled as binary trees (libseccomp's CTL_OPTIMIZE 2).
CACHE_FORMAT = 2
# libseccomp's binary-tree layout: the same verdicts, but a syscall is found in ~log2(n) comparisons. On
# attach the kernel (5.11+) runs the filter for every syscall number of every arch to cache constant
# verdicts, so this halves the install (~1.9 -> ~0.95 ms for Docker's default profile on this VM).
BINARY_TREE = 2

# ---- compiling -----------------------------------------------------------------------------------------------------


def action_value(action: str, data: int | None) -> int:
    if action in _DATA_ACTIONS:
        return _DATA_ACTIONS[action](errno.EPERM if data is None else data)
    return _FIXED_ACTIONS[action]


def _arg_groups(args: tuple[ArgRule, ...]) -> list[tuple[pyseccomp.Arg, ...]]:
    """runc's reading: args on distinct indexes must all hold (one rule); a repeated index makes each its own rule."""
    conditions = [pyseccomp.Arg(arg.index, _OPS[arg.op], arg.value, arg.value_two) for arg in args]
    if len({arg.index for arg in args}) < len(args):
        return [(condition,) for condition in conditions]
    return [tuple(conditions)]


def _syscall_number(name: str, strict_names: bool) -> int | None:
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if number in _UNKNOWN_SYSCALL:
        if strict_names:
            raise InvalidArgument(f'seccomp profile: syscall "{name}" is unknown to libseccomp')
        return None
    return number


def _add_rules(syscall_filter: pyseccomp.SyscallFilter, rule: SyscallRule, default: int, strict_names: bool) -> None:
    action = action_value(rule.action, rule.errno_ret)
    # libseccomp refuses a rule that repeats the default action; it would change nothing anyway.
    if action == default:
        return
    for name in rule.names:
        number = _syscall_number(name, strict_names)
        for conditions in _arg_groups(rule.args) if number is not None else ():
            try:
                syscall_filter.add_rule(action, number, *conditions)
            except OSError as error:
                refused = f'seccomp profile: libseccomp refuses the rule for "{name}": {error.strerror}'
                raise InvalidArgument(refused) from None


def _new_filter(profile: Profile, machine: str) -> pyseccomp.SyscallFilter:
    syscall_filter = pyseccomp.SyscallFilter(action_value(profile.default_action, profile.default_errno))
    syscall_filter.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, BINARY_TREE)
    arches = filter_arches(profile, machine)
    # seccomp_init starts with the host's arch: a filter for another machine must not cover it, and libseccomp
    # refuses to mix byte orders, so it goes before the others come.
    if pyseccomp.system_arch() not in {_ARCH_TOKENS[arch] for arch in arches}:
        syscall_filter.remove_arch(pyseccomp.Arch.NATIVE)
    for arch in arches:
        if syscall_filter.exist_arch(_ARCH_TOKENS[arch]):
            continue
        try:
            syscall_filter.add_arch(_ARCH_TOKENS[arch])
        except OSError as error:
            refused = f"seccomp profile: libseccomp cannot add {arch} to a filter for {machine}: {error.strerror}"
            raise InvalidArgument(refused) from None
    return syscall_filter


def _export(syscall_filter: pyseccomp.SyscallFilter) -> bytes:
    with open(os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC), "rb") as file:
        syscall_filter.export_bpf(file)
        file.seek(0)
        return file.read()


def compile_main_program(profile: Profile, rules: tuple[SyscallRule, ...], machine: str, strict_names: bool) -> bytes:
    syscall_filter = _new_filter(profile, machine)
    default = action_value(profile.default_action, profile.default_errno)
    for rule in rules:
        _add_rules(syscall_filter, rule, default, strict_names)
    return _export(syscall_filter)


# ---- the ENOSYS stub -----------------------------------------------------------------------------------------------

# Classic BPF opcodes (linux/filter.h) and the offsets of struct seccomp_data's nr and arch.
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGT_K = 0x25
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
X32_SYSCALL_BIT = 0x40000000
AUDIT_ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_TO_ALLOW = -1


def enosys_program(max_native_nr: int, machine: str) -> bytes:
    """BPF answering ENOSYS for native syscalls above `max_native_nr` and ALLOW (no opinion) for the rest."""
    program = [
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_ARCH),
        (BPF_JEQ_K, 0, _TO_ALLOW, AUDIT_ARCHES[machine]),
        (BPF_LD_W_ABS, 0, 0, SECCOMP_DATA_NR),
    ]
    if machine == "x86_64":
        # x32 syscalls share the arch value; their numbers (with this bit) are for the main filter to judge.
        program.append((BPF_JSET_K, _TO_ALLOW, 0, X32_SYSCALL_BIT))
    program += [
        (BPF_JGT_K, 0, _TO_ALLOW, max_native_nr),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.ENOSYS),
        (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    allow_at = len(program) - 1
    resolved = (
        (code, allow_at - at - 1 if jt == _TO_ALLOW else jt, allow_at - at - 1 if jf == _TO_ALLOW else jf, k)
        for at, (code, jt, jf, k) in enumerate(program)
    )
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in resolved)


def max_native_number(rules: tuple[SyscallRule, ...], machine: str) -> int:
    """The largest syscall number of `machine` the rules name; negative when they name none libseccomp knows there."""
    arch = _ARCH_TOKENS[native_scmp_arch(machine)]
    return max((pyseccomp.resolve_syscall(arch, name) for rule in rules for name in rule.names), default=-1)


def compile_programs(
    profile: Profile,
    caps: frozenset[str],
    machine: str = HOST_MACHINE,
    kernel: tuple[int, int] = HOST_KERNEL,
    *,
    strict_names: bool,
) -> list[bytes]:
    """The BPF programs to install, in order: the profile's, then (for an ERRNO default) the ENOSYS stub."""
    rules = effective_rules(profile, caps, machine, kernel)
    programs = [compile_main_program(profile, rules, machine, strict_names)]
    # Only an ERRNO default can be softened: the kernel keeps the strongest action over all filters (KILL and
    # TRAP outrank ERRNO) and, among ERRNOs, the newest filter's; ALLOW, LOG and TRACE defaults need no stub.
    highest = max_native_number(rules, machine) if machine in AUDIT_ARCHES else -1
    if profile.default_action == "SCMP_ACT_ERRNO" and highest >= 0:
        programs.append(enosys_program(highest, machine))
    return programs


# ---- the cache -----------------------------------------------------------------------------------------------------


@functools.cache
def libseccomp_version() -> str:
    """x.y.z of the loaded libseccomp, whose syscall tables shape the programs."""

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    library = ctypes.CDLL("libseccomp.so.2")
    library.seccomp_version.restype = ctypes.POINTER(Version)
    version = library.seccomp_version().contents
    return f"{version.major}.{version.minor}.{version.micro}"


def cache_key(profile: Profile, caps: frozenset[str], machine: str, kernel: tuple[int, int], strict_names: bool) -> str:
    # strict_names is part of it so a profile compiled leniently never spares a strict caller its error.
    canonical = {
        "format": CACHE_FORMAT,
        "libseccomp": libseccomp_version(),
        "profile": dataclasses.asdict(profile),
        "caps": sorted(caps),
        "machine": machine,
        "kernel": list(kernel),
        "strict_names": strict_names,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600; readers only ever see a complete file under the final name.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with open(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


class SeccompCache:
    """Compiled programs as files `<directory>/<sha256>.bpf` (marshal of a list of bytes), compiled once per key."""

    def __init__(self, directory: Path, machine: str = HOST_MACHINE, kernel: tuple[int, int] = HOST_KERNEL) -> None:
        self.directory = directory
        self.machine = machine
        self.kernel = kernel
        self._paths: dict[tuple[Profile, frozenset[str], bool], str] = {}
        self._lock = threading.Lock()

    def program_file(self, profile: Profile, caps: frozenset[str], strict_names: bool) -> str:
        remembered = (profile, frozenset(caps), strict_names)
        # One lock for lookups and compiles: two threads asking for a new profile compile it once.
        with self._lock:
            path = self._paths.get(remembered)
            if path is None:
                path = self._path_compiling_if_missing(profile, frozenset(caps), strict_names)
                self._paths[remembered] = path
            return path

    def _path_compiling_if_missing(self, profile: Profile, caps: frozenset[str], strict_names: bool) -> str:
        key = cache_key(profile, caps, self.machine, self.kernel, strict_names)
        path = self.directory / f"{key}.bpf"
        if not path.exists():
            programs = compile_programs(profile, caps, self.machine, self.kernel, strict_names=strict_names)
            _write_atomically(path, marshal.dumps(programs))
        return str(path)
