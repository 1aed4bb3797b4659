"""The container plan: a pure dataclass built from a create request, checked by small functions, applied by init."""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from services.common.errors import InvalidArgument
from services.common.limits import check_exec_size
from services.common import linux as flags
from services.common.security import TmpfsMount
from services.executor.cgroups import SHIMS_CGROUP, Limits, validate_limits
from services.executor.profile import SecurityProfile

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERM = "xterm"
STDIO_LOG = "log"
STDIO_ATTACH = "attach"
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Names the executor uses beside container ids: the shims' cgroup, and helper bytecode, the
# firewall's saved state and compiled seccomp programs under MYDOCKER_RUN.
PYCACHE_DIR = "pycache"
NETWORK_DIR = "network"
SECCOMP_DIR = "seccomp"
RESERVED_IDS = frozenset({SHIMS_CGROUP, PYCACHE_DIR, NETWORK_DIR, SECCOMP_DIR})
# The state service's alphabet, since a container's name is its default hostname; the kernel takes 64 bytes.
HOSTNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HOSTNAME_MAX = 64
ENV_KEY_PATTERN = re.compile(r"[^=\0]+")
# Namespaces init unshares; the pid namespace is the shim's, which forks init into it.
INIT_NAMESPACES = ("mnt", "uts", "ipc", "net", "cgroup")


@dataclass(frozen=True)
class MountSpec:
    """One mount(2) inside the rootfs; `target` is absolute inside the container."""

    source: str
    target: str
    fstype: str
    flags: int = 0
    data: str = ""
    # Bind this host path read-only instead when the mount is refused (sysfs outside a fresh netns).
    fallback_bind: str = ""
    # The target is a file (a bind-mounted file such as /etc/hosts): init creates an empty one, not a directory.
    target_is_file: bool = False


@dataclass(frozen=True)
class DeviceSpec:
    """A device node init creates in the container's /dev tmpfs: `kind` "c" (character) or "b" (block)."""

    path: str
    major: int
    minor: int
    mode: int = 0o666
    kind: str = "c"
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class ContainerPlan:
    """Everything the container's init does, in data; nothing here touches the kernel."""

    id: str
    hostname: str
    rootfs: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str = "/"
    terminal: bool = False
    stdin: bool = False
    stdio_mode: str = STDIO_LOG
    namespaces: tuple[str, ...] = INIT_NAMESPACES
    mounts: tuple[MountSpec, ...] = ()
    devices: tuple[DeviceSpec, ...] = ()
    # (link path, target) pairs.
    symlinks: tuple[tuple[str, str], ...] = ()
    # The files init writes itself into before unsharing its cgroup namespace (v1 `tasks`, v2 cgroup.procs).
    cgroup_procs: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    # None only in a plan written before security profiles existed: that container runs unconfined.
    security: SecurityProfile | None = field(default_factory=SecurityProfile)

    def to_json(self) -> str:
        # asdict deep-copies every field: the profile, which has its own to_dict, is left out of it; and
        # no indent, which would take json's pure-Python encoder (together ~0.5 ms of every create).
        raw = asdict(replace(self, security=None))
        raw["security"] = self.security.to_dict() if self.security is not None else None
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ContainerPlan":
        raw = json.loads(text)
        raw["args"] = tuple(raw["args"])
        raw["env"] = tuple(raw["env"])
        raw["namespaces"] = tuple(raw["namespaces"])
        raw["mounts"] = tuple(MountSpec(**m) for m in raw["mounts"])
        raw["devices"] = tuple(DeviceSpec(**d) for d in raw["devices"])
        raw["symlinks"] = tuple(tuple(pair) for pair in raw["symlinks"])
        raw["cgroup_procs"] = tuple(raw["cgroup_procs"])
        raw["limits"] = Limits(**raw["limits"])
        # A plan written before security profiles existed ran unconfined: say so rather than invent one.
        raw["security"] = SecurityProfile.from_dict(raw["security"]) if raw.get("security") else None
        return cls(**raw)


