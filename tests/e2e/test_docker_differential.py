"""mydocker against Docker itself: the same probe image run under both, and the security facts compared.

The issue: "the same busybox probe run under mydocker and under Docker's defaults: CapEff/CapBnd,
NoNewPrivs, Seccomp mode, the set of masked paths and the set of blocked syscalls must be the same."

Docker is Debian's docker.io (20.10, with containerd 1.6 and runc 1.1), started privately for this
module: its own data, exec and run directories, no iptables, no bridge, a cgroup parent of its own,
and a private mount namespace in which a tmpfs covers /run and /etc/docker, so that neither its
mounts nor the files it insists on writing there (containerd's shim sockets under
/run/containerd/s, its trust key /etc/docker/key.json) ever reach the host. This kernel has no
AppArmor or SELinux, so Docker runs without an LSM profile, as mydocker does.

Each container runs once per runtime and option set (`--rm --network none`), printing the capability
lines of /proc/self/status, its mountinfo and the answers of tests/e2e/differential_probe.c.
Differences that come from Docker 20.10 being older than the moby code mydocker follows are asserted
as such: its seccomp profile (LATER_MOBY_CHANGES) and its capability list, which ends at CAP_AUDIT_READ
(CAPABILITIES_AFTER_DOCKER_20_10). Where our own bounding set lacks a capability (this sandbox has no
CAP_SYS_RESOURCE), Docker 20.10 cannot start a --privileged container at all: that is asserted too,
and Docker's nearest equivalent stands in for it (docker_flags). Any other difference fails.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.common.security import CAPABILITIES
from tests.conftest import ServiceTracker, temp_config_dir
from tests.e2e.conftest import Host, running_host

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
PROBE_SOURCE = HERE / "differential_probe.c"
# Debian's docker.io: the client of the same release as the daemon (another `docker` may come first in PATH).
DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")
INSTALL_HINT = "Docker is not installed: apt-get install docker.io (scripts/debian-packages-test.txt lists it)"
DOCKER_IMAGE = "mdk-probe:latest"
MYDOCKER_IMAGE = "probe"
STATUS_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

# The option sets compared, the same flags for both CLIs.
CONFIGS: dict[str, tuple[str, ...]] = {
    "default": (),
    "cap-add-sys-admin": ("--cap-add", "SYS_ADMIN"),
    "cap-drop-all-net-bind": ("--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE"),
    "no-new-privileges": ("--security-opt", "no-new-privileges"),
    # Bounded by our own bounding set in mydocker; see docker_flags for Docker on a host that lacks a capability.
    "privileged": ("--privileged",),
    "user-nobody": ("--user", "65534"),
}


# moby#41563 "Temporarily disable CAP_PERFMON, CAP_BPF, and CAP_CHECKPOINT_RESTORE" (Docker 20.10): Docker 20.10
# knows the capabilities up to CAP_AUDIT_READ only; --cap-add PERFMON is "unknown capability" and --privileged
# never grants 38-40. moby#42011 reverted it for Docker 23.0; mydocker's --privileged grants them, as later Docker does.
CAPABILITIES_AFTER_DOCKER_20_10 = ("PERFMON", "BPF", "CHECKPOINT_RESTORE")
DOCKER_20_10_CAPABILITIES = CAPABILITIES[: CAPABILITIES.index("AUDIT_READ") + 1]


def host_capabilities() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the capabilities our bounding set holds, those Docker 20.10 would ask for that it lacks), in number order.

    A sandbox may run us without some (this one lacks CAP_SYS_RESOURCE). mydocker's --privileged gives what
    the bounding set holds; Docker 20.10's asks runc for every capability it knows the kernel to have, and
    runc cannot grant one the bounding set lacks.
    """
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    bounding = next(
        int(line.split()[1], 16) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapBnd:")
    )
    known = CAPABILITIES[: last + 1]
    held = tuple(name for number, name in enumerate(known) if bounding >> number & 1)
    return held, tuple(name for name in known if name not in held and name in DOCKER_20_10_CAPABILITIES)


