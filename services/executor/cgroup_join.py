"""A process moving itself into cgroups: through v1's `tasks` files, which skip the kernel's global wait."""

import posix

# Why `tasks`: a write to a cgroup.procs file takes the kernel's cgroup_threadgroup_rwsem for writing,
# and after a few quiet milliseconds that first waits for an RCU grace period (7.8 ms median here, up to
# 16 under load: bench/cgroup_move.py), on every container create. Writing "0" to a v1 `tasks` file
# moves only the calling thread, and the kernel then skips that lock (the thread cannot exit or exec
# under it): 0.1 ms. For a single-threaded process that is the whole process; the shim, the init and
# the exec helper are forked without threads, and a caller that has more falls back to cgroup.procs.
V1_THREAD_FILE = "/tasks"
PROCS_FILE = "/cgroup.procs"


def join(files) -> None:
    """Move the calling process into the cgroup of each file (v1 `tasks`, or v2 `cgroup.procs`)."""
    whole_process = thread_count() != 1
    for path in files:
        if whole_process and path.endswith(V1_THREAD_FILE):
            path = path[: -len(V1_THREAD_FILE)] + PROCS_FILE
        fd = posix.open(path, posix.O_WRONLY | posix.O_CLOEXEC)
        try:
            posix.write(fd, b"0")
        finally:
            posix.close(fd)


def thread_count() -> int:
    """Threads of the calling process (/proc/self/stat's 20th field)."""
    fd = posix.open("/proc/self/stat", posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        data = posix.read(fd, 4096)
    finally:
        posix.close(fd)
    # The command name, in parentheses, may itself hold spaces and ")": count from the last ")".
    return int(data.rsplit(b")", 1)[1].split()[17])
