"""Container init, run in the child the shim forks as PID 1 of the new pid namespace: applies the plan, then execs."""

# Every import is at the top: after pivot_root (or nsexec's setns) the host's Python library is out of reach.
# The plan comes from the shim in marshal format (plan.json's content): marshal is built in, while json
# and the re and enum it pulls in would grow the launcher and every shim forked from it.
import _signal
import fcntl
import marshal
import os
import stat
import termios

from services.common import linux
from services.executor import cgroup_join, confine, statefiles, users

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# exec keeps ignored signals ignored (Python ignores SIGPIPE and SIGXFSZ): give every one its default back.
_RESET_SIGNALS = (
    _signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT, _signal.SIGTERM, _signal.SIGCHLD, _signal.SIGHUP,
    _signal.SIGQUIT, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU,
)
CONTAINER_UMASK = 0o022


class InitError(Exception):
    """A system step of the setup failed; reported as a `failed` error line."""


class ExecError(Exception):
    """The command cannot be run as given (reported as `invalid`), with the exit code a shell would use."""

    def __init__(self, message: str, exit_code: int = 127, kind: str = statefiles.ERROR_INVALID):
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind


def resolve_executable(name: str, env) -> str:
    """The file execve() will run for argv[0], looked up in the env's PATH as Go's exec.LookPath does.

    Called inside the container after pivot_root, so the paths are the container's.
    """
    if "/" in name:
        candidates = [name]
    else:
        path = next((e[5:] for e in reversed(env) if e.startswith("PATH=")), DEFAULT_PATH)
        candidates = [os.path.join(directory or ".", name) for directory in path.split(":")]
    for candidate in candidates:
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        if "/" in name:
            raise ExecError(f'exec: "{name}": permission denied', exit_code=126)
    if "/" in name:
        raise ExecError(f'exec: "{name}": stat {name}: no such file or directory', exit_code=127)
    raise ExecError(f'exec: "{name}": executable file not found in $PATH', exit_code=127)


def report(status_fd: int, line: str) -> None:
    data = line.encode()
    while data:
        data = data[os.write(status_fd, data):]


def safe_target(rootfs: str, target: str) -> str:
    """Host path of `target` inside `rootfs`, refusing symlinks on the way: an image must not redirect mounts."""
    path = rootfs
    for part in [p for p in target.split("/") if p]:
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise InitError(f"{target} is a symbolic link in the image: refusing to mount over it")
    return path


MAX_SYMLINKS = 40


def resolve_in_rootfs(rootfs: str, target: str) -> str:
    """Host path of `target` with the image's symlinks followed as the container would see them, never out of `rootfs`.

    For the files docker also mounts through links (an image's /etc/resolv.conf is often one): like
    runc's securejoin, ".." stops at the root and an absolute link starts again from the rootfs.
    """
    resolved: list[str] = []
    pending = [p for p in target.split("/") if p]
    followed = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        path = os.path.join(rootfs, *resolved, part)
        if not os.path.islink(path):
            resolved.append(part)
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            raise InitError(f"{target}: too many symbolic links in the image")
        link = os.readlink(path)
        if link.startswith("/"):
            resolved = []
        pending = [p for p in link.split("/") if p] + pending
    return os.path.join(rootfs, *resolved)


def make_file_target(path: str) -> None:
    """An empty file at `path` (a checked safe_target) to bind a file onto, with its parent directories."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Whatever the image has there is mounted over as is: opening it could block (a fifo) or act (a device).
    if os.path.lexists(path):
        return
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def join_cgroups(plan: dict) -> None:
    # Before unsharing the cgroup namespace, so the container's cgroup becomes its root.
    cgroup_join.join(plan["cgroup_procs"])


def unshare_namespaces(plan: dict) -> None:
    flags = 0
    for name in plan["namespaces"]:
        flags |= linux.NAMESPACE_FLAGS[name]
    linux.unshare(flags)


def mount_rootfs(plan: dict, console: str | None = None) -> None:
    rootfs = plan["rootfs"]
    # Private first: without it every mount below would propagate to the host (the series' host-breaking bug).
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    # pivot_root needs the new root to be a mount point of its own.
    linux.mount(rootfs, rootfs, None, linux.MS_BIND | linux.MS_REC)
    for spec in plan["mounts"]:
        # .get: a plan written before file targets existed has no such key.
        if spec.get("target_is_file"):
            target = resolve_in_rootfs(rootfs, spec["target"])
            make_file_target(target)
        else:
            target = safe_target(rootfs, spec["target"])
            os.makedirs(target, exist_ok=True)
        try:
            linux.mount(spec["source"], target, spec["fstype"], spec["flags"], spec["data"] or None)
        except OSError:
            if not spec["fallback_bind"]:
                raise
            # Not the whole tree: submounts such as the host's cgroupfs stay out of the container.
            linux.mount(spec["fallback_bind"], target, None, linux.MS_BIND)
            linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | spec["flags"])
    for device in plan["devices"]:
        make_device(safe_target(rootfs, device["path"]), device)
    for link, target in plan["symlinks"]:
        os.symlink(target, safe_target(rootfs, link))
    if console is not None:
        # As runc does: the terminal at /dev/console, so ttyname() finds it inside the container.
        path = safe_target(rootfs, "/dev/console")
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        linux.mount(console, path, None, linux.MS_BIND)


def make_device(path: str, device: dict) -> None:
    """The node `device` describes at `path` (a checked safe_target), with its owner and mode."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    kind = stat.S_IFBLK if device["kind"] == "b" else stat.S_IFCHR
    os.mknod(path, kind | device["mode"], os.makedev(device["major"], device["minor"]))
    os.chown(path, device["uid"], device["gid"])
    os.chmod(path, device["mode"])