def docker_flags(config: str) -> tuple[str, ...]:
    """CONFIGS[config] for Docker, except --privileged on a host whose bounding set lacks a capability:
    there Docker cannot start it at all (test_docker_privileged_needs_every_capability_of_the_kernel), so
    it runs its nearest equivalent instead: every capability we hold, no seccomp, no masked or read-only paths."""
    held, lacking = host_capabilities()
    if config != "privileged" or not lacking:
        return CONFIGS[config]
    caps = tuple(f"--cap-add={name}" for name in held if name in DOCKER_20_10_CAPABILITIES)
    return ("--security-opt", "seccomp=unconfined", "--security-opt", "systempaths=unconfined", *caps)


# Compared between the runtimes under every option set; checked against the answers Docker's profile means
# (EXPECTED_DEFAULT, and what CAP_SYS_ADMIN opens) under these two.
SYSCALL_CONFIGS = ("default", "cap-add-sys-admin")
# What differential_probe.c must print (its table order); the test fails if a check is missing.
PROBE_CHECKS = (
    "mount", "umount2", "unshare_newuser", "unshare_newns", "setns", "clone_newuser", "clone3", "keyctl",
    "add_key", "request_key", "bpf", "perf_event_open", "ptrace", "lookup_dcookie", "syslog", "kexec_load",
    "init_module", "finit_module", "delete_module", "reboot", "settimeofday", "clock_settime", "clock_adjtime",
    "acct", "swapon", "quotactl", "iopl", "ioperm", "vhangup", "open_by_handle_at", "name_to_handle_at",
    "userfaultfd", "personality_query", "personality_linux32", "personality_3", "socket_vsock", "socket_alg",
    "socket_raw", "chroot", "mknod", "setgid", "setuid", "landlock_create_ruleset", "futex_waitv",
    "process_mrelease", "io_uring_setup", "get_mempolicy",
)
# Answers fixed by Docker's profile and default capabilities whatever the kernel: checked on their own too,
# so that both runtimes agreeing on something wrong (both allowing mount, say) still fails.
EXPECTED_DEFAULT = {
    "mount": "EPERM", "umount2": "EPERM", "unshare_newuser": "EPERM", "unshare_newns": "EPERM", "setns": "EPERM",
    "clone_newuser": "EPERM", "clone3": "ENOSYS", "keyctl": "EPERM", "add_key": "EPERM", "request_key": "EPERM",
    "bpf": "EPERM", "perf_event_open": "EPERM", "kexec_load": "EPERM", "init_module": "EPERM",
    "finit_module": "EPERM", "delete_module": "EPERM", "reboot": "EPERM", "settimeofday": "EPERM",
    "clock_settime": "EPERM", "acct": "EPERM", "swapon": "EPERM", "quotactl": "EPERM", "iopl": "EPERM",
    "ioperm": "EPERM", "vhangup": "EPERM", "open_by_handle_at": "EPERM", "userfaultfd": "EPERM",
    "lookup_dcookie": "EPERM", "personality_query": "ok", "personality_linux32": "ok", "personality_3": "EPERM",
    "socket_raw": "ok", "chroot": "ok", "mknod": "ok", "setgid": "ok", "setuid": "ok",
}


@dataclass(frozen=True)
class LaterMobyChange:
    """A syscall Docker 20.10's built-in profile answers differently from the later moby profile mydocker ships."""

    check: str
    change: str
    # Under which option sets the answers differ (elsewhere they must be equal).
    applies: tuple[str, ...]
    docker: str  # Docker 20.10's answer: an errno name, or "kernel" for anything but EPERM (the call got through)
    mydocker: str


