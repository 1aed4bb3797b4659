"""A private dockerd for tests that compare mydocker with Docker, and the checks that it left the host as it was.

Docker is Debian's docker.io (20.10, with containerd 1.6 and runc 1.1), started privately: its own data,
exec and run directories, no iptables, no bridge, a cgroup parent of its own, and a private mount
namespace in which a tmpfs covers /run and /etc/docker, so that neither its mounts nor the files it
insists on writing there (containerd's shim sockets under /run/containerd/s, its trust key
/etc/docker/key.json) ever reach the host. Its images, containers and cgroups go with it.
Test modules wrap `host_unchanged()` and `private_dockerd()` in module-scoped fixtures.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Debian's docker.io: the client of the same release as the daemon (another `docker` may come first in PATH).
DOCKERD = Path("/usr/sbin/dockerd")
DOCKER = Path("/usr/bin/docker")
INSTALL_HINT = "Docker is not installed: apt-get install docker.io (scripts/debian-packages-test.txt lists it)"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


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


@contextlib.contextmanager
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


@contextlib.contextmanager
def private_dockerd() -> Iterator[Dockerd]:
    """A private dockerd (see the module docstring); everything it made is removed after."""
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
