"""Docker's default seccomp profile as data: an allow list, EPERM otherwise, groups gated on arch, caps or kernel."""

from __future__ import annotations

from services.executor.seccomp_profile import ArgRule, Condition, Profile, SyscallRule

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
EPERM = 1
ENOSYS = 38
AF_ALG = 38
AF_VSOCK = 40
# clone(2) flags that create namespaces (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET): without
# CAP_SYS_ADMIN a clone may set none of them, or a container could make a user namespace and gain capabilities in it.
CLONE_NAMESPACE_FLAGS = 0x7E020000
# personality(2) values programs use: PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26 and 0xffffffff (a query);
# the other personas reach old emulation code nobody needs in a container.
PERSONALITY_VALUES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# The architectures a filter covers, by native architecture: the other ABIs that kernel also runs.
ARCH_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
    ("SCMP_ARCH_MIPS64", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32")),
    ("SCMP_ARCH_MIPS64N32", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64")),
    ("SCMP_ARCH_MIPSEL64", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32")),
    ("SCMP_ARCH_MIPSEL64N32", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64")),
    ("SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
    ("SCMP_ARCH_RISCV64", ()),
)

# Allowed for every container: what ordinary programs need, none of it able to reach outside the namespaces.
# Names of every architecture are listed; libseccomp applies each where it exists.
ALLOWED = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir", "chmod",
    "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
    "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
    "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat",
    "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex",
    "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid",
    "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32",
    "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
    "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat",
    "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
    "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead",
    "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
    "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
    "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
    "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt",
    "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall",
    "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime",
    "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
)
# Before 4.8 a ptrace tracer could rewrite a syscall after seccomp had checked it, escaping the filter.
PTRACE_SINCE_4_8 = ("process_vm_readv", "process_vm_writev", "ptrace")

# Architecture-only syscalls, keyed by the architecture names profiles use.
PPC64LE_ONLY = ("sync_file_range2", "swapcontext")
ARM_ONLY = ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls")
AMD64_ONLY = ("arch_prctl",)
X86_FAMILY_ONLY = ("modify_ldt",)
S390_ONLY = ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr")
RISCV64_ONLY = ("riscv_flush_icache",)

# Syscalls the kernel itself checks a capability for: allowed when the container keeps that capability.
SYS_ADMIN_ONLY = (
    "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
    "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
    "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
)
BY_CAPABILITY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    ("CAP_SYS_ADMIN", SYS_ADMIN_ONLY),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("delete_module", "init_module", "finit_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE", ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace")),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)
S390 = ("s390", "s390x")
WITH_SYS_ADMIN = Condition(caps=("CAP_SYS_ADMIN",))


def _allow(names: tuple[str, ...], **conditions: Condition) -> SyscallRule:
    return SyscallRule(names=names, action=ALLOW, **conditions)


def _only_on(arches: tuple[str, ...], names: tuple[str, ...]) -> SyscallRule:
    return _allow(names, includes=Condition(arches=arches))


def _clone_without_namespaces(flags_index: int, includes: Condition, excludes: Condition) -> SyscallRule:
    no_namespace_flag = ArgRule(index=flags_index, value=CLONE_NAMESPACE_FLAGS, value_two=0, op="SCMP_CMP_MASKED_EQ")
    return SyscallRule(names=("clone",), action=ALLOW, args=(no_namespace_flag,), includes=includes, excludes=excludes)


def _unconditional_rules() -> tuple[SyscallRule, ...]:
    # Every address family but two, as current moby (moby#52494): AF_VSOCK reaches the host (or the VM's
    # hypervisor) outside the network namespace; AF_ALG, the kernel crypto API, is CVE-2026-31431's way to
    # write into the shared page cache. Two "!=" in one rule would be ANDed on one argument, which libseccomp
    # cannot express, hence three ranges around 38 and 40.
    socket_families = (
        ArgRule(index=0, value=AF_ALG, value_two=0, op="SCMP_CMP_LT"),
        ArgRule(index=0, value=AF_ALG + 1, value_two=0, op="SCMP_CMP_EQ"),
        ArgRule(index=0, value=AF_VSOCK, value_two=0, op="SCMP_CMP_GT"),
    )
    personalities = tuple(
        SyscallRule(names=("personality",), action=ALLOW, args=(ArgRule(0, value, 0, "SCMP_CMP_EQ"),))
        for value in PERSONALITY_VALUES
    )
    return (
        _allow(ALLOWED),
        _allow(PTRACE_SINCE_4_8, includes=Condition(min_kernel=(4, 8))),
        *(SyscallRule(names=("socket",), action=ALLOW, args=(family,)) for family in socket_families),
        *personalities,
    )


def _arch_rules() -> tuple[SyscallRule, ...]:
    return (
        _only_on(("ppc64le",), PPC64LE_ONLY),
        _only_on(("arm", "arm64"), ARM_ONLY),
        _only_on(("amd64", "x32"), AMD64_ONLY),
        _only_on(("amd64", "x32", "x86"), X86_FAMILY_ONLY),
        _only_on(S390, S390_ONLY),
        _only_on(("riscv64",), RISCV64_ONLY),
    )


def _capability_rules() -> tuple[SyscallRule, ...]:
    granted = tuple(_allow(names, includes=Condition(caps=(cap,))) for cap, names in BY_CAPABILITY)
    without_sys_admin = (
        _clone_without_namespaces(0, Condition(), Condition(caps=("CAP_SYS_ADMIN",), arches=S390)),
        # s390's clone takes the stack first and the flags second.
        _clone_without_namespaces(1, Condition(arches=S390), WITH_SYS_ADMIN),
        # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc fall back to clone.
        SyscallRule(names=("clone3",), action=ERRNO, errno_ret=ENOSYS, excludes=WITH_SYS_ADMIN),
    )
    # Docker's order: DAC_READ_SEARCH and SYS_ADMIN first, then the clone rules, then the other capabilities.
    return granted[:2] + without_sys_admin + granted[2:]


def default_profile() -> Profile:
    return Profile(
        default_action=ERRNO,
        default_errno=EPERM,
        arch_map=ARCH_MAP,
        architectures=(),
        syscalls=_unconditional_rules() + _arch_rules() + _capability_rules(),
        flags=(),
    )
