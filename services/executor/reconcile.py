"""The executor's reconcile on start as a plan: pure data from a scan of MYDOCKER_RUN and the cgroup parent, then actions."""

from __future__ import annotations

from dataclasses import dataclass

# A cgroup without a state dir this young may be another executor's create in flight (parents can be
# shared): the create's own deadline bounds that window.
ORPHAN_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Recorded:
    """A pid file's process: `alive` only when that very process (same start time) still runs."""

    pid: int = 0
    start_time: int = 0
    alive: bool = False


@dataclass(frozen=True)
class StateDir:
    """What MYDOCKER_RUN/<id>/ says about one container."""

    id: str
    has_plan: bool
    shim: Recorded
    init: Recorded
    has_exit: bool
    # The status file says the init exec'd the command.
    started: bool
    # Live processes in the container's cgroup (all hierarchies).
    cgroup_members: int = 0


@dataclass(frozen=True)
class CgroupDir:
    """A container cgroup below the parent: its id, live members, and seconds since it last changed."""

    id: str
    members: int
    age_seconds: float


@dataclass(frozen=True)
class Scan:
    state_dirs: tuple[StateDir, ...] = ()
    cgroups: tuple[CgroupDir, ...] = ()


@dataclass(frozen=True)
class Destroy:
    """Debris of a create or a delete that never finished: kill what is recorded, remove cgroup and dir."""

    id: str
    reason: str


@dataclass(frozen=True)
class RecordLost:
    """A container whose shim died without recording an exit: kill what is left of it, record the lost exit."""

    id: str
    started: bool
    kill_init: bool
    kill_members: bool
    reason: str


@dataclass(frozen=True)
class RemoveCgroup:
    """An empty container cgroup that no state dir owns."""

    id: str
    reason: str


@dataclass(frozen=True)
class Keep:
    """Left alone on purpose; logged so an operator sees why."""

    id: str
    reason: str


Action = Destroy | RecordLost | RemoveCgroup | Keep


def plan_state_dir(entry: StateDir) -> Action | None:
    """What to do with one state dir; None when it is a settled container (live shim, or exit recorded)."""
    if not entry.has_plan:
        return Destroy(entry.id, "no plan: a create or a delete was cut short")
    if not entry.shim.pid:
        return Destroy(entry.id, "no shim was ever recorded: the create was cut short before the launcher replied")
    if entry.shim.alive or entry.has_exit:
        return None
    what = "running" if entry.started else "created, never started"
    return RecordLost(
        entry.id,
        started=entry.started,
        kill_init=entry.init.alive,
        kill_members=entry.cgroup_members > 0,
        reason=f"{what}; its shim {entry.shim.pid} died without recording an exit (killed, or the host rebooted)",
    )


def plan_cgroup(cgroup: CgroupDir, owned: frozenset[str], grace: float) -> Action | None:
    if cgroup.id in owned:
        return None
    if cgroup.members:
        # Not ours to kill: nothing records who started these processes.
        return Keep(cgroup.id, f"cgroup without a state dir still holds {cgroup.members} process(es): left alone")
    if cgroup.age_seconds < grace:
        return Keep(cgroup.id, f"empty cgroup without a state dir, made {cgroup.age_seconds:.0f}s ago: may be a create in flight")
    return RemoveCgroup(cgroup.id, "empty cgroup without a state dir")


def plan(scan: Scan, grace: float = ORPHAN_GRACE_SECONDS) -> list[Action]:
    """Every action for the scan, state dirs first (sorted by id), then orphan cgroups."""
    actions: list[Action] = []
    for entry in sorted(scan.state_dirs, key=lambda e: e.id):
        action = plan_state_dir(entry)
        if action is not None:
            actions.append(action)
    owned = frozenset(e.id for e in scan.state_dirs)
    for cgroup in sorted(scan.cgroups, key=lambda c: c.id):
        action = plan_cgroup(cgroup, owned, grace)
        if action is not None:
            actions.append(action)
    return actions
