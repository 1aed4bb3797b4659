"""A container's security options as asked for (`--cap-add`, `--user`, `--ulimit`, ...): values, parsing and checks; pure."""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.errors import InvalidArgument

# Capability numbers of linux/capability.h; /proc/sys/kernel/cap_last_cap says how many a kernel has.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
)
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}
# Docker's default set (moby oci/caps/defaults.go): bit mask 0xa80425fb.
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
    "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)
ALL = "ALL"

# Docker's ulimit names (go-units) and their RLIMIT_* numbers, the same on every Linux architecture we run on.
RLIMITS = {
    "cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7, "memlock": 8,
    "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14, "rttime": 15,
}
RLIM_INFINITY = (1 << 64) - 1
OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000

# tmpfs mount options that are mount(2) flags; everything else is filesystem data (size=, mode=, ...).
TMPFS_FLAG_WORDS = frozenset(
    {"ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "sync", "async", "dirsync", "atime", "noatime",
     "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime"}
)
TMPFS_DATA_KEYS = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "huge", "mpol"})
DEVICE_PERMISSIONS = frozenset("rwm")


@dataclass(frozen=True)
class TmpfsMount:
    """`--tmpfs PATH[:OPTIONS]`: a fresh tmpfs at an absolute container path; OPTIONS as mount(8) spells them."""

    path: str
    options: str = ""


@dataclass(frozen=True)
class DeviceMapping:
    """`--device HOST[:CONTAINER[:PERMISSIONS]]`: a host device node made available inside, with "rwm" access letters."""

    host_path: str
    container_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class Ulimit:
    """`--ulimit NAME=SOFT[:HARD]`; RLIM_INFINITY for "unlimited" (-1)."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class SecurityOptions:
    """What the user asked for; empty means Docker's defaults (14 capabilities, default seccomp, masked /proc, ...)."""

    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    # No seccomp filter at all (`--security-opt seccomp=unconfined`).
    seccomp_unconfined: bool = False
    # A Docker-format seccomp profile's JSON text (`--security-opt seccomp=FILE`); empty means the default.
    seccomp_profile: str = ""
    no_new_privileges: bool = False
    # `--user`: "", "UID", "NAME", "UID:GID", "NAME:GROUP", resolved inside the container's own /etc files.
    user: str = ""
    group_add: tuple[str, ...] = ()
    read_only_rootfs: bool = False
    tmpfs: tuple[TmpfsMount, ...] = ()
    devices: tuple[DeviceMapping, ...] = ()
    ulimits: tuple[Ulimit, ...] = ()
    oom_score_adj: int = 0


# -- capabilities ------------------------------------------------------------------------------


def normalize_capability(name: str) -> str:
    """"sys_admin", "CAP_SYS_ADMIN" and "SYS_ADMIN" are all SYS_ADMIN; "all" is ALL; InvalidArgument otherwise."""
    upper = name.strip().upper()
    if upper.startswith("CAP_"):
        upper = upper[4:]
    if upper == ALL or upper in CAPABILITY_NUMBERS:
        return upper
    raise InvalidArgument(f'unknown capability "{name}": use a name such as NET_ADMIN or CAP_SYS_TIME, or ALL')


def effective_capabilities(
    cap_add: Iterable[str], cap_drop: Iterable[str], privileged: bool, available: Iterable[str] = CAPABILITIES
) -> tuple[str, ...]:
    """The container's capability names in number order, as Docker computes them (caps.TweakCapabilities).

    Privileged: every capability `available` (what the kernel and our own bounding set have). ALL in
    cap_add: everything available but `cap_drop`. Otherwise the default 14, minus `cap_drop` (ALL empties
    it), plus `cap_add`: a capability both dropped and added is added, as in Docker.
    """
    available = tuple(available)
    if privileged:
        return _in_number_order(available)
    adds = [normalize_capability(name) for name in cap_add]
    drops = [normalize_capability(name) for name in cap_drop]
    if ALL in adds:
        return _in_number_order(set(available) - set(drops))
    caps = set() if ALL in drops else set(DEFAULT_CAPABILITIES) - set(drops)
    caps.update(adds)
    missing = sorted(set(adds) - set(available), key=CAPABILITY_NUMBERS.__getitem__)
    if missing:
        raise InvalidArgument(
            f"capability {', '.join(missing)} is not available on this host (kernel or the services' own bounding set)"
        )
    return _in_number_order(caps)


