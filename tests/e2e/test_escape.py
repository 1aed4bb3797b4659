"""The escape suite: a static probe (tests/probe/probe.c) tries, from inside containers, what a container must not do.

One set of services for the module (the `host` fixture below): every test runs its containers with
`--rm` or removes them, and an autouse fixture checks after each test that no container is left and
that the host is as it was: core_pattern and vm.overcommit_memory hold their values, no mount came
or went outside other tests' roots, lo keeps its flags, the clock did not jump.

Results are the ones Docker gives with its default profile (the 14 capabilities, its seccomp
profile, masked and read-only /proc paths, read-only /sys, the device cgroup): EPERM from seccomp
and missing capabilities, EROFS from read-only mounts, ESRCH for a pid outside the container's pid
namespace. What the host kernel itself refuses (no module support here, say) is learnt by running
the probe on the host, in throwaway mount, network, uts and ipc namespaces, and a privileged
container must get exactly the host's answers.

Every probe is harmless when it succeeds (see probe.c): sysctls get their own value back, nothing
is written to sysrq-trigger, module and kexec loads get invalid images, settimeofday gets no time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.executor.cgroup_layout import CgroupLayout
from tests import probe as probe_image
from tests.conftest import ServiceTracker, temp_config_dir
from tests.e2e.conftest import Host, one_line_error, running_host

pytestmark = pytest.mark.root

IMAGE = "probe"
PROBE = probe_image.PROBE
# Docker's default capability set (moby oci/caps/defaults.go), as /proc/<pid>/status prints it.
DEFAULT_CAPS = "00000000a80425fb"
CAP_NET_ADMIN = 1 << 12
CAP_SYS_ADMIN = 1 << 21
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
OVERCOMMIT = Path("/proc/sys/vm/overcommit_memory")
# Docker's masked directories: an empty read-only tmpfs inside a container.
MASKED_DIRS = ("/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
# Mount points other work on this machine may add or remove while we run: other tests' temp roots
# and the default mydocker instance. Everything else must be the same after each test.
FOREIGN_MOUNT_PREFIXES = ("/tmp/mdk-", "/var/lib/mydocker/", "/run/mydocker/", "/run/netns/")


# -- the probe and its image ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def probe_binary() -> Iterator[Path]:
    """probe.c compiled once per session (gcc -static -O2) into a temp dir, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="mdk-probe-", dir="/tmp"))
    try:
        yield probe_image.compile_probe(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def host(probe_binary: Path) -> Iterator[Host]:
    """One set of services for the module (containers take ~0.2 s each), with the `probe` image imported.

    Module-scoped, so it cannot use the function-scoped config fixtures: the same steps with a cgroup
    parent of its own ("mdk-escape-<hex>"), everything removed at the end by running_host.
    """
    tracker = ServiceTracker()
    try:
        with temp_config_dir() as config, running_host(config, tracker, "mdk-escape") as started:
            tar = config.root.parent / "probe.tar"
            probe_image.build_image(config.root / "image" / "busybox.tar", probe_binary, tar)
            started.mydocker("import", str(tar), IMAGE)
            tar.unlink()
            yield started
    finally:
        tracker.kill_leftovers()


@pytest.fixture
def scratch(host: Host) -> Iterator[Path]:
    """A temp dir of this test below the module's own temp base, so the mount comparison covers it."""
    path = host.root.parent / f"scratch-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- host state ----------------------------------------------------------------------------------


def foreign(mount_point: str, own_base: str) -> bool:
    return mount_point.startswith(FOREIGN_MOUNT_PREFIXES) and not mount_point.startswith(own_base)


def host_mounts(own_base: Path) -> list[tuple[str, ...]]:
    """Every mount of the host (point, root, options, fstype, source, super options) but other work's."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            tail = fields[fields.index("-") + 1:]
            if not foreign(fields[4], f"{own_base}/"):
                found.append((fields[4], fields[3], fields[5], *tail))
    return sorted(found)


def host_state(own_base: Path) -> dict:
    return {
        "core_pattern": CORE_PATTERN.read_bytes(),
        "overcommit_memory": OVERCOMMIT.read_bytes(),
        "lo_flags": Path("/sys/class/net/lo/flags").read_text(),
        "mounts": host_mounts(own_base),
    }


def clock_offset() -> float:
    """Wall clock minus monotonic clock: it moves only when someone sets the time."""
    return time.time() - time.monotonic()


@pytest.fixture(autouse=True)
def host_unchanged(host: Host) -> Iterator[None]:
    """After each test: no container left, and the host's sysctls, mounts, lo and clock as before."""
    base = host.root.parent
    before, offset = host_state(base), clock_offset()
    yield
    leftovers = host.mydocker("ps", "-a", "-q").stdout.split()
    if leftovers:
        host.mydocker("rm", "-f", *leftovers)
    after = host_state(base)
    assert after["core_pattern"] == before["core_pattern"]
    assert after["overcommit_memory"] == before["overcommit_memory"]
    assert after["lo_flags"] == before["lo_flags"]
    appeared = sorted(set(after["mounts"]) - set(before["mounts"]))
    vanished = sorted(set(before["mounts"]) - set(after["mounts"]))
    assert (appeared, vanished) == ([], []), f"host mounts changed: new {appeared}, gone {vanished}"
    assert abs(clock_offset() - offset) < 5, "the host's clock was set"
    assert leftovers == [], f"the test left containers behind: {leftovers}"


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A host process to ptrace from containers; afterwards it must be untraced and still alive."""
    process = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield process.pid
        assert tracer_pid(process.pid) == 0
        assert process.poll() is None, "the host's sleep died"
    finally:
        process.kill()
        process.wait(timeout=10)


def tracer_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no TracerPid in /proc/{pid}/status")


def root_device() -> tuple[str, str]:
    """("MAJ:MIN", fstype) of the host's root filesystem."""
    device = os.stat("/").st_dev
    fstype = ""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == "/":
                fstype = fields[fields.index("-") + 1]
    return f"{os.major(device)}:{os.minor(device)}", fstype


def capless_char_device() -> tuple[str, str]:
    """(path, "MAJ:MIN") of a character device outside the default list whose open needs no capability.

    A refusal to open it inside a container is then the device cgroup's alone (/dev/kmsg, by contrast,
    also wants CAP_SYSLOG for reading where kernel.dmesg_restrict is set).
    """
    for path in (Path("/dev/loop-control"), Path("/dev/fuse")):
        if path.is_char_device():
            try:
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError:
                continue
            info = path.stat()
            return str(path), f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    pytest.fail("needs /dev/loop-control or /dev/fuse that root can open: load the loop module (modprobe loop)")


def openable_block_device() -> str:
    """MAJ:MIN of a block device the host lets root open (loop devices first), so a refusal proves the device cgroup."""
    disks = sorted(path for path in Path("/dev").iterdir() if path.name[:2] in ("vd", "sd"))
    candidates = sorted(Path("/dev").glob("loop[0-9]*")) + disks
    for path in candidates:
        try:
            info = path.stat()
        except OSError:
            continue
        if not path.is_block_device():
            continue
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            continue
        return f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    pytest.fail("needs a block device root can open (a loop device or a disk): load the loop module (modprobe loop)")


# -- running things ------------------------------------------------------------------------------


def run_in(host: Host, *args: str, options: tuple[str, ...] = ()) -> str:
    """`run --rm [options] probe ARGS`: its stdout; it must exit 0."""
    result = host.mydocker("run", "--rm", *options, IMAGE, *args, check=False)
    assert result.returncode == 0, f"run {options} {args}: exit {result.returncode} {result.stdout!r} {result.stderr!r}"
    return result.stdout


def probe(host: Host, *probes: str, options: tuple[str, ...] = ()) -> dict[str, str]:
    """Each probe's result in a fresh container run with `options`."""
    results = probe_image.parse(run_in(host, PROBE, *probes, options=options))
    assert list(results) == list(probes)
    return results


def status(
    host: Host, options: tuple[str, ...] = (), exec_in: str = "", exec_options: tuple[str, ...] = ()
) -> dict[str, str]:
    """The capability, no_new_privs and seccomp lines of /proc/self/status of a container's process."""
    command = ("grep", "-E", r"^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):", "/proc/self/status")
    if exec_in:
        output = host.mydocker("exec", *exec_options, exec_in, *command).stdout
    else:
        output = run_in(host, *command, options=options)
    return dict(line.split(":\t") for line in output.splitlines())


def own_bounding_set() -> str:
    """CapBnd of this process (the services started from it have the same): what --privileged gets."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return line.split()[1]
    raise AssertionError("no CapBnd line")


def masked_file() -> dict[str, str]:
    """The expected read of a masked /proc file: "masked" (/dev/null over it), or ENOENT where this kernel has none."""
    files = {"read_keys": "/proc/keys", "read_timer_list": "/proc/timer_list", "read_kcore": "/proc/kcore"}
    return {name: "masked" if os.path.exists(path) else "ENOENT" for name, path in files.items()}


def masked_dirs_with_entries() -> list[str]:
    """Docker's masked directories that have entries on this host: inside, each must read as empty."""
    return [path for path in MASKED_DIRS if os.path.isdir(path) and os.listdir(path)]


@contextlib.contextmanager
def detached(host: Host, *options: str) -> Iterator[str]:
    """A running `probe` container (sleep) with `options`; removed afterwards."""
    container_id = host.mydocker("run", "-d", *options, IMAGE, "sleep", "600").stdout.strip()
    try:
        yield container_id
    finally:
        host.mydocker("rm", "-f", container_id)


# -- the probe's reference run on the host ------------------------------------------------------------

# Probes whose answer depends on nothing a container's namespaces change: a privileged container
# must get the host's answer. Left out: ptrace_outside (the pid namespace hides host pids),
# release_agent (the cgroup namespace), raise_cgroup_limit (no cgroupfs inside; on the host it would
# write to the test runner's own cgroup), the volume probes (paths).
HOST_COMPARED = (
    "write_core_pattern", "write_proc_sys", "sysrq_trigger", "read_keys", "read_timer_list", "read_kcore",
    "remount_sys_rw", "mount_proc", "mount_tmpfs", "mount_debugfs", "mount_cgroup", "mount_cgroup2",
    "mount_host_disk", "mknod_open_block", "mknod_open_char", "mknod_open_char_kmsg",
    "unshare_user", "unshare_mount", "unshare_net", "keyctl", "bpf", "kexec_load", "init_module", "finit_module",
    "settimeofday", "set_lo_down",
)


def with_params(names: tuple[str, ...]) -> list[str]:
    """Probe arguments for `names`, with the parameters this host calls for."""
    disk, fstype = root_device()
    params = {
        "mount_host_disk": f"{disk}:{fstype}",
        "mknod_open_block": openable_block_device(),
        "mknod_open_char": capless_char_device()[1],
    }
    return [f"{name}={params[name]}" if name in params else name for name in names]


def by_name(results: dict[str, str]) -> dict[str, str]:
    return {argument.partition("=")[0]: result for argument, result in results.items()}


@pytest.fixture(scope="module")
def host_reference(host: Host, probe_binary: Path) -> dict[str, str]:
    """What this host's kernel lets root do, by probe name: the probe run outside any container.

    In throwaway mount (private), network, uts and ipc namespaces, so mounts, lo and the hostname
    are private copies; sysctls, keys, modules, the clock and devices are the host's own.
    """
    work = host.root.parent / "host-probe"
    work.mkdir()
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--net", "--uts", "--ipc",
             str(probe_binary), *with_params(HOST_COMPARED)],
            env={**os.environ, "PROBE_TMP": str(work)},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        assert os.listdir(work) == [], "the probe left scratch files behind"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return by_name(probe_image.parse(result.stdout))


