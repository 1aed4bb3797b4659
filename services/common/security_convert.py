"""SecurityOptions between its dataclass and its proto (types.v1)."""

from __future__ import annotations

from protos.types.v1 import types_pb2
from services.common.security import DeviceMapping, SecurityOptions, TmpfsMount, Ulimit


def security_from_proto(message: types_pb2.SecurityOptions) -> SecurityOptions:
    return SecurityOptions(
        privileged=message.privileged,
        cap_add=tuple(message.cap_add),
        cap_drop=tuple(message.cap_drop),
        seccomp_unconfined=message.seccomp_unconfined,
        seccomp_profile=message.seccomp_profile,
        no_new_privileges=message.no_new_privileges,
        user=message.user,
        group_add=tuple(message.group_add),
        read_only_rootfs=message.read_only_rootfs,
        tmpfs=tuple(TmpfsMount(m.path, m.options) for m in message.tmpfs),
        devices=tuple(DeviceMapping(d.host_path, d.container_path, d.permissions) for d in message.devices),
        ulimits=tuple(Ulimit(u.name, u.soft, u.hard) for u in message.ulimits),
        oom_score_adj=message.oom_score_adj,
    )


def security_to_proto(options: SecurityOptions) -> types_pb2.SecurityOptions:
    return types_pb2.SecurityOptions(
        privileged=options.privileged,
        cap_add=options.cap_add,
        cap_drop=options.cap_drop,
        seccomp_unconfined=options.seccomp_unconfined,
        seccomp_profile=options.seccomp_profile,
        no_new_privileges=options.no_new_privileges,
        user=options.user,
        group_add=options.group_add,
        read_only_rootfs=options.read_only_rootfs,
        tmpfs=[types_pb2.TmpfsMount(path=m.path, options=m.options) for m in options.tmpfs],
        devices=[
            types_pb2.DeviceMapping(host_path=d.host_path, container_path=d.container_path, permissions=d.permissions)
            for d in options.devices
        ],
        ulimits=[types_pb2.Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in options.ulimits],
        oom_score_adj=options.oom_score_adj,
    )
