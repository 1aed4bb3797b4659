"""Applies a security profile (SecurityProfile.to_dict) to the calling process: the one place init and exec drop privileges.

Imported by the container init, and so by the shim launcher every shim is forked from: built-in
modules and the syscall module only. Every function raises OSError with the real errno.
"""

import errno
import marshal
import os
import resource

from services.common import linux
from services.executor import users

# services.common.security's RLIM_INFINITY: that module (dataclasses, errors) is too heavy for init to import.
RLIM_INFINITY = (1 << 64) - 1
# statvfs flags that are also mount flags (same bits): a read-only remount must keep them.
_KEPT_FLAGS = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
PASSWD = "/etc/passwd"
GROUP = "/etc/group"


def read_programs(path: str) -> list:
    """The compiled seccomp programs of a profile, read while the executor's run dir is still in reach."""
    if not path:
        return []
    with open(path, "rb") as handle:
        return marshal.loads(handle.read())


def set_oom_score_adj(value: int) -> None:
    # Written while we still hold CAP_SYS_RESOURCE: the shims' low score must not reach the container.
    with open("/proc/self/oom_score_adj", "w") as handle:
        handle.write(str(value))


def set_rlimits(limits) -> None:
    for number, soft, hard in limits:
        soft = resource.RLIM_INFINITY if soft >= RLIM_INFINITY else soft
        hard = resource.RLIM_INFINITY if hard >= RLIM_INFINITY else hard
        resource.setrlimit(number, (soft, hard))


def _mount_flags(path: str) -> int:
    return os.statvfs(path).f_flag & _KEPT_FLAGS


def mask_path(path: str) -> None:
    """Hide `path` (inside the new root): /dev/null over a file, an empty read-only tmpfs over a directory."""
    try:
        linux.mount("/dev/null", path, None, linux.MS_BIND)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return
        if err.errno != errno.ENOTDIR:
            raise
        linux.mount("tmpfs", path, "tmpfs", linux.MS_RDONLY)


def readonly_path(path: str) -> None:
    """Make `path` and everything below it read-only; a path the kernel does not have is skipped."""
    try:
        linux.mount(path, path, None, linux.MS_BIND | linux.MS_REC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return
        raise
    flags = linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | linux.MS_REC | _mount_flags(path)
    linux.mount(path, path, None, flags)


def readonly_root() -> None:
    """The container's own root read-only (`--read-only`); its submounts (volumes, /dev, tmpfs) keep their modes."""
    linux.mount(None, "/", None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _mount_flags("/"))


def restrict_filesystem(security: dict) -> None:
    """Masked and read-only paths, then a read-only root; called inside the new root, after pivot_root."""
    for path in security["masked_paths"]:
        mask_path(path)
    for path in security["readonly_paths"]:
        readonly_path(path)
    if security["read_only_rootfs"]:
        readonly_root()


def identity(security: dict) -> users.Identity:
    """Who to run as, from the image's own /etc/passwd and /etc/group (read in the current root)."""
    return users.resolve(security["user"], security["group_add"], users.read_text(PASSWD), users.read_text(GROUP))


def with_home(env, who: users.Identity) -> list:
    """HOME from the user's passwd entry, as Docker sets it, unless the environment has one."""
    if any(entry.startswith("HOME=") for entry in env):
        return list(env)
    return [*env, f"HOME={who.home}"]


def _drop_bounding_set(keep: int) -> None:
    number = 0
    while True:
        if not keep >> number & 1:
            try:
                linux.prctl(linux.PR_CAPBSET_DROP, number)
            except OSError as err:
                # EINVAL: past the kernel's last capability.
                if err.errno == errno.EINVAL:
                    return
                raise
        number += 1


def _install(programs) -> None:
    for program in programs:
        linux.load_seccomp(program)


def drop_privileges(security: dict, who: users.Identity, programs) -> None:
    """no_new_privs, seccomp, capability sets and the user, in runc's order; the last step before exec.

    Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, so it goes in first, while we have
    it; with no_new_privs it goes in last, so the filter never sees our own setup calls. The user is
    switched with KEEPCAPS, and the sets are set afterwards: for a non-root user execve then clears
    permitted and effective anyway, as in Docker, while the bounding set still limits setuid binaries.
    """
    mask = security["capability_mask"]
    if security["no_new_privileges"]:
        linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    else:
        _install(programs)
    _drop_bounding_set(mask)
    linux.prctl(linux.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(who.groups))
    os.setresgid(who.gid, who.gid, who.gid)
    os.setresuid(who.uid, who.uid, who.uid)
    linux.prctl(linux.PR_SET_KEEPCAPS, 0)
    linux.capset(mask, mask, 0)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    if security["no_new_privileges"]:
        _install(programs)
