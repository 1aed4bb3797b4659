"""Docker-format seccomp profiles as frozen data: parsed from JSON, narrowed by a container's caps, arch and kernel."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class ArgRule:
    """A test of syscall argument `index`; for SCMP_CMP_MASKED_EQ `value` is the mask and `value_two` the datum."""

    index: int
    value: int
    value_two: int = 0
    op: str = "SCMP_CMP_EQ"


@dataclass(frozen=True)
class Condition:
    """Docker's includes/excludes: capability names, architecture names (amd64, arm64, ...), a (major, minor) kernel."""

    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True)
class SyscallRule:
    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[ArgRule, ...] = ()
    includes: Condition = Condition()
    excludes: Condition = Condition()


@dataclass(frozen=True)
class Profile:
    default_action: str
    default_errno: int | None = None
    # (native SCMP_ARCH_..., the SCMP_ARCH_... of its compat ABIs) pairs; only the host's own entry is used.
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Docker's older form: architectures added to every filter whatever the host.
    architectures: tuple[str, ...] = ()
    syscalls: tuple[SyscallRule, ...] = ()
    # SECCOMP_FILTER_FLAG_... names; parse_profile refuses them all (see FILTER_FLAGS).
    flags: tuple[str, ...] = ()


# Docker's action names; SCMP_ACT_ERRNO and SCMP_ACT_TRACE carry errnoRet (the errno, or what a tracer sees).
ACTIONS = (
    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_LOG", "SCMP_ACT_TRAP", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRACE",
)
DATA_ACTIONS = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
# The architectures libseccomp 2.5 knows.
SCMP_ARCHES = tuple(
    f"SCMP_ARCH_{name}"
    for name in (
        "X86", "X86_64", "X32", "ARM", "AARCH64", "MIPS", "MIPS64", "MIPS64N32", "MIPSEL", "MIPSEL64",
        "MIPSEL64N32", "PPC", "PPC64", "PPC64LE", "S390", "S390X", "PARISC", "PARISC64", "RISCV64",
    )
)
# Names includes/excludes.arches may use: Go's GOARCH values and moby's libseccomp-style names (its misspelt one too).
CONDITION_ARCHES = frozenset({
    "386", "x86", "amd64", "x32", "arm", "arm64", "mips", "mipsle", "mipsel", "mips64", "mips64le", "mips64n32",
    "mipsel64", "mipsel64n32", "mips3l64n32", "mips64p32", "mips64p32le", "ppc", "ppc64", "ppc64le", "s390",
    "s390x", "riscv64", "parisc", "parisc64", "loong64",
})
# The filter flags runc knows; none can be honoured: the exported BPF carries no flags and prctl takes none.
FILTER_FLAGS = (
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_NEW_LISTENER", "SECCOMP_FILTER_FLAG_TSYNC_ESRCH", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
)
_LITTLE = sys.byteorder == "little"
_MIPS64_LE = (frozenset({"mips64le", "mipsel64"}), "SCMP_ARCH_MIPSEL64")
_MIPS_LE = (frozenset({"mipsle", "mipsel"}), "SCMP_ARCH_MIPSEL")
# uname -m → (the names includes/excludes.arches match, libseccomp's native architecture).
MACHINES: dict[str, tuple[frozenset[str], str]] = {
    "x86_64": (frozenset({"amd64"}), "SCMP_ARCH_X86_64"),
    "aarch64": (frozenset({"arm64"}), "SCMP_ARCH_AARCH64"),
    "arm64": (frozenset({"arm64"}), "SCMP_ARCH_AARCH64"),
    **{m: (frozenset({"386", "x86"}), "SCMP_ARCH_X86") for m in ("i386", "i486", "i586", "i686")},
    **{m: (frozenset({"arm"}), "SCMP_ARCH_ARM") for m in ("armv6l", "armv7l", "armv8l")},
    "ppc64le": (frozenset({"ppc64le"}), "SCMP_ARCH_PPC64LE"),
    "ppc64": (frozenset({"ppc64"}), "SCMP_ARCH_PPC64"),
    "ppc": (frozenset({"ppc"}), "SCMP_ARCH_PPC"),
    "s390x": (frozenset({"s390x"}), "SCMP_ARCH_S390X"),
    "s390": (frozenset({"s390"}), "SCMP_ARCH_S390"),
    "riscv64": (frozenset({"riscv64"}), "SCMP_ARCH_RISCV64"),
    # uname says mips64 (or mips) for both byte orders; this host's is the one meant.
    "mips64": _MIPS64_LE if _LITTLE else (frozenset({"mips64"}), "SCMP_ARCH_MIPS64"),
    "mips": _MIPS_LE if _LITTLE else (frozenset({"mips"}), "SCMP_ARCH_MIPS"),
}
MAX_ARGUMENTS = 6
# errnoRet fills the 16 data bits of the filter's return value.
MAX_RET_DATA = 0xFFFF
MAX_ARG_VALUE = 2**64 - 1