# -- the default profile ---------------------------------------------------------------------------


def test_default_container_blocks_every_probe(host, sleeper):
    disk, fstype = root_device()
    block = openable_block_device()
    char = capless_char_device()[1]
    firmware_dirs = masked_dirs_with_entries()
    probes = [
        "write_core_pattern", "write_proc_sys", "sysrq_trigger", "read_keys", "read_timer_list", "read_kcore",
        *(f"list={path}" for path in firmware_dirs),
        "remount_sys_rw", "mount_proc", "mount_tmpfs", "mount_debugfs", "mount_cgroup", "mount_cgroup2",
        f"mount_host_disk={disk}:{fstype}", f"mknod_open_block={block}", f"mknod_open_char={char}",
        "mknod_open_char_kmsg", "release_agent", "unshare_user", "unshare_mount", "unshare_net", "keyctl", "bpf",
        f"ptrace_outside={sleeper}",
        "kexec_load", "init_module", "finit_module", "settimeofday", "raise_cgroup_limit", "set_lo_down",
    ]
    results = probe(host, *probes)

    read_only_proc = "EROFS" if os.path.exists("/proc/sysrq-trigger") else "ENOENT"
    assert results == {
        # /proc/sys is bound read-only; sysrq-trigger too (where the kernel has one).
        "write_core_pattern": "EROFS",
        "write_proc_sys": "EROFS",
        "sysrq_trigger": read_only_proc,
        # /dev/null over the masked files, an empty read-only tmpfs over the masked directories.
        **masked_file(),
        **{f"list={path}": "empty" for path in firmware_dirs},
        # mount(2), unshare(2), keyctl(2), bpf(2) and the kernel-wide calls: seccomp's EPERM
        # (they need CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_BOOT, CAP_SYS_TIME in Docker's profile).
        "remount_sys_rw": "EPERM",
        "mount_proc": "EPERM",
        "mount_tmpfs": "EPERM",
        "mount_debugfs": "EPERM",
        "mount_cgroup": "EPERM",
        "mount_cgroup2": "EPERM",
        # mknod is allowed (CAP_MKNOD, "b *:* m"), the mount is not.
        f"mount_host_disk={disk}:{fstype}": "EPERM",
        # mknod works, open does not: the device cgroup (the host lets root open both).
        f"mknod_open_block={block}": "EPERM",
        f"mknod_open_char={char}": "EPERM",
        # The device cgroup, and for reading kmsg also the missing CAP_SYSLOG (kernel.dmesg_restrict).
        "mknod_open_char_kmsg": "EPERM",
        # CVE-2022-0492's way out (a v1 hierarchy's release_agent) fails at the mount already.
        "release_agent": "EPERM",
        "unshare_user": "EPERM",
        "unshare_mount": "EPERM",
        "unshare_net": "EPERM",
        "keyctl": "EPERM",
        "bpf": "EPERM",
        # ptrace itself is allowed (kernel >= 4.8), but the host's pid is not in the container's pid namespace.
        f"ptrace_outside={sleeper}": "ESRCH",
        "kexec_load": "EPERM",
        "init_module": "EPERM",
        "finit_module": "EPERM",
        "settimeofday": "EPERM",
        # No cgroupfs inside a default container: its own cgroup's files are out of reach.
        "raise_cgroup_limit": "ENOENT",
        # SIOCSIFFLAGS needs CAP_NET_ADMIN, which the default set lacks.
        "set_lo_down": "EPERM",
    }


