"""The executor's security step of create and exec: profile, device nodes and rules, seccomp programs compiled once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from services.common.security import SecurityOptions, check_options
from services.executor import devices, seccomp
from services.executor.devices import DeviceRule
from services.executor.plan import DeviceSpec
from services.executor.profile import SECCOMP_UNCONFINED, HostFacts, SecurityProfile, build_profile, exec_profile
from services.executor.seccomp_default import default_profile


@dataclass(frozen=True)
class Confinement:
    """What create needs: the profile for the plan, the nodes init creates, the rules the cgroup gets."""

    profile: SecurityProfile
    device_nodes: tuple[DeviceSpec, ...]
    # Empty: every device allowed (privileged); otherwise Docker's standard nodes plus --device ones.
    device_rules: tuple[DeviceRule, ...]


class SecuritySetup:
    """Builds profiles against this host's facts; compiled seccomp programs are shared by every container."""

    def __init__(self, seccomp_dir: Path, host: HostFacts | None = None):
        self._host = host or HostFacts.read()
        self._seccomp = seccomp.SeccompCache(seccomp_dir)
        self._default_profile = default_profile()

    @property
    def host(self) -> HostFacts:
        return self._host

    def container(self, options: SecurityOptions) -> Confinement:
        """InvalidArgument for a bad option, an unknown capability or syscall, or a --device that is no device."""
        check_options(options)
        if options.privileged:
            nodes, rules = tuple(devices.host_devices()), ()
        else:
            resolved = [pair for mapping in options.devices for pair in devices.resolve_devices(mapping)]
            nodes = tuple(node for node, _ in resolved)
            rules = (*devices.DEFAULT_ALLOWED, *(rule for _, rule in resolved))
        profile = build_profile(options, self._host, tuple(devices.format_v1(rule) for rule in rules))
        if profile.seccomp != SECCOMP_UNCONFINED:
            custom = bool(options.seccomp_profile)
            parsed = seccomp.parse_profile(options.seccomp_profile) if custom else self._default_profile
            capabilities = frozenset(f"CAP_{name}" for name in profile.capabilities)
            profile = replace(profile, seccomp_file=self._seccomp.program_file(parsed, capabilities, strict_names=custom))
        return Confinement(profile, nodes, rules)

    def exec(self, container: dict | None, user: str, privileged: bool) -> dict | None:
        """The exec's profile (SecurityProfile.to_dict) from the container's; None for a container of an older plan."""
        if container is None:
            return None
        return exec_profile(SecurityProfile.from_dict(container), user, privileged, self._host).to_dict()