def parse_kernel_release(release: str) -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", release)
    if not found:
        raise InvalidArgument(f'kernel release "{release}" does not start with MAJOR.MINOR')
    return int(found[1]), int(found[2])


HOST_MACHINE = os.uname().machine
HOST_KERNEL = parse_kernel_release(os.uname().release)


# ---- parsing -------------------------------------------------------------------------------------------------------


def _fail(path: str, problem: str) -> NoReturn:
    raise InvalidArgument(f"seccomp profile: {path} {problem}")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object"}[type(value)]


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _get(raw: dict, key: str, where: str, kind: type, kind_name: str) -> Any:
    """raw[key] checked to be `kind`; None when absent or null, as Docker reads them."""
    value = raw.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        _fail(_join(where, key), f"is {_describe(value)}, not {kind_name}")
    return value


def _strings(raw: dict, key: str, where: str) -> tuple[str, ...]:
    items = _get(raw, key, where, list, "a list of strings") or []
    for position, item in enumerate(items):
        if not isinstance(item, str) or not item:
            problem = "is empty" if item == "" else f"is {_describe(item)}, not a string"
            _fail(f"{_join(where, key)}[{position}]", problem)
    return tuple(items)


def _objects(raw: dict, key: str, where: str) -> list[tuple[str, dict]]:
    items = _get(raw, key, where, list, "a list of objects") or []
    paths = [f"{_join(where, key)}[{position}]" for position in range(len(items))]
    for path, item in zip(paths, items):
        if not isinstance(item, dict):
            _fail(path, f"is {_describe(item)}, not an object")
    return list(zip(paths, items))


def _number(raw: dict, key: str, where: str, highest: int, default: int | None = None) -> int | None:
    value = _get(raw, key, where, int, "a whole number")
    if value is not None and not 0 <= value <= highest:
        _fail(_join(where, key), f"{value} is outside 0-{highest}")
    return default if value is None else value


def _action(raw: dict, key: str, where: str) -> str:
    action = _get(raw, key, where, str, "a string")
    path = _join(where, key)
    if action is None:
        _fail(path, f"is missing (use {', '.join(ACTIONS)})")
    if action == "SCMP_ACT_NOTIFY":
        _fail(path, '"SCMP_ACT_NOTIFY" is not supported: mydocker runs no seccomp notification listener')
    if action not in ACTIONS:
        _fail(path, f'"{action}" is not an action (use {", ".join(ACTIONS)})')
    return action


def _errno_ret(raw: dict, key: str, where: str, action: str) -> int | None:
    value = _number(raw, key, where, MAX_RET_DATA)
    if value is not None and action not in DATA_ACTIONS:
        _fail(_join(where, key), f"is only for SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not {action}")
    return value


def _scmp_arch(name: str, path: str) -> str:
    if name not in SCMP_ARCHES:
        _fail(path, f'"{name}" is not an architecture libseccomp knows (use {", ".join(SCMP_ARCHES)})')
    return name


def _arch_map(raw: dict) -> tuple[tuple[str, tuple[str, ...]], ...]:
    entries = []
    for path, entry in _objects(raw, "archMap", ""):
        native = _get(entry, "architecture", path, str, "a string")
        if native is None:
            _fail(f"{path}.architecture", "is missing")
        subs = _strings(entry, "subArchitectures", path)
        subs = tuple(_scmp_arch(sub, f"{path}.subArchitectures[{i}]") for i, sub in enumerate(subs))
        entries.append((_scmp_arch(native, f"{path}.architecture"), subs))
    return tuple(entries)


def _condition(raw: dict, key: str, where: str) -> Condition:
    path = _join(where, key)
    entry = _get(raw, key, where, dict, "an object") or {}
    caps = _strings(entry, "caps", path)
    for position, cap in enumerate(caps):
        if not re.fullmatch(r"CAP_[A-Z_]+", cap):
            _fail(f"{path}.caps[{position}]", f'"{cap}" is not a capability name (like CAP_SYS_ADMIN)')
    arches = _strings(entry, "arches", path)
    for position, arch in enumerate(arches):
        if arch not in CONDITION_ARCHES:
            known = ", ".join(sorted(CONDITION_ARCHES))
            _fail(f"{path}.arches[{position}]", f'"{arch}" is not an architecture name (use {known})')
    kernel = _get(entry, "minKernel", path, str, "a string")
    found = re.fullmatch(r"(\d+)\.(\d+)", kernel or "0.0")
    if not found:
        _fail(f"{path}.minKernel", f'"{kernel}" is not a kernel version (use "X.Y", like "4.8")')
    return Condition(caps, arches, (int(found[1]), int(found[2])) if kernel else None)