def test_default_container_reads_but_cannot_write_proc_sys(host):
    results = probe(
        host, "read=/proc/sys/kernel/core_pattern", "read=/proc/sys/vm/overcommit_memory", "create_file=/sys/kernel"
    )
    assert results == {
        "read=/proc/sys/kernel/core_pattern": "data",
        "read=/proc/sys/vm/overcommit_memory": "data",
        "create_file=/sys/kernel": "EROFS",
    }


def test_default_status_lines(host):
    assert status(host) == {
        "CapInh": "0000000000000000",
        "CapPrm": DEFAULT_CAPS,
        "CapEff": DEFAULT_CAPS,
        "CapBnd": DEFAULT_CAPS,
        "CapAmb": "0000000000000000",
        "NoNewPrivs": "0",
        "Seccomp": "2",
    }


def test_no_new_privileges(host):
    lines = status(host, options=("--security-opt", "no-new-privileges"))
    assert (lines["NoNewPrivs"], lines["Seccomp"], lines["CapEff"]) == ("1", "2", DEFAULT_CAPS)


def test_seccomp_unconfined(host):
    options = ("--security-opt", "seccomp=unconfined")
    lines = status(host, options=options)
    assert (lines["Seccomp"], lines["NoNewPrivs"], lines["CapEff"]) == ("0", "0", DEFAULT_CAPS)
    # Without the filter keyctl answers; mount still needs CAP_SYS_ADMIN, which the container lacks.
    assert probe(host, "keyctl", "mount_tmpfs", options=options) == {"keyctl": "ok", "mount_tmpfs": "EPERM"}