def default_mounts(sysfs_writable: bool = False) -> tuple[MountSpec, ...]:
    nosuid_nodev_noexec = flags.MS_NOSUID | flags.MS_NODEV | flags.MS_NOEXEC
    sysfs_flags = nosuid_nodev_noexec | (0 if sysfs_writable else flags.MS_RDONLY)
    return (
        MountSpec("proc", "/proc", "proc", nosuid_nodev_noexec),
        MountSpec("tmpfs", "/dev", "tmpfs", flags.MS_NOSUID | flags.MS_STRICTATIME, "mode=755,size=65536k"),
        MountSpec(
            "devpts", "/dev/pts", "devpts", flags.MS_NOSUID | flags.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"
        ),
        MountSpec("shm", "/dev/shm", "tmpfs", nosuid_nodev_noexec, "mode=1777,size=65536k"),
        MountSpec("mqueue", "/dev/mqueue", "mqueue", nosuid_nodev_noexec),
        MountSpec("sysfs", "/sys", "sysfs", sysfs_flags, fallback_bind="/sys"),
    )


def default_devices() -> tuple[DeviceSpec, ...]:
    return (
        DeviceSpec("/dev/null", 1, 3),
        DeviceSpec("/dev/zero", 1, 5),
        DeviceSpec("/dev/full", 1, 7),
        DeviceSpec("/dev/random", 1, 8),
        DeviceSpec("/dev/urandom", 1, 9),
        DeviceSpec("/dev/tty", 5, 0),
    )


def default_symlinks() -> tuple[tuple[str, str], ...]:
    return (
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    )


# mount(8) words of --tmpfs options that set or clear a mount flag.
_TMPFS_SET = {"ro": flags.MS_RDONLY, "nosuid": flags.MS_NOSUID, "nodev": flags.MS_NODEV, "noexec": flags.MS_NOEXEC}
_TMPFS_CLEAR = {"rw": flags.MS_RDONLY, "suid": flags.MS_NOSUID, "dev": flags.MS_NODEV, "exec": flags.MS_NOEXEC}
# Atime words are accepted for Docker compatibility; tmpfs needs none of them.
_TMPFS_IGNORED = {"sync", "async", "dirsync", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
                  "strictatime", "nostrictatime"}


def tmpfs_mount(mount: TmpfsMount) -> MountSpec:
    """A --tmpfs as a mount: noexec, nosuid and nodev unless exec, suid or dev say otherwise, as Docker does."""
    mount_flags = flags.MS_NOSUID | flags.MS_NODEV | flags.MS_NOEXEC
    data = []
    for word in filter(None, mount.options.split(",")):
        if word in _TMPFS_SET:
            mount_flags |= _TMPFS_SET[word]
        elif word in _TMPFS_CLEAR:
            mount_flags &= ~_TMPFS_CLEAR[word]
        elif word not in _TMPFS_IGNORED:
            data.append(word)
    return MountSpec("tmpfs", posixpath.normpath(mount.path), "tmpfs", mount_flags, ",".join(data))


def env_key(entry: str) -> str:
    return entry.partition("=")[0]


def merge_env(base: Sequence[str], overrides: Sequence[str]) -> tuple[str, ...]:
    """`base` with every KEY of `overrides` replaced in place or appended; later entries win."""
    merged: dict[str, str] = {}
    for entry in (*base, *overrides):
        merged[env_key(entry)] = entry
    return tuple(merged.values())


def container_env(hostname: str, terminal: bool, user_env: Sequence[str]) -> tuple[str, ...]:
    """Exactly PATH, HOSTNAME, TERM (with a tty) and the user's values: nothing of the host leaks in."""
    base = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if terminal:
        base.append(f"TERM={DEFAULT_TERM}")
    return merge_env(base, user_env)


def build_plan(
    container_id: str,
    hostname: str,
    rootfs: str,
    args: Sequence[str],
    env: Sequence[str],
    cwd: str = "",
    terminal: bool = False,
    stdin: bool = False,
    stdio_mode: str = STDIO_LOG,
    limits: Limits = Limits(),
    cgroup_procs: Sequence[str] = (),
    cgroup_namespace: bool = True,
    extra_mounts: Sequence[MountSpec] = (),
    security: SecurityProfile = SecurityProfile(),
    extra_devices: Sequence[DeviceSpec] = (),
) -> ContainerPlan:
    """The plan of one container; `extra_mounts` come after the defaults (/proc, /dev, ...), so they may sit on them.

    `extra_devices` (--device, or every host device when privileged) replace a default node of the same path;
    a path the container has as a symlink (/dev/ptmx to its own devpts) stays a symlink.
    """
    symlinks = default_symlinks()
    links = {link for link, _ in symlinks}
    devices = {device.path: device for device in (*default_devices(), *extra_devices) if device.path not in links}
    namespaces = INIT_NAMESPACES if cgroup_namespace else tuple(n for n in INIT_NAMESPACES if n != "cgroup")
    return ContainerPlan(
        id=container_id,
        hostname=hostname,
        rootfs=rootfs,
        args=tuple(args),
        env=container_env(hostname, terminal, env),
        cwd=cwd or "/",
        terminal=terminal,
        stdin=stdin,
        stdio_mode=stdio_mode,
        namespaces=namespaces,
        mounts=default_mounts(security.sysfs_writable) + tuple(extra_mounts),
        devices=tuple(devices.values()),
        symlinks=symlinks,
        cgroup_procs=tuple(cgroup_procs),
        limits=limits,
        security=security,
    )


