"""The executor's reconcile planner: a scan of state dirs and cgroups in, the actions to take out; pure data."""

from __future__ import annotations

from services.executor.reconcile import (
    CgroupDir,
    Destroy,
    Keep,
    RecordLost,
    Recorded,
    RemoveCgroup,
    Scan,
    StateDir,
    plan,
)

LIVE_SHIM = Recorded(100, 5000, alive=True)
DEAD_SHIM = Recorded(100, 5000, alive=False)
LIVE_INIT = Recorded(101, 5001, alive=True)
DEAD_INIT = Recorded(101, 5001, alive=False)


def state_dir(container_id="1", has_plan=True, shim=LIVE_SHIM, init=LIVE_INIT, has_exit=False, started=True, members=1):
    return StateDir(container_id, has_plan, shim, init, has_exit, started, members)


def test_settled_containers_are_left_alone():
    scan = Scan(
        state_dirs=(
            state_dir("running"),
            state_dir("parked", started=False),
            state_dir("exited", shim=DEAD_SHIM, init=DEAD_INIT, has_exit=True, members=0),
            # A shim lingering for an attach client after recording the exit.
            state_dir("lingering", init=DEAD_INIT, has_exit=True, members=0),
        ),
        cgroups=(CgroupDir("running", 1, 99.0), CgroupDir("parked", 1, 99.0), CgroupDir("exited", 0, 99.0)),
    )
    assert plan(scan) == []


def test_a_create_cut_short_before_the_shim_was_recorded_is_destroyed():
    actions = plan(Scan(state_dirs=(state_dir("1", shim=Recorded(), init=Recorded(), started=False, members=0),)))
    assert [type(a) for a in actions] == [Destroy]
    assert "no shim was ever recorded" in actions[0].reason


def test_a_dir_without_a_plan_is_debris_whatever_else_it_holds():
    actions = plan(Scan(state_dirs=(state_dir("1", has_plan=False), state_dir("2", has_plan=False, shim=Recorded()))))
    assert [(type(a), a.id) for a in actions] == [(Destroy, "1"), (Destroy, "2")]


def test_a_dead_shim_without_an_exit_is_a_lost_exit():
    actions = plan(Scan(state_dirs=(state_dir("gone", shim=DEAD_SHIM, init=DEAD_INIT, members=0),)))
    assert actions == [RecordLost("gone", started=True, kill_init=False, kill_members=False, reason=actions[0].reason)]
    assert "running" in actions[0].reason and "died without recording an exit" in actions[0].reason


def test_a_shim_killed_alone_leaves_its_init_to_kill():
    (action,) = plan(Scan(state_dirs=(state_dir("1", shim=DEAD_SHIM),)))
    assert isinstance(action, RecordLost)
    assert (action.kill_init, action.kill_members, action.started) == (True, True, True)


def test_a_parked_container_whose_shim_died_is_lost_and_never_started():
    (action,) = plan(Scan(state_dirs=(state_dir("1", shim=DEAD_SHIM, started=False),)))
    assert isinstance(action, RecordLost)
    assert not action.started and "never started" in action.reason


def test_an_unrecorded_init_is_found_through_the_cgroup():
    # The shim died before it wrote the init's pid: only the container's cgroup knows it.
    (action,) = plan(Scan(state_dirs=(state_dir("1", shim=DEAD_SHIM, init=Recorded(), started=False, members=1),)))
    assert isinstance(action, RecordLost) and (action.kill_init, action.kill_members) == (False, True)


def test_orphan_cgroups_go_when_empty_and_old_enough():
    scan = Scan(
        state_dirs=(state_dir("owned"),),
        cgroups=(
            CgroupDir("owned", 1, 500.0),
            CgroupDir("old-empty", 0, 500.0),
            CgroupDir("young-empty", 0, 1.0),
            CgroupDir("busy", 2, 500.0),
        ),
    )
    actions = plan(scan, grace=30.0)
    assert [(type(a), a.id) for a in actions] == [(Keep, "busy"), (RemoveCgroup, "old-empty"), (Keep, "young-empty")]
    assert "left alone" in actions[0].reason
    assert plan(scan, grace=0.0)[2] == RemoveCgroup("young-empty", "empty cgroup without a state dir")


def test_a_cgroup_owned_by_a_debris_dir_goes_with_the_dir_not_as_an_orphan():
    scan = Scan(state_dirs=(state_dir("1", has_plan=False, members=0),), cgroups=(CgroupDir("1", 0, 500.0),))
    assert [type(a) for a in plan(scan)] == [Destroy]


def test_the_plan_after_applying_it_is_empty():
    """Idempotence: what each action leaves behind plans to nothing (the scan a second start would see)."""
    before = Scan(
        state_dirs=(state_dir("lost", shim=DEAD_SHIM), state_dir("debris", shim=Recorded()), state_dir("ok")),
        cgroups=(CgroupDir("lost", 1, 9.0), CgroupDir("debris", 0, 9.0), CgroupDir("orphan", 0, 99.0), CgroupDir("ok", 1, 9.0)),
    )
    assert len(plan(before, grace=30.0)) == 3
    after = Scan(
        state_dirs=(state_dir("lost", shim=DEAD_SHIM, init=DEAD_INIT, has_exit=True, members=0), state_dir("ok")),
        cgroups=(CgroupDir("lost", 0, 9.0), CgroupDir("ok", 1, 9.0)),
    )
    assert plan(after, grace=30.0) == []