def test_custom_seccomp_profile(host, scratch):
    profile = scratch / "profile.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }))
    options = ("--security-opt", f"seccomp={profile}")
    assert status(host, options=options)["Seccomp"] == "2"
    # The profile replaces Docker's: mkdir is refused with its EACCES, keyctl (Docker's EPERM) is allowed.
    assert probe(host, "mkdir=/tmp", "create_file=/tmp", "keyctl", options=options) == {
        "mkdir=/tmp": "EACCES",
        "create_file=/tmp": "ok",
        "keyctl": "ok",
    }
    # busybox's mkdir (the mkdir syscall on x86_64) as a user sees it.
    result = host.mydocker("run", "--rm", *options, IMAGE, "mkdir", "/tmp/denied", check=False)
    assert result.returncode == 1
    assert "Permission denied" in result.stdout + result.stderr


# -- capabilities ----------------------------------------------------------------------------------


def test_cap_add_sys_admin_is_not_everything(host, sleeper):
    # Known limit, not tested as blocked: with CAP_SYS_ADMIN the container may mount (seccomp lets
    # mount through with it), so a fresh procfs gives it a writable /proc/sys, /sys can be remounted
    # read-write, and an already mounted host disk can be mounted again (the kernel reuses the
    # superblock without asking the device cgroup). Docker relies on AppArmor for those.
    options = ("--cap-add", "SYS_ADMIN")
    assert status(host, options=options)["CapEff"] == f"{int(DEFAULT_CAPS, 16) | CAP_SYS_ADMIN:016x}"
    block = openable_block_device()
    char = capless_char_device()[1]
    results = probe(
        host, "mount_tmpfs", "keyctl", "kexec_load", "init_module", "finit_module", "settimeofday",
        f"mknod_open_block={block}", f"mknod_open_char={char}", f"ptrace_outside={sleeper}", "set_lo_down",
        options=options,
    )
    assert results == {
        "mount_tmpfs": "ok",
        "keyctl": "EPERM",
        "kexec_load": "EPERM",
        "init_module": "EPERM",
        "finit_module": "EPERM",
        "settimeofday": "EPERM",
        f"mknod_open_block={block}": "EPERM",
        f"mknod_open_char={char}": "EPERM",
        f"ptrace_outside={sleeper}": "ESRCH",
        "set_lo_down": "EPERM",
    }


