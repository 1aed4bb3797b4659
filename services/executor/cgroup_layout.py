"""Where container cgroups go: a parent below the executor's own cgroup, one directory per container and hierarchy."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

from services.executor.cgroups import (
    DEFAULT_CGROUP_ROOT,
    SHIMS_CGROUP,
    V1_CONTROLLERS,
    V1_PROC_KEYS,
    Cgroup,
    CgroupV1,
    CgroupV2,
    read_value,
    write_value,
    detect_cgroup_mode,
    join_cgroup_path,
    parse_proc_cgroup,
)

DEFAULT_PARENT = "mydocker"


class CgroupLayout:
    """Where container cgroups go: `<parent>/<id>` per hierarchy, shims in the `<parent>/shims` leaf.

    `parent` is absolute (from each hierarchy's root) or relative to the executor's own cgroup,
    never the root cgroup by default.
    """

    def __init__(self, root: Path, version: str, own: Mapping[str, str], parent: str | None = None):
        self.root = Path(root)
        self.version = "v2" if version == "v2" else "v1"
        parent = parent or DEFAULT_PARENT
        if self.version == "v2":
            self.own = join_cgroup_path("/", own.get("", "/"))
            self.parent = join_cgroup_path(self.own, parent)
        else:
            self.parents = {
                c: join_cgroup_path(own.get(V1_PROC_KEYS.get(c, c), "/"), parent)
                for c in V1_CONTROLLERS
                if (self.root / c).exists()
            }

    @classmethod
    def from_host(cls, root: Path = DEFAULT_CGROUP_ROOT, parent: str | None = None) -> "CgroupLayout":
        own = parse_proc_cgroup(read_value(Path("/proc/self/cgroup")))
        return cls(root, detect_cgroup_mode(root), own, parent)

    def prepare(self, pid: int) -> None:
        """On v2, leave room for controllers below our own cgroup: move `pid` into an `executor` leaf.

        The no-internal-process rule forbids enabling controllers for the children of a cgroup that
        holds processes, and by default container cgroups live below the executor's own. Done only
        when `pid` is alone there (a service unit of its own); otherwise enabling controllers fails
        later with an error that names MYDOCKER_CGROUP_PARENT.
        """
        if self.version != "v2" or self.own == "/" or not self.parent.startswith(self.own + "/"):
            return
        own_dir = self.root / self.own.lstrip("/")
        try:
            members = [int(line) for line in read_value(own_dir / "cgroup.procs").split()]
        except FileNotFoundError:
            return
        if members != [pid]:
            return
        leaf = own_dir / "executor"
        leaf.mkdir(exist_ok=True)
        write_value(leaf / "cgroup.procs", str(pid))

    def _child(self, name: str) -> Cgroup:
        if self.version == "v2":
            return CgroupV2(self.root, f"{self.parent}/{name}")
        return CgroupV1(self.root, {c: f"{p}/{name}" for c, p in self.parents.items()})

    def container(self, container_id: str) -> Cgroup:
        return self._child(container_id)

    def shims(self) -> Cgroup:
        return self._child(SHIMS_CGROUP)

    def parent_dirs(self) -> list[Path]:
        if self.version == "v2":
            return [self.root / self.parent.lstrip("/")]
        return CgroupV1(self.root, self.parents).dirs()

    def parent_path(self) -> str:
        """The parent from each hierarchy's root; on v1, hierarchies placed elsewhere are named after it."""
        if self.version == "v2":
            return self.parent
        paths = list(self.parents.values())
        if not paths:
            return ""
        common = max(paths, key=paths.count)
        others = [f"{c}: {p}" for c, p in self.parents.items() if p != common]
        return f"{common} ({', '.join(others)})" if others else common

    def child_names(self) -> list[str]:
        """Every cgroup directly below the parent in any hierarchy, the shims' own excepted; sorted."""
        names: set[str] = set()
        for directory in self.parent_dirs():
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            names.update(e.name for e in entries if e.is_dir(follow_symlinks=False) and e.name != SHIMS_CGROUP)
        return sorted(names)

    def remove_parent(self) -> bool:
        """rmdir the shims leaf and the parent once nothing uses them; False while something still does.

        The executor never does this itself: another executor may share the parent (containers and
        shims outlive it). Test teardowns and uninstall scripts call it.
        """
        for directory in [*self.shims().dirs(), *self.parent_dirs()]:
            try:
                directory.rmdir()
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return False
                raise
        return True