def _in_number_order(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names), key=CAPABILITY_NUMBERS.__getitem__))


def capability_mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITY_NUMBERS[name]
    return mask


def capability_names(mask: int) -> tuple[str, ...]:
    return tuple(name for number, name in enumerate(CAPABILITIES) if mask >> number & 1)


# -- user, ulimit, tmpfs, device -----------------------------------------------------------------


def check_user(user: str) -> None:
    """USER or USER:GROUP, each a name or a number; the names are resolved inside the container."""
    if not user:
        return
    name, sep, group = user.partition(":")
    if not name or (sep and not group) or ":" in group:
        raise InvalidArgument(f'invalid user "{user}": use UID, NAME, UID:GID or NAME:GROUP')
    for part in (name, group):
        if part and (part.startswith("-") or any(c.isspace() or c in "\0/" for c in part)):
            raise InvalidArgument(f'invalid user "{user}": "{part}" is not a user or group name or number')


def check_group(group: str) -> None:
    if not group or group.startswith("-") or any(c.isspace() or c in "\0:/" for c in group):
        raise InvalidArgument(f'invalid group "{group}" for --group-add: use a group name or number')


def _rlimit_value(text: str, option: str) -> int:
    if text in ("-1", "unlimited"):
        return RLIM_INFINITY
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f'invalid --ulimit "{option}": "{text}" is not a number (or -1 for unlimited)') from None
    if value < 0:
        raise InvalidArgument(f'invalid --ulimit "{option}": "{text}" is negative (use -1 for unlimited)')
    return value


def parse_ulimit(option: str) -> Ulimit:
    """NAME=SOFT[:HARD], as docker run --ulimit; HARD defaults to SOFT."""
    name, sep, values = option.partition("=")
    if not sep or not values:
        raise InvalidArgument(f'invalid --ulimit "{option}": use NAME=SOFT[:HARD], e.g. nofile=1024:2048')
    soft_text, _, hard_text = values.partition(":")
    ulimit = Ulimit(name.strip(), _rlimit_value(soft_text, option), _rlimit_value(hard_text or soft_text, option))
    check_ulimit(ulimit)
    return ulimit


def check_ulimit(ulimit: Ulimit) -> None:
    if ulimit.name not in RLIMITS:
        raise InvalidArgument(f'unknown ulimit "{ulimit.name}": use one of {", ".join(sorted(RLIMITS))}')
    if not 0 <= ulimit.soft <= RLIM_INFINITY or not 0 <= ulimit.hard <= RLIM_INFINITY:
        raise InvalidArgument(f'ulimit {ulimit.name}: values must be 0 to 2^64-1 (or unlimited)')
    if ulimit.soft > ulimit.hard:
        raise InvalidArgument(f"ulimit {ulimit.name}: soft limit {ulimit.soft} is above hard limit {ulimit.hard}")


def _check_container_path(path: str, what: str) -> None:
    if not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f'{what} path "{path}" must be absolute inside the container')
    if posixpath.normpath(path) == "/":
        raise InvalidArgument(f'{what} cannot be mounted on "/"')


def parse_tmpfs(option: str) -> TmpfsMount:
    """PATH[:OPTIONS], as docker run --tmpfs."""
    path, _, options = option.partition(":")
    mount = TmpfsMount(path, options)
    check_tmpfs(mount)
    return mount


def check_tmpfs(mount: TmpfsMount) -> None:
    _check_container_path(mount.path, "--tmpfs")
    for word in filter(None, mount.options.split(",")):
        key = word.partition("=")[0]
        if word not in TMPFS_FLAG_WORDS and key not in TMPFS_DATA_KEYS:
            raise InvalidArgument(f'--tmpfs {mount.path}: unknown option "{word}" (use size=, mode=, uid=, gid=, ro, noexec, ...)')


def _is_permissions(text: str) -> bool:
    return bool(text) and set(text) <= DEVICE_PERMISSIONS and len(set(text)) == len(text)


def _canonical_permissions(text: str) -> str:
    return "".join(letter for letter in "rwm" if letter in text)