def test_cap_add_sys_admin_sees_no_release_agent_in_any_v1_hierarchy(host):
    # CVE-2022-0492: a v1 hierarchy mounted inside a cgroup namespace shows the container's own cgroup as
    # its root; only a hierarchy the container is not in would show the host's root and its release_agent.
    hierarchies = [
        name if name != "systemd" else "none,name=systemd"
        for name in sorted(os.listdir("/sys/fs/cgroup"))
        if os.path.exists(f"/sys/fs/cgroup/{name}/release_agent") and not os.path.islink(f"/sys/fs/cgroup/{name}")
    ]
    assert "freezer" in hierarchies and "devices" in hierarchies, hierarchies
    arguments = [f"release_agent={name}" for name in hierarchies]
    results = probe(host, *arguments, options=("--cap-add", "SYS_ADMIN"))
    assert results == dict.fromkeys(arguments, "ENOENT")


def test_cap_drop_all(host):
    lines = status(host, options=("--cap-drop", "ALL"))
    assert (lines["CapEff"], lines["CapPrm"], lines["CapBnd"]) == ("0000000000000000",) * 3
    # Without CAP_MKNOD not even the node can be made.
    char = capless_char_device()[1]
    assert probe(host, "create_file=/tmp", f"mknod_open_char={char}", options=("--cap-drop", "ALL")) == {
        "create_file=/tmp": "ok",
        f"mknod_open_char={char}": "EPERM",
    }


def test_cap_add_net_admin_allows_set_lo_down(host):
    options = ("--cap-add", "NET_ADMIN")
    assert status(host, options=options)["CapEff"] == f"{int(DEFAULT_CAPS, 16) | CAP_NET_ADMIN:016x}"
    assert probe(host, "set_lo_down", "mount_tmpfs", options=options) == {"set_lo_down": "ok", "mount_tmpfs": "EPERM"}


# -- privileged ------------------------------------------------------------------------------------


def test_privileged_gets_what_the_host_allows(host, host_reference, sleeper):
    lines = status(host, options=("--privileged",))
    bounding = own_bounding_set()
    assert (lines["CapEff"], lines["CapBnd"], lines["Seccomp"], lines["NoNewPrivs"]) == (bounding, bounding, "0", "0")

    results = probe(host, *with_params(HOST_COMPARED), f"ptrace_outside={sleeper}", "raise_cgroup_limit",
                    *(f"list={path}" for path in masked_dirs_with_entries()), options=("--privileged",))
    named = by_name(results)
    assert {name: named[name] for name in HOST_COMPARED} == host_reference
    # Root on any host may at least do these: the comparison is not between two refusals.
    always = ("mount_tmpfs", "unshare_mount", "unshare_net", "set_lo_down")
    assert {name: named[name] for name in always} == dict.fromkeys(always, "ok")
    # Nothing masked.
    for name in masked_file():
        assert named[name] != "masked", name
    for path in masked_dirs_with_entries():
        assert results[f"list={path}"] == "data", path
    # Still in its own pid namespace and without a cgroupfs.
    assert (named["ptrace_outside"], named["raise_cgroup_limit"]) == ("ESRCH", "ENOENT")


def test_exec_is_confined_like_the_container(host, sleeper):
    block = openable_block_device()
    char = capless_char_device()[1]
    probes = (
        "write_core_pattern", "read_keys", "mount_tmpfs", f"mknod_open_block={block}", f"mknod_open_char={char}",
        f"ptrace_outside={sleeper}", "keyctl", "set_lo_down", "raise_cgroup_limit",
    )
    with detached(host) as container:
        assert status(host, exec_in=container) == status(host)
        plain = probe_image.parse(host.mydocker("exec", container, PROBE, *probes).stdout)
        assert plain == {
            "write_core_pattern": "EROFS",
            "read_keys": masked_file()["read_keys"],
            "mount_tmpfs": "EPERM",
            f"mknod_open_block={block}": "EPERM",
            f"mknod_open_char={char}": "EPERM",
            f"ptrace_outside={sleeper}": "ESRCH",
            "keyctl": "EPERM",
            "set_lo_down": "EPERM",
            "raise_cgroup_limit": "ENOENT",
        }
        # exec --privileged: every capability and no seccomp filter, as Docker's; but the container's
        # mounts (read-only /proc/sys, masks), device cgroup and pid namespace stay.
        lines = status(host, exec_in=container, exec_options=("--privileged",))
        assert (lines["CapEff"], lines["CapBnd"], lines["Seccomp"]) == (own_bounding_set(), own_bounding_set(), "0")
        lifted = probe_image.parse(host.mydocker("exec", "--privileged", container, PROBE, *probes).stdout)
        assert lifted == {
            **plain,
            "mount_tmpfs": "ok",
            "keyctl": "ok",
            "set_lo_down": "ok",
        }