_NOT_PRIVILEGED = tuple(name for name in CONFIGS if name != "privileged")
LATER_MOBY_CHANGES = (
    # moby#44562 "seccomp: block socket calls to AF_VSOCK in default profile" (Docker 23.0): the 20.10 backport
    # (moby#44564) was reverted by moby#44712 in 20.10.23, so Docker 20.10.24 still lets a container open an
    # AF_VSOCK socket, which is not namespaced; mydocker blocks it as every later Docker does.
    LaterMobyChange("socket_vsock", "moby#44562, reverted for 20.10 by moby#44712", _NOT_PRIVILEGED, "kernel", "EPERM"),
    # moby#52494 "seccomp: Block AF_ALG sockets in default profile (CVE-2026-31431)" (2026, backported to 29.x
    # as moby#52501): the kernel crypto API's page-cache write; Docker 20.10 lets socket(AF_ALG) through.
    LaterMobyChange("socket_alg", "moby#52494 (CVE-2026-31431)", _NOT_PRIVILEGED, "kernel", "EPERM"),
    # moby#45766 + moby#45837 "seccomp: always allow name_to_handle_at(2)" (backported to 23.0/24.0 as
    # moby#45834/moby#45833): Docker 20.10 still gates it on CAP_SYS_ADMIN; mydocker lets it reach the kernel.
    LaterMobyChange(
        "name_to_handle_at", "moby#45766/moby#45837",
        tuple(n for n in _NOT_PRIVILEGED if n != "cap-add-sys-admin"), "EPERM", "kernel",
    ),
)


# -- small helpers ----------------------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in ticks): a pid plus this names one process, not a reuse of its pid.

    None once the process is gone, zombies included: an exited shim waits, reparented, for this VM's
    pid 1 to reap it, which it does late; there is nothing left to kill.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def describe(pid: int) -> str:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{pid} state {stat.rpartition(')')[2].split()[0]}: {cmdline or stat.partition(' ')[2].partition(')')[0] + ')'}"
    return f"{pid} gone"


def proc_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rpartition(")")[2].split()[1])


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = proc_ppid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def pids_mentioning(text: str) -> set[int]:
    """Processes whose command line names `text` (a path unique to this module: never matched by a name)."""
    found = set()
    needle = text.encode()
    for pid in all_pids():
        try:
            if needle in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def mountinfo_lines() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def firewall_rules() -> str:
    """iptables-save and ip6tables-save without the timestamps and the packet counters that change by themselves."""
    dumps = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool) is None:
            continue
        result = subprocess.run([tool], capture_output=True, text=True, timeout=30)
        lines = [re.sub(r"\[\d+:\d+\]", "[counters]", line) for line in result.stdout.splitlines()]
        dumps.append(f"{tool} exit {result.returncode}\n" + "\n".join(line for line in lines if not line.startswith("#")))
    return "\n".join(dumps)


def cgroup_dirs_named(name: str) -> list[Path]:
    """`<hierarchy>/<our own cgroup there>/<name>` and `<hierarchy>/<name>` in every cgroup hierarchy that exists.

    runc resolves a relative --cgroup-parent against its own cgroup, which is dockerd's and so ours.
    """
    own: list[tuple[frozenset[str], str]] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own.append((frozenset(controllers.split(",")) if controllers else frozenset(), path))
    found = []
    for line in mountinfo_lines():
        pre, _, post = line.partition(" - ")
        fstype, _, super_options = post.split(" ", 2)
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mount_point = Path(pre.split()[4])
        options = set(super_options.split(","))
        # A v1 hierarchy is the /proc/self/cgroup line whose controllers (or name=) its mount options list.
        ours = [path for controllers, path in own if (controllers <= options if controllers else fstype == "cgroup2")]
        for base in (*ours[:1], "/"):
            candidate = mount_point / base.lstrip("/") / name
            if candidate.is_dir() and candidate not in found:
                found.append(candidate)
    return found


def remove_cgroup_tree(top: Path, timeout: float = 10.0) -> None:
    """rmdir `top` and the cgroups below it, deepest first, waiting out processes that are still exiting."""
    deadline = time.monotonic() + timeout
    for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(Path(entry[0]).parts)):
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


# -- the private dockerd ----------------------------------------------------------------------------


# Run by `unshare --mount --propagation private`, so every mount below stays in dockerd's own namespace:
# the host sees neither these tmpfs mounts nor the overlay, shm and netns mounts Docker makes later.
NAMESPACE_SETUP = """set -e
mount -t tmpfs -o mode=0755,size=16m mdk-dockerd-run /run
mount -t tmpfs -o mode=0755,size=1m mdk-dockerd-etc /etc/docker
exec "$@"
"""