def parse_device(text: str) -> DeviceMapping:
    """HOST[:CONTAINER[:PERMISSIONS]], as docker run --device; a lone second field of r/w/m letters is PERMISSIONS."""
    usage = "use HOST[:CONTAINER[:PERMISSIONS]], e.g. /dev/sda:/dev/xvda:rwm"
    if "\0" in text:
        raise InvalidArgument(f"invalid --device {text!r}: it contains a NUL byte; {usage}")
    fields = text.split(":")
    if len(fields) > 3:
        raise InvalidArgument(f'invalid --device "{text}": too many ":"; {usage}')
    host_path, container_path, permissions = fields[0], fields[0], "rwm"
    if not posixpath.isabs(host_path):
        raise InvalidArgument(f'invalid --device "{text}": host path "{host_path}" is not absolute; {usage}')
    if len(fields) == 2:
        second = fields[1]
        if _is_permissions(second):
            permissions = second
        elif posixpath.isabs(second):
            container_path = second
        else:
            raise InvalidArgument(
                f'invalid --device "{text}": "{second}" is neither an absolute container path nor permissions of r, w, m'
            )
    elif len(fields) == 3:
        container_path, permissions = fields[1], fields[2]
        if not posixpath.isabs(container_path):
            raise InvalidArgument(f'invalid --device "{text}": container path "{container_path}" is not absolute; {usage}')
        if not permissions:
            raise InvalidArgument(f'invalid --device "{text}": empty permissions; give one or more of r, w, m')
        if not _is_permissions(permissions):
            raise InvalidArgument(
                f'invalid --device "{text}": permissions "{permissions}" may only use r, w and m, each once'
            )
    mapping = DeviceMapping(
        posixpath.normpath(host_path), posixpath.normpath(container_path), _canonical_permissions(permissions)
    )
    check_device(mapping)
    return mapping


def check_device(mapping: DeviceMapping) -> None:
    if not posixpath.isabs(mapping.host_path) or "\0" in mapping.host_path:
        raise InvalidArgument(f'--device host path "{mapping.host_path}" must be absolute')
    _check_container_path(mapping.container_path, "--device")
    if not _is_permissions(mapping.permissions):
        raise InvalidArgument(f'--device {mapping.host_path}: permissions "{mapping.permissions}" must be letters of "rwm"')


def check_options(options: SecurityOptions) -> None:
    """Every check that needs nothing but the options: InvalidArgument for the first problem."""
    for name in (*options.cap_add, *options.cap_drop):
        normalize_capability(name)
    if options.seccomp_unconfined and options.seccomp_profile:
        raise InvalidArgument("give either seccomp=unconfined or a seccomp profile, not both")
    check_user(options.user)
    for group in options.group_add:
        check_group(group)
    paths: set[str] = set()
    for mount in options.tmpfs:
        check_tmpfs(mount)
        normalized = posixpath.normpath(mount.path)
        if normalized in paths:
            raise InvalidArgument(f'--tmpfs {mount.path} is given twice')
        paths.add(normalized)
    for mapping in options.devices:
        check_device(mapping)
    names: set[str] = set()
    for ulimit in options.ulimits:
        check_ulimit(ulimit)
        if ulimit.name in names:
            raise InvalidArgument(f"--ulimit {ulimit.name} is given twice")
        names.add(ulimit.name)
    if not OOM_SCORE_ADJ_MIN <= options.oom_score_adj <= OOM_SCORE_ADJ_MAX:
        raise InvalidArgument(f"--oom-score-adj {options.oom_score_adj} is outside -1000..1000")


# -- storage as plain dicts (a JSON column or file) --------------------------------------------------


def security_to_dict(options: SecurityOptions) -> dict:
    """Only the fields that differ from the defaults: a default container stores `{}`."""
    default = SecurityOptions()
    return {
        f.name: dataclasses.asdict(options)[f.name]
        for f in dataclasses.fields(SecurityOptions)
        if getattr(options, f.name) != getattr(default, f.name)
    }


def security_from_dict(raw: dict) -> SecurityOptions:
    """The inverse of security_to_dict; unknown keys (a newer writer's) are refused rather than dropped."""
    values = dict(raw)
    for name in ("cap_add", "cap_drop", "group_add"):
        if name in values:
            values[name] = tuple(values[name])
    if "tmpfs" in values:
        values["tmpfs"] = tuple(TmpfsMount(**m) for m in values["tmpfs"])
    if "devices" in values:
        values["devices"] = tuple(DeviceMapping(**d) for d in values["devices"])
    if "ulimits" in values:
        values["ulimits"] = tuple(Ulimit(**u) for u in values["ulimits"])
    return SecurityOptions(**values)