def test_mounts_in_a_privileged_container_stay_inside(host, scratch):
    # Mounts over a volume, over the rootfs, and after making the container's root shared: none may
    # reach the host's mount namespace (the container's root is private, its volumes bound privately).
    volume = scratch / "volume"
    (volume / "sub").mkdir(parents=True)
    script = (
        "mkdir /media && mount -t tmpfs mdk-escape-prop /data/sub && mount -t tmpfs mdk-escape-prop /media"
        " && mount --make-rshared / && mount -t tmpfs mdk-escape-prop /tmp"
        " && grep -c ' mdk-escape-prop ' /proc/self/mountinfo"
    )
    with detached(host, "--privileged", "-v", f"{volume}:/data") as container:
        # The container's own root user, in its mount namespace: exec joins it, so the mounts are made
        # (and counted) before the command returns.
        assert host.mydocker("exec", container, "sh", "-c", script).stdout == "3\n"
        with open("/proc/self/mountinfo") as mountinfo:
            assert [line for line in mountinfo if " mdk-escape-prop " in line] == []
        assert not os.path.ismount(volume / "sub")


# -- filesystems -----------------------------------------------------------------------------------


def tree(path: Path) -> dict[str, tuple]:
    """Every entry below `path`: (mode, uid, gid, content) by relative name."""
    found = {}
    for directory, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            full = Path(directory) / name
            info = full.lstat()
            content = full.read_bytes() if full.is_file() else b""
            found[str(full.relative_to(path))] = (info.st_mode, info.st_uid, info.st_gid, content)
    return found


def test_read_only_volume_and_its_submount(host, scratch):
    volume = scratch / "volume"
    (volume / "sub").mkdir(parents=True)
    (volume / "existing").write_text("host data\n")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "mdk-escape-sub", str(volume / "sub")], check=True)
    try:
        (volume / "sub" / "inner").write_text("submount data\n")
        before = tree(volume)
        results = probe(
            host,
            "read=/data/existing", "read=/data/sub/inner",
            "create_file=/data", "create_file=/data/sub",
            "remount_ro_volume=/data", "remount_ro_volume=/data/sub",
            # Again after the remount attempts (the same directories, spelt differently): still read-only.
            "create_file=/data/.", "create_file=/data/sub/.",
            options=("-v", f"{volume}:/data:ro"),
        )
        assert results == {
            "read=/data/existing": "data",
            # The submount is there, and read-only too (recursively).
            "read=/data/sub/inner": "data",
            "create_file=/data": "EROFS",
            "create_file=/data/sub": "EROFS",
            "remount_ro_volume=/data": "EPERM",
            "remount_ro_volume=/data/sub": "EPERM",
            "create_file=/data/.": "EROFS",
            "create_file=/data/sub/.": "EROFS",
        }
        assert tree(volume) == before
    finally:
        subprocess.run(["umount", str(volume / "sub")], check=True)


def test_read_only_rootfs_with_tmpfs(host):
    results = probe(
        host, "create_file=/", "create_file=/tmp", "create_file=/etc", "create_file=/scratch", "create_file=/dev/shm",
        options=("--read-only", "--tmpfs", "/scratch"),
    )
    assert results == {
        "create_file=/": "EROFS",
        "create_file=/tmp": "EROFS",
        "create_file=/etc": "EROFS",
        "create_file=/scratch": "ok",
        "create_file=/dev/shm": "ok",
    }


# -- limits ----------------------------------------------------------------------------------------


def limits_in(host: Host, *options: str) -> list[str]:
    """Soft and hard open-file limits and the OOM score adjustment, in a container and in an exec of it."""
    report = "ulimit -n; ulimit -Hn; cat /proc/self/oom_score_adj"
    container = host.mydocker("run", "-d", *options, IMAGE, "sleep", "1000").stdout.strip()
    try:
        ran = host.mydocker("exec", container, "sh", "-c", f"{report}; cat /proc/1/oom_score_adj").stdout.split()
    finally:
        host.mydocker("rm", "-f", container)
    return ran


