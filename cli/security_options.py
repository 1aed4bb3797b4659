"""run's security flags (--cap-add, --security-opt, --user, --device, ...) turned into a SecurityOptions message."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cli.services import CliError
from protos.types.v1 import types_pb2
from services.common import security
from services.common.errors import InvalidArgument
from services.common.security_convert import security_to_proto

# A profile bigger than this is not a seccomp profile (Docker's default is ~20 KB).
MAX_PROFILE_BYTES = 4 << 20


@dataclass
class SecurityFlags:
    """The flags as typed; every list may be empty."""

    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    user: str = ""
    group_add: list[str] = field(default_factory=list)
    read_only: bool = False
    tmpfs: list[str] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    ulimit: list[str] = field(default_factory=list)
    oom_score_adj: int = 0


def _read_profile(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PROFILE_BYTES + 1)
    except OSError as err:
        raise CliError(f"cannot read seccomp profile {path}: {err.strerror}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise CliError(f"seccomp profile {path} is over {MAX_PROFILE_BYTES >> 20} MiB: that is not a profile")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise CliError(f"seccomp profile {path} is not UTF-8 text: give a Docker JSON seccomp profile") from None


def _bool_value(option: str, value: str) -> bool:
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    raise CliError(f'invalid --security-opt "{option}": use no-new-privileges, or no-new-privileges=true|false')


def apply_security_opt(option: str, options: security.SecurityOptions) -> security.SecurityOptions:
    """One --security-opt KEY=VALUE (or Docker's older KEY:VALUE); the ones this runtime has no use for are refused."""
    key, sep, value = option.partition("=")
    if not sep:
        key, _, value = option.partition(":")
    if key == "seccomp":
        if not value:
            raise CliError('--security-opt seccomp needs a value: seccomp=unconfined or seccomp=/path/profile.json')
        if value == "unconfined":
            return dataclasses.replace(options, seccomp_unconfined=True, seccomp_profile="")
        return dataclasses.replace(options, seccomp_unconfined=False, seccomp_profile=_read_profile(value))
    if key == "no-new-privileges":
        return dataclasses.replace(options, no_new_privileges=_bool_value(option, value))
    if key in ("apparmor", "label", "systempaths", "mask", "unmask"):
        raise CliError(f'--security-opt {key} is not supported: mydocker has no AppArmor or SELinux and keeps its masked paths')
    raise CliError(f'unknown --security-opt "{option}": use seccomp=unconfined, seccomp=FILE or no-new-privileges')


def security_options(flags: SecurityFlags) -> types_pb2.SecurityOptions:
    """The message for CreateContainer; CliError (one line) for anything malformed, before any service is asked."""
    try:
        options = security.SecurityOptions(
            privileged=flags.privileged,
            cap_add=tuple(flags.cap_add),
            cap_drop=tuple(flags.cap_drop),
            user=flags.user,
            group_add=tuple(flags.group_add),
            read_only_rootfs=flags.read_only,
            tmpfs=tuple(security.parse_tmpfs(text) for text in flags.tmpfs),
            devices=tuple(security.parse_device(text) for text in flags.device),
            ulimits=tuple(security.parse_ulimit(text) for text in flags.ulimit),
            oom_score_adj=flags.oom_score_adj,
        )
        for option in flags.security_opt:
            options = apply_security_opt(option, options)
        security.check_options(options)
    except InvalidArgument as err:
        raise CliError(str(err)) from None
    return security_to_proto(options)
