"""The effective security profile of a container, built from its SecurityOptions and the host's facts; pure data."""

from __future__ import annotations

import hashlib
import resource
from dataclasses import dataclass, replace

from services.common.errors import InvalidArgument
from services.common.security import (
    CAPABILITIES,
    RLIM_INFINITY,
    RLIMITS,
    SecurityOptions,
    Ulimit,
    capability_mask,
    effective_capabilities,
)

# Docker's masked and read-only paths (moby oci/defaults.go, runc's MaskPaths and ReadonlyPaths).
MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
# Docker's default open-file limit (containerd's), when the kernel's fs.nr_open allows it.
DEFAULT_NOFILE = 1048576
SECCOMP_DEFAULT = "default"
SECCOMP_UNCONFINED = "unconfined"


@dataclass(frozen=True)
class HostFacts:
    """What the profile depends on besides the options: read once per executor, passed in for tests."""

    # Capabilities this host can hand out: the kernel's (cap_last_cap) within our own bounding set.
    available_capabilities: tuple[str, ...]
    nr_open: int
    # Our own hard limits by RLIMIT number: a container inherits them, and may not exceed them without
    # CAP_SYS_RESOURCE (which a sandbox may have taken from our bounding set).
    hard_limits: dict[int, int]
    # Our own OOM score adjustment: containers start from it, and go below it only with CAP_SYS_RESOURCE.
    oom_score_adj: int = 0

    @property
    def nofile_hard(self) -> int:
        return self.hard_limits[RLIMITS["nofile"]]

    @property
    def can_raise_limits(self) -> bool:
        return "SYS_RESOURCE" in self.available_capabilities

    @classmethod
    def read(cls) -> "HostFacts":
        with open("/proc/sys/kernel/cap_last_cap") as handle:
            last = int(handle.read())
        bounding = 0
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("CapBnd:"):
                    bounding = int(line.split()[1], 16)
        available = tuple(name for number, name in enumerate(CAPABILITIES[: last + 1]) if bounding >> number & 1)
        with open("/proc/sys/fs/nr_open") as handle:
            nr_open = int(handle.read())
        hard = {}
        for number in RLIMITS.values():
            limit = resource.getrlimit(number)[1]
            hard[number] = RLIM_INFINITY if limit == resource.RLIM_INFINITY else limit
        with open("/proc/self/oom_score_adj") as handle:
            oom_score_adj = int(handle.read())
        return cls(available, nr_open, hard, oom_score_adj)


