/*
 * The syscall probe of tests/e2e/test_docker_differential.py: runs named syscalls and prints one
 * line each, `<name> ok` or `<name> <ERRNO>` (`<name> signal <N>` if the check was killed), so the
 * same binary can be run under Docker and under mydocker and the answers compared line by line.
 *
 * Usage: differential_probe [NAME...]   (no NAME: every check, in table order)
 *
 * Every check runs in a forked child that exits with the errno (0: the call succeeded), so a check
 * that changes the process (personality, setuid, chroot, unshare) changes only that child. Each
 * call is made harmless should it unexpectedly succeed: nonexistent paths and pids, invalid magic
 * numbers, flags or sizes that the kernel rejects after seccomp and the capability checks, queries
 * instead of changes. Nothing here can reboot, load a module, change the clock or send a packet.
 * Build: gcc -static -O1 -o differential_probe differential_probe.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/quota.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif
#ifndef SYS_process_mrelease
#define SYS_process_mrelease 448
#endif

#define NOWHERE "/nonexistent-mdk-probe"
/* PTRACE_PEEKUSER, without <sys/ptrace.h> (whose enum clashes with <linux/ptrace.h> users). */
#define PTRACE_PEEKUSER_NR 3
/* Above the kernel's pid_max limit (4194304): no process can have it. */
#define NO_PID 0x7ffffff0

static long fail_errno(long rc) { return rc < 0 ? -1 : rc; }

/* -- mounts and namespaces (CAP_SYS_ADMIN in Docker's profile) ---------------------------- */
static long c_mount(void) { return syscall(SYS_mount, "none", NOWHERE, "tmpfs", 0UL, NULL); }
static long c_umount2(void) { return syscall(SYS_umount2, NOWHERE, 0); }
static long c_unshare_newuser(void) { return syscall(SYS_unshare, CLONE_NEWUSER); }
static long c_unshare_newns(void) { return syscall(SYS_unshare, CLONE_NEWNS); }
static long c_setns(void) { return syscall(SYS_setns, -1, 0); }

static long c_clone_newuser(void) {
    long pid = syscall(SYS_clone, (unsigned long)(CLONE_NEWUSER | SIGCHLD), NULL, NULL, NULL, 0UL);
    if (pid == 0)
        _exit(0);
    if (pid < 0)
        return -1;
    waitpid((pid_t)pid, NULL, 0);
    return 0;
}

/* A NULL clone_args with size 0: EINVAL if the call reaches the kernel, so nothing is created. */
static long c_clone3(void) { return syscall(SYS_clone3, NULL, 0UL); }

/* -- keys --------------------------------------------------------------------------------- */
static long c_keyctl(void) { return syscall(SYS_keyctl, 0x7fffffffL, 0L, 0L, 0L, 0L); }
static long c_add_key(void) {
    return syscall(SYS_add_key, "mdk-no-such-key-type", "mdk", NULL, 0UL, (long)KEY_SPEC_PROCESS_KEYRING);
}
static long c_request_key(void) { return syscall(SYS_request_key, "mdk-no-such-key-type", "mdk", NULL, 0L); }

/* -- tracing, bpf, perf -------------------------------------------------------------------- */
static long c_bpf(void) { return syscall(SYS_bpf, -1, NULL, 0U); }
static long c_perf_event_open(void) { return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0UL); }
static long c_ptrace(void) { return syscall(SYS_ptrace, (long)PTRACE_PEEKUSER_NR, (long)NO_PID, 0L, 0L); }
static long c_lookup_dcookie(void) { return syscall(SYS_lookup_dcookie, 0ULL, NULL, 0UL); }
static long c_syslog(void) { return syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0); }

/* -- modules, kexec, reboot ----------------------------------------------------------------- */
/* Flags with an unknown architecture: EINVAL after the CAP_SYS_BOOT check, nothing loaded or unloaded. */
static long c_kexec_load(void) { return syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0xffff0000UL); }
static long c_init_module(void) { return syscall(SYS_init_module, NULL, 0UL, ""); }
static long c_finit_module(void) { return syscall(SYS_finit_module, -1, "", 0); }
static long c_delete_module(void) { return syscall(SYS_delete_module, "mdk_no_such_module", O_NONBLOCK); }
/* Wrong magic numbers: the kernel answers EINVAL (or EPERM without CAP_SYS_BOOT) and never reboots. */
static long c_reboot(void) { return syscall(SYS_reboot, 0x0badc0deL, 0x0badc0deL, 0L, NULL); }