def test_ulimits_and_oom_score_reach_the_container_and_its_execs(host):
    from services.executor.profile import DEFAULT_NOFILE, HostFacts

    facts = HostFacts.read()
    nofile = DEFAULT_NOFILE if facts.can_raise_limits or facts.nofile_hard >= DEFAULT_NOFILE else facts.nofile_hard
    # Default: Docker's 1048576 where the services may grant it, else their own hard limit; OOM score 0.
    assert limits_in(host) == [str(nofile), str(nofile), "0", "0"]
    # Given: both the exec (the first three) and PID 1 (the last) carry the container's values.
    assert limits_in(host, "--ulimit", "nofile=100:200", "--oom-score-adj", "500") == ["100", "200", "500", "500"]


# -- devices ---------------------------------------------------------------------------------------


def test_device_option_opens_exactly_that_device(host):
    control = capless_char_device()
    name = f"/dev/{Path(control[0]).name}-mapped"
    number = control[1]
    without = probe(host, f"open={name}", f"mknod_open_char={number}")
    assert without == {f"open={name}": "ENOENT", f"mknod_open_char={number}": "EPERM"}
    # "r" only: reads are allowed (also through a node of the container's own making), writes are not.
    with_device = probe(
        host, f"open={name}", f"open_write={name}", f"mknod_open_char={number}",
        options=("--device", f"{control[0]}:{name}:r"),
    )
    assert with_device == {f"open={name}": "ok", f"open_write={name}": "EPERM", f"mknod_open_char={number}": "ok"}


def test_device_kmsg_needs_the_device_and_syslog(host):
    # /dev/kmsg is not a default device; reading it also needs CAP_SYSLOG where kernel.dmesg_restrict is 1.
    if not Path("/dev/kmsg").is_char_device():
        pytest.fail("needs /dev/kmsg (a kernel built with CONFIG_PRINTK): run the tests on a host that has it")
    syslog = ("--cap-add", "SYSLOG")
    assert probe(host, "open=/dev/mykmsg", "mknod_open_char_kmsg", options=syslog) == {
        "open=/dev/mykmsg": "ENOENT",
        "mknod_open_char_kmsg": "EPERM",
    }
    with_device = probe(
        host, "open=/dev/mykmsg", "open_write=/dev/mykmsg", "mknod_open_char_kmsg",
        options=(*syslog, "--device", "/dev/kmsg:/dev/mykmsg:r"),
    )
    assert with_device == {"open=/dev/mykmsg": "ok", "open_write=/dev/mykmsg": "EPERM", "mknod_open_char_kmsg": "ok"}


# -- users -----------------------------------------------------------------------------------------


def identity(host: Host, *options: str, exec_in: str = "") -> dict[str, str]:
    """id's output, HOME and the Uid/Gid/Groups lines of /proc/self/status, as one dict."""
    script = 'echo "id=$(id)"; echo "HOME=$HOME"; grep -E "^(Uid|Gid|Groups):" /proc/self/status'
    if exec_in:
        output = host.mydocker("exec", *options, exec_in, "sh", "-c", script).stdout
    else:
        output = run_in(host, "sh", "-c", script, options=options)
    found = {}
    for line in output.splitlines():
        key, _, value = line.partition("=") if line.startswith(("id=", "HOME=")) else line.partition(":")
        found[key] = " ".join(value.split())
    return found


def test_user_by_number_and_name(host):
    p = probe_image
    assert identity(host, "--user", "1000") == {
        # A number the image does not know: gid 0, HOME /, as Docker.
        "id": "uid=1000 gid=0(root)", "HOME": "/", "Uid": "1000 1000 1000 1000", "Gid": "0 0 0 0", "Groups": "",
    }
    assert identity(host, "--user", "nobody") == {
        "id": "uid=65534(nobody) gid=65534(nobody)", "HOME": "/home",
        "Uid": "65534 65534 65534 65534", "Gid": "65534 65534 65534 65534", "Groups": "",
    }
    assert identity(host, "--user", p.USER_NAME) == {
        "id": f"uid={p.USER_UID}({p.USER_NAME}) gid={p.USER_GID}({p.USER_NAME})"
        f" groups={p.SUPPLEMENTARY_GID}({p.SUPPLEMENTARY_GROUP})",
        "HOME": p.USER_HOME,
        "Uid": f"{p.USER_UID} " * 3 + f"{p.USER_UID}",
        "Gid": f"{p.USER_GID} " * 3 + f"{p.USER_GID}",
        "Groups": f"{p.SUPPLEMENTARY_GID}",
    }
    added = identity(host, "--user", f"{p.USER_UID}", "--group-add", p.SPARE_GROUP, "--group-add", "7777")
    assert (added["Uid"], added["Gid"], added["Groups"]) == (
        f"{p.USER_UID} " * 3 + f"{p.USER_UID}", f"{p.USER_GID} " * 3 + f"{p.USER_GID}",
        f"{p.SUPPLEMENTARY_GID} {p.SPARE_GID} 7777",
    )
    # A non-root user keeps no capabilities, though the bounding set is the default one.
    lines = status(host, options=("--user", p.USER_NAME))
    assert (lines["CapEff"], lines["CapPrm"], lines["CapBnd"]) == ("0000000000000000", "0000000000000000", DEFAULT_CAPS)