@dataclass
class Dockerd:
    base: Path
    tag: str
    process: subprocess.Popen | None = None
    storage_driver: str = ""
    version: str = ""
    # (pid, start time) of every process of this daemon seen so far: containerd, shims.
    seen: set[tuple[int, int]] = field(default_factory=set)

    @property
    def socket(self) -> Path:
        return self.base / "docker.sock"

    @property
    def exec_root(self) -> Path:
        return self.base / "exec"

    @property
    def cgroup_parent(self) -> str:
        return f"mdk-docker-{self.tag}"

    @property
    def log(self) -> Path:
        return self.base / "dockerd.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The client keeps its config (and never a login) in the temp dir, not in ~/.docker.
        env["DOCKER_CONFIG"] = str(self.base / "client")
        env.pop("DOCKER_HOST", None)
        env.pop("DOCKER_CONTEXT", None)
        return env

    def cli(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(DOCKER), "-H", f"unix://{self.socket}", *args],
            env=self.env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr}{self.log_tail()}")
        return result

    def log_tail(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\ndockerd log:\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
        return ""

    def start(self, storage_driver: str) -> bool:
        """Start dockerd with `storage_driver`; True once `docker version` answers, False if dockerd exited first."""
        self.storage_driver = storage_driver
        data_root = self.base / f"data-{storage_driver}"
        args = [
            str(DOCKERD),
            "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none", "--userland-proxy=false",
            "--data-root", str(data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.base / "docker.pid"),
            "-H", f"unix://{self.socket}",
            # No --containerd: dockerd starts and stops a containerd of its own, its state under exec-root.
            "--containerd-namespace", f"mdk-{self.tag}",
            "--containerd-plugins-namespace", f"mdk-{self.tag}-plugins",
            "--cgroup-parent", self.cgroup_parent,
            "--storage-driver", storage_driver,
            "--log-level", "warn",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", NAMESPACE_SETUP, "mdk-dockerd", *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.note_processes()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            version = self.cli("version", "--format", "{{.Server.Version}}", timeout=10, check=False)
            if version.returncode == 0:
                self.version = version.stdout.strip()
                self.note_processes()
                return True
            time.sleep(0.2)
        return False

    def note_processes(self) -> None:
        """Remember dockerd, its descendants and the shims of its containerd (named by our exec-root path)."""
        if self.process is None:
            return
        pids = {self.process.pid} | descendants(self.process.pid) | pids_mentioning(str(self.exec_root))
        for pid in pids:
            started = proc_start_time(pid)
            if started is not None:
                self.seen.add((pid, started))

    def alive(self) -> list[int]:
        return sorted(pid for pid, started in self.seen if proc_start_time(pid) == started)

    def stop(self) -> None:
        """SIGTERM dockerd (which stops its containerd), SIGKILL after a deadline, then any leftover by pid."""
        if self.process is None:
            return
        self.note_processes()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, started in self.seen:
            # Checked right before the kill: the pid still names the process we saw.
            if proc_start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def host_unchanged() -> Iterator[None]:
    """Set up first and torn down last: the host's iptables, ip_forward, /run/containerd and /etc/docker as before."""
    rules_before = firewall_rules()
    run_containerd_before = Path("/run/containerd").exists()
    etc_docker_before = sorted(os.listdir("/etc/docker")) if Path("/etc/docker").is_dir() else None
    ip_forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    yield
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == ip_forward_before, "net.ipv4.ip_forward was changed"
    etc_docker_after = sorted(os.listdir("/etc/docker")) if Path("/etc/docker").is_dir() else None
    assert etc_docker_after == etc_docker_before, f"/etc/docker of the host changed: {etc_docker_before} -> {etc_docker_after}"
    rules_after = firewall_rules()
    assert rules_after == rules_before, "the host's iptables rules changed while Docker or mydocker ran:\n" + "\n".join(
        difflib.unified_diff(rules_before.splitlines(), rules_after.splitlines(), "before", "after", lineterm="")
    )
    assert Path("/run/containerd").exists() == run_containerd_before, "/run/containerd of the host was touched"


@pytest.fixture(scope="module")
def dockerd(host_unchanged: None) -> Iterator[Dockerd]:
    """A private dockerd for this module (see the module docstring); everything it made is removed after."""
    for path in (DOCKERD, DOCKER):
        if not path.exists():
            pytest.fail(f"{path} is missing. {INSTALL_HINT}")
    if not Path("/etc/docker").is_dir():
        pytest.fail(f"/etc/docker is missing (docker.io ships it and dockerd writes its key there). {INSTALL_HINT}")
    if shutil.which("unshare") is None:
        pytest.fail("unshare is missing: apt-get install util-linux")
    base = Path(tempfile.mkdtemp(prefix="mdk-dkr-", dir="/tmp"))
    daemon = Dockerd(base=base, tag=uuid.uuid4().hex[:8])
    try:
        started = False
        # overlay2 as Docker defaults to; vfs where this filesystem cannot carry overlay (a fresh data-root each).
        for driver in ("overlay2", "vfs"):
            started = daemon.start(driver)
            if started:
                break
            daemon.stop()
        if not started:
            pytest.fail(f"dockerd did not start (overlay2, then vfs){daemon.log_tail()}")
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            if daemon.process is not None and daemon.process.poll() is None:
                leftovers = daemon.cli("ps", "-a", "-q", check=False).stdout.split()
                if leftovers:
                    daemon.cli("rm", "-f", *leftovers, check=False)
        daemon.stop()
        alive = daemon.alive()
        # Anything still mounted below our temp dir in our own namespace (nothing, with the private namespace).
        mounts = [line.split()[4] for line in mountinfo_lines() if line.split()[4].startswith(str(base))]
        for target in reversed(mounts):
            subprocess.run(["umount", "-l", target], check=False)
        cgroups = cgroup_dirs_named(daemon.cgroup_parent)
        for directory in cgroups:
            remove_cgroup_tree(directory)
        shutil.rmtree(base, ignore_errors=True)
        assert not alive, f"dockerd's processes outlived SIGTERM and SIGKILL: {[describe(pid) for pid in alive]}"
        assert not mounts, f"dockerd left mounts in the host's namespace: {mounts}"
        assert not cgroup_dirs_named(daemon.cgroup_parent), f"cgroups of {daemon.cgroup_parent} remain"
        assert not any(str(base) in line or daemon.tag in line for line in mountinfo_lines())
        remaining = [pid for pid in pids_mentioning(str(base)) if proc_start_time(pid) is not None]
        assert not remaining, f"processes naming the Docker temp dir remain: {[describe(pid) for pid in remaining]}"


@pytest.fixture(scope="module")
def mydocker_host(host_unchanged: None) -> Iterator[Host]:
    """mydocker's three services for this module, on temp roots, removed after (tests/e2e/conftest.py)."""
    tracker = ServiceTracker()
    with temp_config_dir() as config:
        try:
            with running_host(config, tracker, cgroup_prefix="mdk-diff") as host:
                yield host
        finally:
            tracker.kill_leftovers()


@pytest.fixture(scope="module")
def probe_image(dockerd: Dockerd, mydocker_host: Host) -> None:
    """mydocker's busybox rootfs tar plus a static differential_probe, imported into both runtimes."""
    busybox = mydocker_host.root / "image" / "busybox.tar"
    assert busybox.is_file(), f"scripts/up did not build {busybox}"
    with tempfile.TemporaryDirectory(prefix="mdk-diff-img-", dir="/tmp") as work:
        binary = Path(work) / "differential_probe"
        built = subprocess.run(
            ["gcc", "-static", "-O1", "-Wall", "-o", str(binary), str(PROBE_SOURCE)], capture_output=True, text=True, timeout=120
        )
        assert built.returncode == 0, f"gcc -static failed (apt-get install gcc libc6-dev):\n{built.stderr}"
        image = Path(work) / "probe.tar"
        shutil.copyfile(busybox, image)
        with tarfile.open(image, "a") as archive:
            info = archive.gettarinfo(str(binary), arcname="bin/differential_probe")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755
            with open(binary, "rb") as handle:
                archive.addfile(info, handle)
        dockerd.cli("import", str(image), DOCKER_IMAGE)
        mydocker_host.mydocker("import", str(image), MYDOCKER_IMAGE)


# -- what a container reports --------------------------------------------------------------------------

# grep, cat and the probe are each their own process: /proc/self is theirs, with the container's credentials.
REPORT = (
    "grep -E '^(" + "|".join(STATUS_KEYS) + "):' /proc/self/status; echo @@mountinfo; cat /proc/self/mountinfo; "
    "echo @@probe; /bin/differential_probe"
)


@dataclass(frozen=True)
class Mount:
    mount_point: str
    root: str
    options: tuple[str, ...]
    fstype: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    @property
    def is_mask(self) -> bool:
        """runc's masks: /dev/null bound over a file, an empty read-only tmpfs over a directory."""
        null_bind = self.fstype in ("tmpfs", "devtmpfs") and self.root.endswith("/null")
        empty_tmpfs = self.fstype == "tmpfs" and self.root == "/" and self.read_only
        return null_bind or empty_tmpfs


@dataclass(frozen=True)
class Report:
    raw: str
    status: dict[str, str]
    mounts: tuple[Mount, ...]
    syscalls: dict[str, str]

    def masked(self) -> set[str]:
        return {m.mount_point for m in self.mounts if m.mount_point.startswith(("/proc/", "/sys/")) and m.is_mask}

    def read_only_proc(self) -> set[str]:
        return {m.mount_point for m in self.mounts if m.mount_point.startswith("/proc/") and m.read_only}


def parse_report(output: str) -> Report:
    status_text, _, rest = output.partition("@@mountinfo\n")
    mount_text, _, probe_text = rest.partition("@@probe\n")
    status = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        status[key.strip()] = value.strip()
    mounts = []
    for line in mount_text.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        fstype = post.split()[0]
        mounts.append(Mount(fields[4], fields[3], tuple(fields[5].split(",")), fstype))
    syscalls = {}
    for line in probe_text.splitlines():
        name, _, answer = line.partition(" ")
        syscalls[name] = answer
    return Report(output, status, tuple(mounts), syscalls)


class Reports:
    """One container per runtime and option set, run on first use and kept for the module's tests."""

    def __init__(self, dockerd: Dockerd, host: Host):
        self.dockerd = dockerd
        self.host = host
        self.cache: dict[tuple[str, str], Report] = {}

    def docker(self, config: str) -> Report:
        key = ("docker", config)
        if key not in self.cache:
            result = self.dockerd.cli("run", "--rm", "--network", "none", *docker_flags(config), DOCKER_IMAGE, "sh", "-c", REPORT)
            self.cache[key] = parse_report(result.stdout)
        return self.cache[key]

    def mydocker(self, config: str) -> Report:
        key = ("mydocker", config)
        if key not in self.cache:
            result = self.host.mydocker("run", "--rm", "--network", "none", *CONFIGS[config], MYDOCKER_IMAGE, "sh", "-c", REPORT)
            self.cache[key] = parse_report(result.stdout)
        return self.cache[key]


@pytest.fixture(scope="module")
def reports(dockerd: Dockerd, mydocker_host: Host, probe_image: None) -> Reports:
    return Reports(dockerd, mydocker_host)


def side_by_side(docker: dict, mydocker: dict) -> str:
    keys = sorted(set(docker) | set(mydocker))
    return "\n".join(f"  {k:<24} docker={docker.get(k)!s:<16} mydocker={mydocker.get(k)!s}" for k in keys)


# -- the tests -------------------------------------------------------------------------------------------


def test_private_dockerd_is_debian_docker_20_10_with_seccomp_and_no_lsm(dockerd: Dockerd) -> None:
    """The Docker compared against is Debian's 20.10 with its default seccomp profile and no AppArmor or SELinux
    (LATER_MOBY_CHANGES and CAPABILITIES_AFTER_DOCKER_20_10 describe that release)."""
    assert dockerd.version.startswith("20.10."), f"expected Debian's docker.io 20.10, got {dockerd.version}"
    info = dockerd.cli("info", "--format", "{{.CgroupDriver}} {{.Driver}} {{json .SecurityOptions}}").stdout
    driver, storage, security = info.strip().split(" ", 2)
    assert driver == "cgroupfs" and storage == dockerd.storage_driver
    assert "name=seccomp,profile=default" in security, security
    assert "apparmor" not in security and "selinux" not in security, security


@pytest.mark.parametrize("config", list(CONFIGS))
def test_status_lines_match(reports: Reports, config: str) -> None:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb, NoNewPrivs and the Seccomp mode (not Seccomp_filters: runc loads
    one filter, mydocker two) are the same lines in both runtimes."""
    docker, mydocker = reports.docker(config), reports.mydocker(config)
    assert set(docker.status) == set(STATUS_KEYS), docker.raw
    docker_status, mydocker_status = dict(docker.status), dict(mydocker.status)
    if config == "privileged":
        # CAPABILITIES_AFTER_DOCKER_20_10 (moby#41563, reverted by moby#42011): mydocker grants the three that our
        # bounding set holds, Docker 20.10 none of them; the sets must otherwise be the same.
        held, _ = host_capabilities()
        later = sum(1 << CAPABILITIES.index(name) for name in CAPABILITIES_AFTER_DOCKER_20_10 if name in held)
        for key in ("CapPrm", "CapEff", "CapBnd"):
            docker_caps, mydocker_caps = int(docker_status.pop(key), 16), int(mydocker_status.pop(key), 16)
            assert docker_caps & later == 0 and mydocker_caps == docker_caps | later, (
                f"{key}: docker {docker_caps:016x}, mydocker {mydocker_caps:016x}, later capabilities {later:016x}"
            )
    assert docker_status == mydocker_status, f"{CONFIGS[config]}:\n{side_by_side(docker_status, mydocker_status)}"


def test_status_lines_say_what_the_options_mean(reports: Reports) -> None:
    """The shared answers are the right ones: Docker's 14 capabilities, filter mode, and each option's effect."""
    default = reports.docker("default").status
    assert default["CapEff"] == default["CapBnd"] == default["CapPrm"] == "00000000a80425fb"
    assert (default["CapInh"], default["CapAmb"], default["NoNewPrivs"], default["Seccomp"]) == ("0" * 16, "0" * 16, "0", "2")
    assert int(reports.docker("cap-add-sys-admin").status["CapEff"], 16) == 0xA80425FB | 1 << 21
    assert reports.docker("cap-drop-all-net-bind").status["CapBnd"] == f"{1 << 10:016x}"
    assert reports.docker("no-new-privileges").status["NoNewPrivs"] == "1"
    privileged = reports.docker("privileged").status
    assert privileged["Seccomp"] == "0" and privileged["CapEff"] == privileged["CapBnd"]
    nobody = reports.docker("user-nobody").status
    assert nobody["CapEff"] == nobody["CapPrm"] == "0" * 16 and nobody["CapBnd"] == "00000000a80425fb"


def test_docker_privileged_needs_every_capability_of_the_kernel(reports: Reports) -> None:
    """Where our bounding set lacks a capability the kernel has, Docker 20.10 cannot run --privileged (runc 1.1
    is asked for every capability, --cap-drop is ignored under --privileged) while mydocker gives the container
    what the bounding set holds: a deliberate difference, asserted as such. With a full bounding set, both run."""
    held, lacking = host_capabilities()
    later = sum(1 << CAPABILITIES.index(name) for name in CAPABILITIES_AFTER_DOCKER_20_10 if name in held)
    docker = reports.dockerd.cli(
        "run", "--rm", "--network", "none", "--privileged", DOCKER_IMAGE, "grep", "^CapBnd:", "/proc/self/status", check=False
    )
    mydocker = reports.host.mydocker(
        "run", "--rm", "--network", "none", "--privileged", MYDOCKER_IMAGE, "grep", "^CapBnd:", "/proc/self/status"
    )
    held_mask = sum(1 << CAPABILITIES.index(name) for name in held)
    assert mydocker.stdout.split() == ["CapBnd:", f"{held_mask:016x}"]
    if lacking:
        assert docker.returncode != 0 and "unable to apply caps: operation not permitted" in docker.stderr, (
            f"our bounding set lacks {lacking}, yet Docker's --privileged gave: "
            f"{docker.returncode} {docker.stdout}{docker.stderr}"
        )
    else:
        assert docker.returncode == 0, docker.stderr
        assert docker.stdout.split() == ["CapBnd:", f"{held_mask & ~later:016x}"]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_masked_and_read_only_proc_paths_match(reports: Reports, config: str) -> None:
    """The masks under /proc and /sys (/dev/null binds, empty read-only tmpfs) and the read-only mounts under /proc."""
    docker, mydocker = reports.docker(config), reports.mydocker(config)
    assert docker.masked() == mydocker.masked(), (
        f"{CONFIGS[config]}: masked only by Docker {sorted(docker.masked() - mydocker.masked())}, "
        f"only by mydocker {sorted(mydocker.masked() - docker.masked())}"
    )
    assert docker.read_only_proc() == mydocker.read_only_proc(), (
        f"{CONFIGS[config]}: read-only only in Docker {sorted(docker.read_only_proc() - mydocker.read_only_proc())}, "
        f"only in mydocker {sorted(mydocker.read_only_proc() - docker.read_only_proc())}"
    )
    if config == "privileged":
        assert docker.masked() == set() and docker.read_only_proc() == set()
    else:
        # The paths of moby's list that this kernel has are there (at least /proc/keys and /proc/timer_list).
        assert {"/proc/keys", "/proc/timer_list"} <= docker.masked()
        assert {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"} & docker.read_only_proc()


@pytest.mark.parametrize("config", list(CONFIGS))
def test_syscall_answers_match(reports: Reports, config: str) -> None:
    """Every probe check answers the same under both, except LATER_MOBY_CHANGES, which must differ as stated."""
    docker, mydocker = reports.docker(config).syscalls, reports.mydocker(config).syscalls
    assert list(docker) == list(PROBE_CHECKS), f"the probe's checks changed under Docker:\n{reports.docker(config).raw}"
    assert list(mydocker) == list(PROBE_CHECKS), f"the probe's checks changed under mydocker:\n{reports.mydocker(config).raw}"
    expected_differences = {}
    for change in LATER_MOBY_CHANGES:
        if config not in change.applies:
            continue
        answers = (("Docker", docker[change.check], change.docker), ("mydocker", mydocker[change.check], change.mydocker))
        for runtime, answer, wanted in answers:
            where = f"{change.check} under {runtime} {CONFIGS[config]}: {answer} ({change.change})"
            if wanted == "kernel":
                assert answer != "EPERM", where
            else:
                assert answer == wanted, where
        expected_differences[change.check] = change.change
    compared_docker = {k: v for k, v in docker.items() if k not in expected_differences}
    compared_mydocker = {k: v for k, v in mydocker.items() if k not in expected_differences}
    differing = {k for k in compared_docker if compared_docker[k] != compared_mydocker.get(k)}
    assert not differing, f"{CONFIGS[config]}:\n" + side_by_side(
        {k: docker[k] for k in sorted(differing)}, {k: mydocker[k] for k in sorted(differing)}
    )


@pytest.mark.parametrize("config", SYSCALL_CONFIGS)
def test_syscall_answers_are_dockers_defaults(reports: Reports, config: str) -> None:
    """Both runtimes answer the issue's list as Docker's profile means it, not merely the same as each other."""
    for runtime, answers in (("Docker", reports.docker(config).syscalls), ("mydocker", reports.mydocker(config).syscalls)):
        if config == "default":
            wrong = {k: answers[k] for k, v in EXPECTED_DEFAULT.items() if answers[k] != v}
            assert not wrong, f"{runtime}, default profile: {wrong}"
        else:
            # CAP_SYS_ADMIN opens the namespace and mount calls to the kernel, and nothing that needs another capability.
            opened = (
                "mount", "umount2", "unshare_newuser", "unshare_newns", "setns", "clone_newuser", "clone3", "bpf",
                "perf_event_open", "quotactl",
            )
            still_blocked = (
                "keyctl", "add_key", "request_key", "reboot", "kexec_load", "init_module", "acct", "swapon", "iopl",
                "vhangup", "settimeofday", "personality_3",
            )
            assert all(answers[k] != "EPERM" for k in opened), {k: answers[k] for k in opened}
            assert all(answers[k] == "EPERM" for k in still_blocked), {k: answers[k] for k in still_blocked}
            assert answers["clone3"] != "ENOSYS", answers["clone3"]