def _arg(raw: dict, path: str) -> ArgRule:
    index = _number(raw, "index", path, MAX_ARGUMENTS - 1)
    if index is None:
        _fail(f"{path}.index", "is missing (use 0-5)")
    op = _get(raw, "op", path, str, "a string")
    if op not in OPS:
        _fail(f"{path}.op", f'"{op}" is not an operator (use {", ".join(OPS)})' if op else "is missing")
    value = _number(raw, "value", path, MAX_ARG_VALUE, default=0)
    value_two = _number(raw, "valueTwo", path, MAX_ARG_VALUE, default=0)
    return ArgRule(index, value, value_two, op)


def _rule(raw: dict, where: str) -> SyscallRule:
    names = _strings(raw, "names", where)
    name = _get(raw, "name", where, str, "a string")
    if name and names:
        _fail(where, 'gives both "name" and "names": use one')
    names = (name,) if name else names
    if not names:
        _fail(f"{where}.names", "is missing or empty: name at least one syscall")
    action = _action(raw, "action", where)
    return SyscallRule(
        names=names,
        action=action,
        errno_ret=_errno_ret(raw, "errnoRet", where, action),
        args=tuple(_arg(entry, path) for path, entry in _objects(raw, "args", where)),
        includes=_condition(raw, "includes", where),
        excludes=_condition(raw, "excludes", where),
    )


def _refuse_unsupported(raw: dict) -> None:
    if _get(raw, "listenerPath", "", str, "a string"):
        _fail("listenerPath", "is not supported: mydocker runs no seccomp notification listener")
    for position, flag in enumerate(_strings(raw, "flags", "")):
        if flag not in FILTER_FLAGS:
            _fail(f"flags[{position}]", f'"{flag}" is not a seccomp filter flag')
        _fail(f"flags[{position}]", f'"{flag}" is not supported: filters are installed with prctl, which takes no flags')


def parse_profile(text: str) -> Profile:
    """A Docker seccomp profile (JSON) as a Profile; InvalidArgument names the first thing wrong and where."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise InvalidArgument(f"seccomp profile is not valid JSON: {where}: {error.msg}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"seccomp profile is {_describe(raw)}, not an object")
    _refuse_unsupported(raw)
    arch_map = _arch_map(raw)
    listed = _strings(raw, "architectures", "")
    architectures = tuple(_scmp_arch(arch, f"architectures[{i}]") for i, arch in enumerate(listed))
    if arch_map and architectures:
        raise InvalidArgument("seccomp profile: give either architectures or archMap, not both")
    default_action = _action(raw, "defaultAction", "")
    return Profile(
        default_action=default_action,
        default_errno=_errno_ret(raw, "defaultErrnoRet", "", default_action),
        arch_map=arch_map,
        architectures=architectures,
        syscalls=tuple(_rule(entry, path) for path, entry in _objects(raw, "syscalls", "")),
        flags=(),
    )


# ---- which rules apply ---------------------------------------------------------------------------------------------


def machine_arch_names(machine: str) -> frozenset[str]:
    return MACHINES[machine][0] if machine in MACHINES else frozenset({machine})


def native_scmp_arch(machine: str) -> str:
    if machine not in MACHINES:
        raise InvalidArgument(f"seccomp: libseccomp has no architecture for machine {machine}")
    return MACHINES[machine][1]


def _applies(rule: SyscallRule, caps: frozenset[str], arch_names: frozenset[str], kernel: tuple[int, int]) -> bool:
    """moby's test: every excludes condition that matches drops the rule, every includes condition must match."""
    includes, excludes = rule.includes, rule.excludes
    if arch_names.intersection(excludes.arches) or caps.intersection(excludes.caps):
        return False
    if excludes.min_kernel is not None and kernel >= excludes.min_kernel:
        return False
    if includes.arches and not arch_names.intersection(includes.arches):
        return False
    if not caps.issuperset(includes.caps):
        return False
    return includes.min_kernel is None or kernel >= includes.min_kernel


def effective_rules(
    profile: Profile, caps: frozenset[str], machine: str, kernel: tuple[int, int]
) -> tuple[SyscallRule, ...]:
    """The rules that apply, in the profile's order; `caps` are names like CAP_SYS_ADMIN, `machine` is uname -m."""
    arch_names = machine_arch_names(machine)
    return tuple(rule for rule in profile.syscalls if _applies(rule, caps, arch_names, kernel))


def filter_arches(profile: Profile, machine: str) -> tuple[str, ...]:
    """SCMP_ARCH_ names the filter covers: the native one first, then its archMap entry's, or the legacy list."""
    native = native_scmp_arch(machine)
    if profile.architectures:
        return (native, *(arch for arch in dict.fromkeys(profile.architectures) if arch != native))
    for arch, subs in profile.arch_map:
        if arch == native:
            return (native, *(sub for sub in dict.fromkeys(subs) if sub != native))
    return (native,)