@dataclass(frozen=True)
class SecurityProfile:
    """How init and exec confine a container's processes; stored in its plan, shown by inspect."""

    privileged: bool = False
    # Names without the CAP_ prefix, in number order: the bounding, permitted and effective sets.
    capabilities: tuple[str, ...] = ()
    no_new_privileges: bool = False
    # SECCOMP_DEFAULT, SECCOMP_UNCONFINED or "custom sha256:<hex>".
    seccomp: str = SECCOMP_UNCONFINED
    # The executor's compiled programs for it (a marshal list of BPF programs), "" when unconfined.
    seccomp_file: str = ""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    read_only_rootfs: bool = False
    user: str = ""
    group_add: tuple[str, ...] = ()
    # Device cgroup rules in v1 syntax ("c 1:3 rwm"); empty: every device allowed.
    device_rules: tuple[str, ...] = ()
    # (RLIMIT number, soft, hard), in the order given.
    rlimits: tuple[tuple[int, int, int], ...] = ()
    oom_score_adj: int = 0
    # The sysfs mount is read-write (privileged only).
    sysfs_writable: bool = False

    @property
    def capability_mask(self) -> int:
        return capability_mask(self.capabilities)

    @property
    def ulimits(self) -> tuple[Ulimit, ...]:
        names = {number: name for name, number in RLIMITS.items()}
        return tuple(Ulimit(names[number], soft, hard) for number, soft, hard in self.rlimits)

    def to_dict(self) -> dict:
        """What init reads (JSON types only), with the capability mask precomputed."""
        return {
            "privileged": self.privileged,
            "capabilities": list(self.capabilities),
            "capability_mask": self.capability_mask,
            "no_new_privileges": self.no_new_privileges,
            "seccomp": self.seccomp,
            "seccomp_file": self.seccomp_file,
            "masked_paths": list(self.masked_paths),
            "readonly_paths": list(self.readonly_paths),
            "read_only_rootfs": self.read_only_rootfs,
            "user": self.user,
            "group_add": list(self.group_add),
            "device_rules": list(self.device_rules),
            "rlimits": [list(limit) for limit in self.rlimits],
            "oom_score_adj": self.oom_score_adj,
            "sysfs_writable": self.sysfs_writable,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "SecurityProfile":
        values = {k: v for k, v in raw.items() if k != "capability_mask"}
        for name in ("capabilities", "masked_paths", "readonly_paths", "group_add", "device_rules"):
            values[name] = tuple(values[name])
        values["rlimits"] = tuple(tuple(limit) for limit in values["rlimits"])
        return cls(**values)


def seccomp_label(options: SecurityOptions) -> str:
    if options.privileged or options.seccomp_unconfined:
        return SECCOMP_UNCONFINED
    if options.seccomp_profile:
        return "custom sha256:" + hashlib.sha256(options.seccomp_profile.encode()).hexdigest()
    return SECCOMP_DEFAULT


def rlimits(options: SecurityOptions, host: HostFacts) -> tuple[tuple[int, int, int], ...]:
    """The user's --ulimit values, with Docker's nofile default when none is given for it."""
    limits = [(RLIMITS[u.name], u.soft, u.hard) for u in options.ulimits]
    if not any(u.name == "nofile" for u in options.ulimits):
        can_default = host.nr_open >= DEFAULT_NOFILE and (host.can_raise_limits or host.nofile_hard >= DEFAULT_NOFILE)
        nofile = DEFAULT_NOFILE if can_default else host.nofile_hard
        limits.append((RLIMITS["nofile"], nofile, nofile))
    names = {number: name for name, number in RLIMITS.items()}
    for number, _, hard in limits:
        if number == RLIMITS["nofile"] and hard > host.nr_open:
            raise InvalidArgument(f"--ulimit nofile hard limit {hard} is above this host's fs.nr_open ({host.nr_open})")
        if hard > host.hard_limits[number] and not host.can_raise_limits:
            raise InvalidArgument(
                f"--ulimit {names[number]} hard limit {hard} is above the services' own ({host.hard_limits[number]}), "
                "and they lack CAP_SYS_RESOURCE to raise it"
            )
    return tuple(limits)


def check_oom_score_adj(value: int, host: HostFacts) -> None:
    if value < host.oom_score_adj and not host.can_raise_limits:
        raise InvalidArgument(
            f"--oom-score-adj {value} is below the services' own ({host.oom_score_adj}), "
            "and they lack CAP_SYS_RESOURCE to lower it"
        )


def build_profile(options: SecurityOptions, host: HostFacts, device_rules: tuple[str, ...] = ()) -> SecurityProfile:
    """The profile for `options` on `host`; the seccomp program file is filled in by the caller once compiled."""
    check_oom_score_adj(options.oom_score_adj, host)
    capabilities = effective_capabilities(options.cap_add, options.cap_drop, options.privileged, host.available_capabilities)
    return SecurityProfile(
        privileged=options.privileged,
        capabilities=capabilities,
        no_new_privileges=options.no_new_privileges,
        seccomp=seccomp_label(options),
        masked_paths=() if options.privileged else MASKED_PATHS,
        readonly_paths=() if options.privileged else READONLY_PATHS,
        read_only_rootfs=options.read_only_rootfs,
        user=options.user,
        group_add=options.group_add,
        device_rules=() if options.privileged else device_rules,
        rlimits=rlimits(options, host),
        oom_score_adj=options.oom_score_adj,
        sysfs_writable=options.privileged,
    )


def exec_profile(container: SecurityProfile, user: str, privileged: bool, host: HostFacts) -> SecurityProfile:
    """An exec's profile: the container's, with `exec --user` and `exec --privileged` applied."""
    profile = container
    if user:
        profile = replace(profile, user=user, group_add=())
    if privileged:
        profile = replace(
            profile, privileged=True, capabilities=effective_capabilities((), (), True, host.available_capabilities),
            seccomp=SECCOMP_UNCONFINED, seccomp_file="",
        )
    return profile


def capability_display(profile: SecurityProfile) -> tuple[str, ...]:
    return tuple(f"CAP_{name}" for name in profile.capabilities)