def test_user_with_an_explicit_group_gets_only_added_groups(host):
    # runc's GetExecUser: "Supplementary group ids only make sense if in the implicit form": with
    # USER:GROUP the groups /etc/group lists the user in are not added, only --group-add's.
    p = probe_image
    named_group = identity(host, "--user", f"{p.USER_NAME}:{p.SPARE_GROUP}", "--group-add", "7777")
    assert (named_group["Uid"], named_group["Gid"], named_group["Groups"]) == (
        f"{p.USER_UID} " * 3 + f"{p.USER_UID}", f"{p.SPARE_GID} " * 3 + f"{p.SPARE_GID}", "7777",
    )
    numeric_group = identity(host, "--user", f"{p.USER_NAME}:{p.USER_GID}")
    assert (numeric_group["Gid"], numeric_group["Groups"]) == (f"{p.USER_GID} " * 3 + f"{p.USER_GID}", "")


def test_files_in_a_volume_belong_to_the_user(host, scratch):
    volume = scratch / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    run_in(host, "touch", "/vol/made-by-user", options=("--user", probe_image.USER_NAME, "-v", f"{volume}:/vol"))
    info = (volume / "made-by-user").stat()
    assert (info.st_uid, info.st_gid) == (probe_image.USER_UID, probe_image.USER_GID)
    run_in(host, "touch", "/vol/made-by-1000", options=("--user", "1000:1000", "-v", f"{volume}:/vol"))
    info = (volume / "made-by-1000").stat()
    assert (info.st_uid, info.st_gid) == (1000, 1000)


def test_exec_user(host):
    p = probe_image
    with detached(host) as container:
        assert identity(host, exec_in=container)["id"] == "uid=0(root) gid=0(root)"
        assert identity(host, "--user", p.USER_NAME, exec_in=container) == identity(host, "--user", p.USER_NAME)
        assert identity(host, "--user", "1000", exec_in=container)["Uid"] == "1000 1000 1000 1000"
        line = one_line_error(host.mydocker("exec", "--user", "nosuch", container, "true", check=False))
        assert 'unable to find user "nosuch"' in line, line


# -- bad input -------------------------------------------------------------------------------------


def container_cgroups(host: Host) -> set[str]:
    """Container cgroups below the host's parent, in every hierarchy (the shims' own is not one)."""
    return set(CgroupLayout.from_host(parent=host.cgroup_parent).child_names())


def mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return sorted(point for point in (line.split()[4] for line in mountinfo) if point.startswith(f"{root}/"))


def traces(host: Host) -> tuple:
    return (
        host.mydocker("ps", "-a", "-q").stdout.split(),
        sorted(os.listdir(host.root / "overlay2")),
        container_cgroups(host),
        mounts_below(host.root),
    )


def test_bad_security_input_is_one_line_and_leaves_nothing_behind(host, scratch):
    malformed = scratch / "malformed.json"
    malformed.write_text('{"defaultAction": "SCMP_ACT_ALLOW", ')
    unknown = scratch / "unknown.json"
    unknown.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mdk_no_such_syscall"], "action": "SCMP_ACT_ERRNO"}],
    }))
    before = traces(host)
    assert before[0] == [], "containers exist before the test"
    cases = {
        ("--user", "nosuch"): 'unable to find user "nosuch"',
        ("--user", f"{probe_image.USER_NAME}:nosuchgroup"): 'unable to find group "nosuchgroup"',
        ("--group-add", "nosuchgroup"): 'unable to find group "nosuchgroup"',
        ("--cap-add", "NOPE"): 'unknown capability "NOPE"',
        ("--security-opt", "seccomp=/nonexistent"): "/nonexistent",
        ("--security-opt", f"seccomp={malformed}"): "not valid JSON",
        ("--security-opt", f"seccomp={unknown}"): '"mdk_no_such_syscall"',
        ("--ulimit", "nofile=abc"): '"abc" is not a number',
        ("--device", "/etc/passwd"): "--device /etc/passwd: not a character or block device",
        ("--tmpfs", "relative"): '"relative" must be absolute',
    }
    for options, needle in cases.items():
        for detach in ((), ("-d",)):
            line = one_line_error(host.mydocker("run", "--rm", *detach, *options, IMAGE, "true", check=False))
            assert needle in line, (options, line)
            assert traces(host) == before, options