def pivot(rootfs: str) -> None:
    # pivot_root(".", ".") stacks the old root under the new one, so no directory is needed in the image.
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new_root)
        linux.pivot_root(".", ".")
        os.fchdir(old_root)
        # Slave before the detach, so the unmount cannot reach any peer.
        linux.mount(None, ".", None, linux.MS_SLAVE | linux.MS_REC)
        linux.umount2(".", linux.MNT_DETACH)
    finally:
        os.close(old_root)
        os.close(new_root)
    os.chdir("/")


def enter_workdir(cwd: str) -> None:
    # Docker creates a missing working directory rather than refuse to start.
    try:
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
    except OSError as err:
        raise ExecError(f'cannot use working directory "{cwd}": {err.strerror}', exit_code=126) from None


def setup_stdio(stdio, terminal: bool) -> None:
    os.setsid()
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)
    if terminal:
        # The pty slave becomes the controlling terminal of the container's session.
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    for fd in set(stdio):
        if fd > 2:
            os.close(fd)


def reset_signals() -> None:
    for signum in _RESET_SIGNALS:
        _signal.signal(signum, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def exec_command(args, env, executable: str) -> None:
    reset_signals()
    os.umask(CONTAINER_UMASK)
    try:
        os.execve(executable, list(args), dict(entry.split("=", 1) for entry in env))
    except OSError as err:
        raise ExecError(f'exec: "{args[0]}": {err.strerror}', exit_code=126) from None


def confined_identity(security: dict, env) -> tuple:
    """(identity, env with HOME) of the profile's user; an unknown user or group is the caller's mistake."""
    try:
        who = confine.identity(security)
    except users.UserError as err:
        raise ExecError(str(err), exit_code=126) from None
    return who, confine.with_home(env, who)


def prepare(plan: dict, stdio) -> tuple:
    """Every step before exec, privileges dropped last; returns (executable, env)."""
    security = plan["security"]
    # Under MYDOCKER_RUN, which pivot_root takes out of reach.
    programs = confine.read_programs(security["seccomp_file"])
    confine.set_oom_score_adj(security["oom_score_adj"])
    join_cgroups(plan)
    # The shim's pty lives in the host's devpts; its path must be read before pivot_root hides it.
    console = os.ttyname(stdio[0]) if plan["terminal"] else None
    unshare_namespaces(plan)
    mount_rootfs(plan, console)
    linux.sethostname(plan["hostname"])
    linux.set_link_up("lo")
    pivot(plan["rootfs"])
    confine.restrict_filesystem(security)
    enter_workdir(plan["cwd"])
    who, env = confined_identity(security, plan["env"])
    # Last before the drop: a low open-file limit must not fail our own reads above.
    confine.set_rlimits(security["rlimits"])
    confine.drop_privileges(security, who, programs)
    executable = resolve_executable(plan["args"][0], env)
    setup_stdio(stdio, plan["terminal"])
    return executable, env


def run(state_dir: str, plan_data: bytes, stdio, status_fd: int) -> None:
    """Never returns: execs the command, or reports one error line on `status_fd` and exits."""
    try:
        # Until the exec, ps would show the shim's name: this is the container's parked init.
        statefiles.set_comm(f"init {os.path.basename(state_dir)}")
        plan = marshal.loads(plan_data)
        # Read-write, so reads block until the executor writes and never see end-of-file.
        start_fd = os.open(os.path.join(state_dir, statefiles.START_FIFO), os.O_RDWR | os.O_CLOEXEC)
        executable, env = prepare(plan, stdio)
        report(status_fd, "R\n")
        if os.read(start_fd, 1) != b"s":
            raise InitError("the start signal was not recognised")
        exec_command(plan["args"], env, executable)
    except ExecError as err:
        report(status_fd, "E " + statefiles.format_error(err.kind, str(err)))
        os._exit(err.exit_code)
    except (InitError, OSError) as err:
        report(status_fd, "E " + statefiles.format_error(statefiles.ERROR_FAILED, f"container init: {err}"))
        os._exit(1)
    except BaseException as err:  # noqa: BLE001 - a forked child must never return into the shim's code
        message = f"container init: {type(err).__name__}: {err}"
        report(status_fd, "E " + statefiles.format_error(statefiles.ERROR_FAILED, message))
        os._exit(1)
