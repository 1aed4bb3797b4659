"""Cgroup facts and values as pure functions of a cgroup root directory, so tests can use a temp dir."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")


def detect_cgroup_mode(root: Path = DEFAULT_CGROUP_ROOT) -> str:
    """"v2" for a unified hierarchy, "hybrid" for v1 plus a cgroup2 side mount, "v1" otherwise.

    Hybrid hosts are driven as v1: their unified side mount usually holds no controllers.
    """
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    return "v1"
