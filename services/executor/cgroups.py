"""Per-container cgroups for v1 and v2: pure value conversions, and classes that take their root directory."""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.executor.cgroup_tree import procs_below, remove_tree, rmdir_if_empty

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
# v1 hierarchies a container gets a directory in, where mounted: cpuacct for usage, pids for `kill --all`
# and limits, devices for the device allow list, and every other one as runc does: with a cgroup
# namespace, a hierarchy the container is not in would show it the host's root cgroup, release_agent
# and all, to anyone able to mount it (CVE-2022-0492). Joining one more costs ~0.03 ms.
V1_CONTROLLERS = (
    "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "net_cls", "net_prio",
    "perf_event", "hugetlb", "rdma", "misc", "systemd",
)
# /proc/<pid>/cgroup names a named hierarchy "name=<name>", mounted at /sys/fs/cgroup/<name>.
V1_PROC_KEYS = {"systemd": "name=systemd"}
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids")
CPU_PERIOD_US = 100_000
NANO = 1_000_000_000
# The kernel refuses a CFS quota under 1 ms, i.e. 0.01 CPU with the 100 ms period.
MIN_NANO_CPUS = NANO * 1000 // CPU_PERIOD_US
# Docker's floor: below this the container's own init does not fit.
MIN_MEMORY_BYTES = 6 * 1024 * 1024
SHIMS_CGROUP = "shims"
REMOVE_TIMEOUT = 5.0
_CPUSET_LOCK = threading.Lock()


def detect_cgroup_mode(root: Path = DEFAULT_CGROUP_ROOT) -> str:
    """"v2" for a unified hierarchy, "hybrid" for v1 plus a cgroup2 side mount, "v1" otherwise.

    Hybrid hosts are driven as v1: their unified side mount usually holds no controllers.
    """
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    return "v1"


@dataclass(frozen=True)
class Limits:
    """Cgroup limits of one container; zero or empty means "no limit"."""

    memory_bytes: int = 0
    nano_cpus: int = 0
    cpuset_cpus: str = ""
    pids_limit: int = 0


def parse_cpuset(spec: str) -> list[int]:
    """CPU numbers of a cpuset list ("0-2,4"); InvalidArgument for anything else."""
    cpus: set[int] = set()
    for part in spec.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if sep else first
        except ValueError:
            raise InvalidArgument(f'invalid cpuset "{spec}": use a list like "0-1,3"') from None
        if first < 0 or last < first:
            raise InvalidArgument(f'invalid cpuset "{spec}": use a list like "0-1,3"')
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def validate_limits(limits: Limits, online_cpus: int | None = None) -> None:
    if limits.memory_bytes < 0 or 0 < limits.memory_bytes < MIN_MEMORY_BYTES:
        raise InvalidArgument(f"memory limit {limits.memory_bytes} bytes is too small: the minimum is 6m")
    if limits.nano_cpus < 0 or 0 < limits.nano_cpus < MIN_NANO_CPUS:
        raise InvalidArgument(f"cpu limit {limits.nano_cpus / NANO:g} is too small: the minimum is 0.01 CPU")
    if online_cpus is not None and limits.nano_cpus > online_cpus * NANO:
        raise InvalidArgument(
            f"cpu limit {limits.nano_cpus / NANO:g} is more than the {online_cpus} CPUs of this host"
        )
    if limits.pids_limit < 0:
        raise InvalidArgument(f"pids limit {limits.pids_limit} is negative")
    if limits.cpuset_cpus:
        cpus = parse_cpuset(limits.cpuset_cpus)
        if online_cpus is not None and cpus[-1] >= online_cpus:
            raise InvalidArgument(
                f'cpuset "{limits.cpuset_cpus}" names CPU {cpus[-1]}: this host has CPUs 0-{online_cpus - 1}'
            )


def cpu_quota_us(nano_cpus: int, period_us: int = CPU_PERIOD_US) -> int:
    """CFS quota for `nano_cpus` billionths of a CPU per `period_us`."""
    return nano_cpus * period_us // NANO


def v2_cpu_max(nano_cpus: int, period_us: int = CPU_PERIOD_US) -> str:
    """The cpu.max line: "<quota> <period>", or "max <period>" without a limit."""
    quota = cpu_quota_us(nano_cpus, period_us) if nano_cpus else "max"
    return f"{quota} {period_us}"