/* -- time ------------------------------------------------------------------------------------ */
/* tv_usec out of range: EINVAL before anything is set. */
static long c_settimeofday(void) {
    struct timeval tv = {0, 2000000};
    return syscall(SYS_settimeofday, &tv, NULL);
}
/* CLOCK_MONOTONIC cannot be set: EINVAL if the call reaches the kernel. */
static long c_clock_settime(void) {
    struct timespec ts = {0, 0};
    return syscall(SYS_clock_settime, CLOCK_MONOTONIC, &ts);
}
/* modes 0: a read of the clock's state. */
static long c_clock_adjtime(void) {
    struct { unsigned int modes; char rest[204]; } tx;
    memset(&tx, 0, sizeof tx);
    return fail_errno(syscall(SYS_clock_adjtime, CLOCK_REALTIME, &tx));
}

/* -- accounting, swap, quotas, ports, tty ---------------------------------------------------- */
static long c_acct(void) { return syscall(SYS_acct, NOWHERE); }
static long c_swapon(void) { return syscall(SYS_swapon, NOWHERE, 0); }
static long c_quotactl(void) { return syscall(SYS_quotactl, QCMD(Q_GETFMT, USRQUOTA), NOWHERE, 0, NULL); }
/* Level 4 does not exist: EINVAL if the call reaches the kernel. */
static long c_iopl(void) { return syscall(SYS_iopl, 4); }
/* A range past the I/O bitmap: EINVAL if the call reaches the kernel. */
static long c_ioperm(void) { return syscall(SYS_ioperm, 0x10000UL, 1UL, 1); }
/* Without a controlling terminal (setsid) vhangup has nothing to hang up. */
static long c_vhangup(void) {
    setsid();
    return syscall(SYS_vhangup);
}

/* -- file handles, userfaultfd ------------------------------------------------------------- */
static long c_open_by_handle_at(void) { return syscall(SYS_open_by_handle_at, -1, NULL, 0); }
/* handle_bytes 0: EOVERFLOW (with the size needed) if the call reaches the kernel. */
static long c_name_to_handle_at(void) {
    struct { unsigned int handle_bytes; int handle_type; unsigned char f_handle[8]; } handle = {0, 0, {0}};
    int mount_id;
    return syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &handle, &mount_id, 0);
}
static long c_userfaultfd(void) { return fail_errno(syscall(SYS_userfaultfd, O_CLOEXEC)); }

/* -- personality ------------------------------------------------------------------------------ */
static long c_personality_query(void) { return fail_errno(syscall(SYS_personality, 0xffffffffUL)); }
static long c_personality_linux32(void) { return fail_errno(syscall(SYS_personality, 0x0008UL)); }
static long c_personality_3(void) { return fail_errno(syscall(SYS_personality, 0x0003UL)); }

/* -- sockets (no address is ever connected or sent to) --------------------------------------- */
static long c_socket_vsock(void) { return fail_errno(syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0)); }
/* Opened only: no algorithm is bound, nothing reaches the kernel's crypto code. */
static long c_socket_alg(void) { return fail_errno(syscall(SYS_socket, AF_ALG, SOCK_SEQPACKET, 0)); }
static long c_socket_raw(void) { return fail_errno(syscall(SYS_socket, AF_INET, SOCK_RAW, IPPROTO_ICMP)); }

/* -- what the default capabilities allow ------------------------------------------------------ */
static long c_chroot(void) { return syscall(SYS_chroot, "/"); }
static long c_mknod(void) {
    const char *path = "/tmp/mdk-probe-null";
    long rc = syscall(SYS_mknodat, AT_FDCWD, path, (long)(S_IFCHR | 0600), (long)makedev(1, 3));
    if (rc == 0)
        unlink(path);
    return rc;
}
static long c_setgid(void) { return syscall(SYS_setgid, 65534); }
static long c_setuid(void) { return syscall(SYS_setuid, 65534); }

