"""mydocker against Docker itself: the same probe image run under both, and the security facts compared.

The issue: "the same busybox probe run under mydocker and under Docker's defaults: CapEff/CapBnd,
NoNewPrivs, Seccomp mode, the set of masked paths and the set of blocked syscalls must be the same."

Docker is Debian's docker.io (20.10, with containerd 1.6 and runc 1.1), started privately (tests/dockerd.py) for this
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

import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.dockerd
from services.common.security import CAPABILITIES
from tests.conftest import ServiceTracker, temp_config_dir
from tests.dockerd import Dockerd, private_dockerd
from tests.e2e.conftest import Host, running_host

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
PROBE_SOURCE = HERE / "differential_probe.c"
DOCKER_IMAGE = "mdk-probe:latest"
MYDOCKER_IMAGE = "probe"
STATUS_KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")

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



@pytest.fixture(scope="module")
def host_unchanged() -> Iterator[None]:
    """Set up first and torn down last: the host's iptables, ip_forward, /run/containerd and /etc/docker as before."""
    with tests.dockerd.host_unchanged():
        yield


@pytest.fixture(scope="module")
def dockerd(host_unchanged: None) -> Iterator[Dockerd]:
    """A private dockerd for this module (tests/dockerd.py); everything it made is removed after."""
    with private_dockerd() as daemon:
        yield daemon


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