def v1_writes(limits: Limits, has_memsw: bool) -> list[tuple[str, str, str]]:
    """(controller, file, value) in write order; memsw after memory since it may never be below it."""
    writes: list[tuple[str, str, str]] = []
    if limits.cpuset_cpus:
        writes.append(("cpuset", "cpuset.cpus", limits.cpuset_cpus))
    if limits.memory_bytes:
        writes.append(("memory", "memory.limit_in_bytes", str(limits.memory_bytes)))
        if has_memsw:
            # Swap limit equal to the memory limit: no swap, so the OOM killer really fires.
            writes.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
    if limits.nano_cpus:
        writes.append(("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US)))
        writes.append(("cpu", "cpu.cfs_quota_us", str(cpu_quota_us(limits.nano_cpus))))
    if limits.pids_limit:
        writes.append(("pids", "pids.max", str(limits.pids_limit)))
    return writes


def v2_writes(limits: Limits, has_swap: bool) -> list[tuple[str, str]]:
    writes: list[tuple[str, str]] = []
    if limits.cpuset_cpus:
        writes.append(("cpuset.cpus", limits.cpuset_cpus))
    if limits.memory_bytes:
        writes.append(("memory.max", str(limits.memory_bytes)))
        if has_swap:
            writes.append(("memory.swap.max", "0"))
    if limits.nano_cpus:
        writes.append(("cpu.max", v2_cpu_max(limits.nano_cpus)))
    if limits.pids_limit:
        writes.append(("pids.max", str(limits.pids_limit)))
    return writes


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller -> cgroup path from /proc/<pid>/cgroup; the v2 line ("0::/x") has the key ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def parse_counter(text: str, key: str) -> int:
    """The value of `key N` in memory.oom_control, memory.events or cpu.stat; 0 when absent."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def join_cgroup_path(base: str, child: str) -> str:
    """`child` if absolute, else `child` under `base`; always absolute and normalised."""
    joined = child if child.startswith("/") else f"{base.rstrip('/')}/{child}"
    parts = [part for part in joined.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise InvalidArgument(f'cgroup path "{child}" may not contain "." or ".."')
    return "/" + "/".join(parts)


def write_value(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def read_value(path: Path) -> str:
    with open(path) as handle:
        return handle.read()


def _last_change(directories: list[Path]) -> float:
    """The latest mtime of the directories that exist, 0 when none does: a leaf cgroup's is its creation."""
    latest = 0.0
    for directory in directories:
        try:
            latest = max(latest, directory.stat().st_mtime)
        except FileNotFoundError:
            continue
    return latest


@functools.lru_cache(maxsize=64)
def _hierarchy(controller_dir: str) -> str:
    # Only the mount point is resolved, once: resolving whole cgroup paths cost ~40 lstat calls per
    # state read, and co-mounted controllers (cpu -> cpu,cpuacct) differ only there.
    return os.path.realpath(controller_dir)


class CgroupV1:
    """One cgroup in every v1 hierarchy we use; `paths` maps a controller to its path in that hierarchy."""

    version = "v1"

    def __init__(self, root: Path, paths: Mapping[str, str]):
        self.root = Path(root)
        self.paths = dict(paths)

    def dir(self, controller: str) -> Path:
        return self.root / controller / self.paths[controller].lstrip("/")

    def dirs(self) -> list[Path]:
        """One directory per hierarchy: co-mounted controllers (cpu,cpuacct) share one."""
        seen: dict[tuple[str, str], Path] = {}
        for controller, path in self.paths.items():
            key = (_hierarchy(str(self.root / controller)), path.strip("/"))
            seen.setdefault(key, self.dir(controller))
        return list(seen.values())

    def path(self) -> Path:
        """The directory shown as the container's cgroup: the first hierarchy's (dirs()[0], without building the rest)."""
        return self.dir(next(iter(self.paths)))

    def create(self) -> None:
        for controller in self.paths:
            directory = self.dir(controller)
            if controller == "cpuset":
                self._create_cpuset(directory)
            else:
                directory.mkdir(parents=True, exist_ok=True)

    def _create_cpuset(self, directory: Path) -> None:
        # A new v1 cpuset starts with empty cpus and mems, and then refuses tasks (ENOSPC): fill every
        # empty level from its parent, top down. Every level, not just the ones we made, since a
        # concurrent create may have made a level and not filled it yet.
        hierarchy = self.root / "cpuset"
        levels = [directory, *directory.parents]
        levels = levels[: levels.index(hierarchy)] if hierarchy in levels else [directory]
        with _CPUSET_LOCK:
            for level in reversed(levels):
                level.mkdir(exist_ok=True)
                for name in ("cpuset.cpus", "cpuset.mems"):
                    target = level / name
                    current = read_value(target).strip() if target.exists() else ""
                    if not current:
                        write_value(target, read_value(level.parent / name).strip())

    def apply(self, limits: Limits) -> None:
        has_memsw = "memory" in self.paths and (self.dir("memory") / "memory.memsw.limit_in_bytes").exists()
        for controller, name, value in v1_writes(limits, has_memsw):
            write_value(self.dir(controller) / name, value)

    def procs_files(self) -> list[str]:
        return [str(directory / "cgroup.procs") for directory in self.dirs()]

    def join_files(self) -> list[str]:
        """What a single-threaded process writes "0" into to join: `tasks`, no global lock (cgroup_join.py)."""
        return [str(directory / "tasks") for directory in self.dirs()]

    def pids(self) -> list[int]:
        """Members in any hierarchy and any cgroup nested below: a half-made or half-removed cgroup may exist
        in some hierarchies only."""
        members: set[int] = set()
        for directory in self.dirs():
            members.update(procs_below(directory))
        return sorted(members)

    def oom_file(self) -> str:
        """memory.oom_control, or "" on a host without the memory hierarchy (OOM kills then go unseen)."""
        return str(self.dir("memory") / "memory.oom_control") if "memory" in self.paths else ""

    def cpu_usage_ns(self) -> int:
        return int(read_value(self.dir("cpuacct") / "cpuacct.usage"))

    def exists(self) -> bool:
        return any(directory.exists() for directory in self.dirs())

    def exists_everywhere(self) -> bool:
        """The directory exists in every hierarchy (exists() asks for any one of them)."""
        return all(os.path.isdir(directory) for directory in self.dirs())

    def last_change(self) -> float:
        return _last_change(self.dirs())

    def remove(self, timeout: float = REMOVE_TIMEOUT) -> None:
        for directory in self.dirs():
            remove_tree(directory, timeout)

    def remove_if_empty(self) -> bool:
        """rmdir in every hierarchy, without a look inside; False (the rest left) at the first that is in use."""
        return all(rmdir_if_empty(directory) for directory in self.dirs())

    def to_record(self) -> dict:
        return {"version": "v1", "root": str(self.root), "paths": self.paths}


class CgroupV2:
    """One cgroup of the unified hierarchy mounted at `root`."""

    version = "v2"

    def __init__(self, root: Path, path: str):
        self.root = Path(root)
        self.cgroup = path

    def path(self) -> Path:
        return self.root / self.cgroup.lstrip("/")

    def dirs(self) -> list[Path]:
        return [self.path()]

    def create(self) -> None:
        self.enable_controllers()
        self.path().mkdir(parents=True, exist_ok=True)

    def enable_controllers(self) -> None:
        """Enable our controllers in every ancestor's subtree_control, from the root down.

        The no-internal-process rule makes this fail with EBUSY in a non-root cgroup that holds
        processes: the parent must then be a cgroup delegated to us without processes of its own.
        """
        level = self.root
        for part in [p for p in self.cgroup.split("/") if p][:-1]:
            self._enable_in(level)
            level = level / part
            level.mkdir(exist_ok=True)
        self._enable_in(level)

    def _enable_in(self, level: Path) -> None:
        available = set(read_value(level / "cgroup.controllers").split()) if (level / "cgroup.controllers").exists() else set()
        subtree = level / "cgroup.subtree_control"
        enabled = set(read_value(subtree).split()) if subtree.exists() else set()
        wanted = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
        if not wanted:
            return
        try:
            write_value(subtree, " ".join(f"+{c}" for c in wanted))
        except OSError as err:
            if err.errno == errno.EBUSY:
                raise FailedPrecondition(
                    f"cannot enable {', '.join(wanted)} in {level}: it holds processes (cgroup v2 "
                    "no-internal-process rule); set MYDOCKER_CGROUP_PARENT to an empty delegated cgroup"
                ) from None
            raise

    def apply(self, limits: Limits) -> None:
        has_swap = (self.path() / "memory.swap.max").exists()
        for name, value in v2_writes(limits, has_swap):
            write_value(self.path() / name, value)

    def procs_files(self) -> list[str]:
        return [str(self.path() / "cgroup.procs")]

    def join_files(self) -> list[str]:
        """What a process writes "0" into to join (v2 has no per-thread file outside threaded cgroups)."""
        return self.procs_files()

    def pids(self) -> list[int]:
        """Members of the cgroup and of any cgroup nested below it."""
        return sorted(procs_below(self.path()))

    def oom_file(self) -> str:
        return str(self.path() / "memory.events")

    def cpu_usage_ns(self) -> int:
        return parse_counter(read_value(self.path() / "cpu.stat"), "usage_usec") * 1000

    def exists(self) -> bool:
        return self.path().exists()

    def exists_everywhere(self) -> bool:
        return os.path.isdir(self.path())

    def last_change(self) -> float:
        return _last_change(self.dirs())

    def remove(self, timeout: float = REMOVE_TIMEOUT) -> None:
        remove_tree(self.path(), timeout)

    def remove_if_empty(self) -> bool:
        """rmdir without a look inside; False while it has members or child cgroups."""
        return rmdir_if_empty(self.path())

    def to_record(self) -> dict:
        return {"version": "v2", "root": str(self.root), "path": self.cgroup}


Cgroup = CgroupV1 | CgroupV2


def cgroup_from_record(record: Mapping) -> Cgroup:
    if record.get("version") == "v2":
        return CgroupV2(Path(record["root"]), record["path"])
    return CgroupV1(Path(record["root"]), record["paths"])


def oom_kills(oom_file: str) -> int:
    """The OOM kill counter of a cgroup: `oom_kill N` in v1 memory.oom_control and v2 memory.events."""
    try:
        return parse_counter(read_value(Path(oom_file)), "oom_kill")
    except FileNotFoundError:
        return 0