/* -- newer syscalls, where the age of a profile shows (queries or invalid arguments only) -------- */
static long c_landlock_create_ruleset(void) {
    return fail_errno(syscall(SYS_landlock_create_ruleset, NULL, 0UL, 1UL /* LANDLOCK_CREATE_RULESET_VERSION */));
}
static long c_futex_waitv(void) { return syscall(SYS_futex_waitv, NULL, 0U, 0U, NULL, 0); }
static long c_process_mrelease(void) { return syscall(SYS_process_mrelease, -1, 0U); }
static long c_io_uring_setup(void) { return syscall(SYS_io_uring_setup, 0U, NULL); }
static long c_get_mempolicy(void) { return syscall(SYS_get_mempolicy, NULL, NULL, 0UL, NULL, 0UL); }

struct check {
    const char *name;
    long (*run)(void);
};

static const struct check CHECKS[] = {
    {"mount", c_mount},
    {"umount2", c_umount2},
    {"unshare_newuser", c_unshare_newuser},
    {"unshare_newns", c_unshare_newns},
    {"setns", c_setns},
    {"clone_newuser", c_clone_newuser},
    {"clone3", c_clone3},
    {"keyctl", c_keyctl},
    {"add_key", c_add_key},
    {"request_key", c_request_key},
    {"bpf", c_bpf},
    {"perf_event_open", c_perf_event_open},
    {"ptrace", c_ptrace},
    {"lookup_dcookie", c_lookup_dcookie},
    {"syslog", c_syslog},
    {"kexec_load", c_kexec_load},
    {"init_module", c_init_module},
    {"finit_module", c_finit_module},
    {"delete_module", c_delete_module},
    {"reboot", c_reboot},
    {"settimeofday", c_settimeofday},
    {"clock_settime", c_clock_settime},
    {"clock_adjtime", c_clock_adjtime},
    {"acct", c_acct},
    {"swapon", c_swapon},
    {"quotactl", c_quotactl},
    {"iopl", c_iopl},
    {"ioperm", c_ioperm},
    {"vhangup", c_vhangup},
    {"open_by_handle_at", c_open_by_handle_at},
    {"name_to_handle_at", c_name_to_handle_at},
    {"userfaultfd", c_userfaultfd},
    {"personality_query", c_personality_query},
    {"personality_linux32", c_personality_linux32},
    {"personality_3", c_personality_3},
    {"socket_vsock", c_socket_vsock},
    {"socket_alg", c_socket_alg},
    {"socket_raw", c_socket_raw},
    {"chroot", c_chroot},
    {"mknod", c_mknod},
    {"setgid", c_setgid},
    {"setuid", c_setuid},
    {"landlock_create_ruleset", c_landlock_create_ruleset},
    {"futex_waitv", c_futex_waitv},
    {"process_mrelease", c_process_mrelease},
    {"io_uring_setup", c_io_uring_setup},
    {"get_mempolicy", c_get_mempolicy},
};
#define NCHECKS (sizeof CHECKS / sizeof CHECKS[0])

static const char *errno_name(int err) {
    switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case ERANGE: return "ERANGE";
    case ENOSYS: return "ENOSYS";
    case EOVERFLOW: return "EOVERFLOW";
    case ENOKEY: return "ENOKEY";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
    default: return NULL;
    }
}

static void run_check(const struct check *check) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        printf("%s fork-failed-%d\n", check->name, errno);
        return;
    }
    if (pid == 0) {
        errno = 0;
        long rc = check->run();
        int err = rc < 0 ? errno : 0;
        _exit(err > 0 && err < 256 ? err : (rc < 0 ? 255 : 0));
    }
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(status)) {
        printf("%s signal %d\n", check->name, WTERMSIG(status));
    } else if (WEXITSTATUS(status) == 0) {
        printf("%s ok\n", check->name);
    } else {
        const char *name = errno_name(WEXITSTATUS(status));
        if (name)
            printf("%s %s\n", check->name, name);
        else
            printf("%s errno-%d\n", check->name, WEXITSTATUS(status));
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        for (size_t i = 0; i < NCHECKS; i++)
            run_check(&CHECKS[i]);
        return 0;
    }
    int status = 0;
    for (int a = 1; a < argc; a++) {
        size_t i;
        for (i = 0; i < NCHECKS; i++) {
            if (strcmp(argv[a], CHECKS[i].name) == 0) {
                run_check(&CHECKS[i]);
                break;
            }
        }
        if (i == NCHECKS) {
            printf("%s unknown-check\n", argv[a]);
            status = 2;
        }
    }
    return status;
}