def _no_nul(value: str, what: str) -> None:
    if "\0" in value:
        raise InvalidArgument(f"{what} contains a NUL byte")


def is_container_id(name: str) -> bool:
    """A name a container may have: the id alphabet, and none of the names the executor uses itself."""
    return bool(ID_PATTERN.fullmatch(name or "")) and name not in RESERVED_IDS


def check_container_id(container_id: str) -> None:
    if not ID_PATTERN.fullmatch(container_id or ""):
        raise InvalidArgument(f'invalid container id "{container_id}": use 1-64 letters, digits, "_" or "-"')
    if container_id in RESERVED_IDS:
        raise InvalidArgument(f'invalid container id "{container_id}": the executor uses that name itself')


def check_id(plan: ContainerPlan) -> None:
    check_container_id(plan.id)


def check_hostname(plan: ContainerPlan) -> None:
    if not plan.hostname:
        raise InvalidArgument("hostname is empty: it is required")
    if len(plan.hostname) > HOSTNAME_MAX or not HOSTNAME_PATTERN.fullmatch(plan.hostname):
        raise InvalidArgument(f'invalid hostname "{plan.hostname}": use letters, digits, "_", "-" and "." (at most 64)')


def check_rootfs(plan: ContainerPlan) -> None:
    if not plan.rootfs:
        raise InvalidArgument("rootfs_path is empty: it is required")
    _no_nul(plan.rootfs, "rootfs_path")
    if not posixpath.isabs(plan.rootfs) or posixpath.normpath(plan.rootfs) != plan.rootfs.rstrip("/") or plan.rootfs == "/":
        raise InvalidArgument(f'rootfs_path "{plan.rootfs}" must be an absolute, normalised path other than /')


def check_args(plan: ContainerPlan) -> None:
    if not plan.args or not plan.args[0]:
        raise InvalidArgument("the command is empty: give the program to run")
    for arg in plan.args:
        _no_nul(arg, "an argument")


def check_env(plan: ContainerPlan) -> None:
    for entry in plan.env:
        key, sep, _ = entry.partition("=")
        if not sep or not ENV_KEY_PATTERN.fullmatch(key):
            raise InvalidArgument(f'invalid environment entry "{entry}": use KEY=VALUE')
        _no_nul(entry, "an environment entry")


def check_exec_limits(plan: ContainerPlan) -> None:
    check_exec_size(plan.args, plan.env)


def check_cwd(plan: ContainerPlan) -> None:
    _no_nul(plan.cwd, "the working directory")
    if not posixpath.isabs(plan.cwd):
        raise InvalidArgument(f'working directory "{plan.cwd}" must be absolute')


def check_stdio(plan: ContainerPlan) -> None:
    if plan.stdio_mode not in (STDIO_LOG, STDIO_ATTACH):
        raise InvalidArgument(f'unknown stdio mode "{plan.stdio_mode}"')


def check_mounts(plan: ContainerPlan) -> None:
    for mount in plan.mounts:
        if not posixpath.isabs(mount.target) or ".." in mount.target.split("/"):
            raise InvalidArgument(f'mount target "{mount.target}" must be absolute without ".."')


def check_limits(plan: ContainerPlan) -> None:
    validate_limits(plan.limits, os.cpu_count())


CHECKS: tuple[Callable[[ContainerPlan], None], ...] = (
    check_id,
    check_hostname,
    check_rootfs,
    check_args,
    check_env,
    check_exec_limits,
    check_cwd,
    check_stdio,
    check_mounts,
    check_limits,
)


def validate(plan: ContainerPlan) -> ContainerPlan:
    """Run every check; the first failure raises InvalidArgument."""
    for check in CHECKS:
        check(plan)
    return plan
