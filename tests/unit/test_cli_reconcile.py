"""system check's planner: which inconsistencies it sees, and the repairs it plans for each."""

from __future__ import annotations

from cli import reconcile as rc

IMAGES = frozenset({"busybox"})


def snap(records=(), processes=(), rootfs=(), cgroups=(), images=IMAGES) -> rc.Snapshot:
    return rc.Snapshot(tuple(records), tuple(processes), tuple(rootfs), tuple(cgroups), images)


def record(status: str, cid: str = "1111111111", **fields) -> rc.Record:
    return rc.Record(id=cid, name=fields.pop("name", "c1"), status=status, image=fields.pop("image", "busybox"), **fields)


def running_process(cid: str = "1111111111") -> rc.Process:
    return rc.Process(id=cid, status="running", pid=42, pid_start_time=4200, shim_pid=41)


def mounted(cid: str = "1111111111") -> rc.Rootfs:
    return rc.Rootfs(id=cid, mounted=True)


def test_a_consistent_host_has_no_findings() -> None:
    exited = rc.Process(id="2222222222", status="exited", exit_code=3)
    assert rc.plan(snap(
        records=[record("running", pid=42, pid_start_time=4200), record("exited", "2222222222", name="c2")],
        processes=[running_process(), exited],
        rootfs=[mounted(), rc.Rootfs("2222222222", mounted=True)],
        cgroups=["1111111111", "2222222222"],
    )) == []


def test_work_in_progress_is_left_alone() -> None:
    # A CLI creating or removing: its record, rootfs, parked process and cgroup are all its own.
    parked = rc.Process(id="1111111111", status="created", pid=42, pid_start_time=4200, shim_pid=41)
    removing = record("removing", "2222222222", name="c2", owner_alive=True)
    assert rc.plan(snap(
        records=[record("created", owner_alive=True), removing],
        processes=[parked],
        rootfs=[mounted(), mounted("2222222222")],
        cgroups=["1111111111"],
    )) == []


def test_half_created_is_removed_with_its_rootfs() -> None:
    (finding,) = rc.plan(snap(records=[record("created")], rootfs=[mounted()], cgroups=["1111111111"]))
    assert "half-created" in finding.problem
    assert finding.actions == (rc.DeleteProcess(), rc.RemoveRootfs(), rc.DeleteRecord())
    # A parked init that was never started goes too.
    parked = rc.Process(id="1111111111", status="created", pid=42, pid_start_time=4200)
    (finding,) = rc.plan(snap(records=[record("created")], processes=[parked], rootfs=[mounted()]))
    assert finding.actions == rc.REMOVE_ALL


def test_a_started_but_unrecorded_container_is_adopted() -> None:
    (finding,) = rc.plan(snap(records=[record("created")], processes=[running_process()], rootfs=[mounted()]))
    assert finding.actions == (rc.RecordRunning(pid=42, pid_start_time=4200, shim_pid=41),)
    exited = rc.Process(id="1111111111", status="exited", exit_code=7, oom_killed=True)
    (finding,) = rc.plan(snap(records=[record("created")], processes=[exited], rootfs=[mounted()]))
    assert finding.actions == (rc.RecordExit(7, oom_killed=True),)


def test_running_records_whose_process_ended_or_vanished() -> None:
    exited = rc.Process(id="1111111111", status="exited", exit_code=137)
    (finding,) = rc.plan(snap(records=[record("running")], processes=[exited], rootfs=[mounted()]))
    assert finding.actions == (rc.RecordExit(137),)
    (finding,) = rc.plan(snap(records=[record("running")], rootfs=[mounted()]))
    (action,) = finding.actions
    assert isinstance(action, rc.RecordExit) and action.exit_code == rc.LOST_EXIT_CODE and action.error


def test_a_running_container_without_its_mount_is_reported_not_touched() -> None:
    (finding,) = rc.plan(snap(records=[record("running")], processes=[running_process()], rootfs=[rc.Rootfs("1111111111", False)]))
    assert "without a mounted rootfs" in finding.problem
    assert finding.actions == () and finding.repair == ""


def test_half_removed_is_finished() -> None:
    (finding,) = rc.plan(snap(records=[record("removing")], rootfs=[rc.Rootfs("1111111111", False)]))
    assert finding.actions == rc.REMOVE_ALL


def test_exited_rm_containers_are_removed() -> None:
    (finding,) = rc.plan(snap(records=[record("exited", auto_remove=True)], rootfs=[mounted()]))
    assert finding.actions == (rc.MarkRemoving(), *rc.REMOVE_ALL)
    assert rc.plan(snap(records=[record("stopped", auto_remove=True)], rootfs=[mounted()])) == []


def test_orphans_of_each_kind() -> None:
    findings = rc.plan(snap(
        processes=[running_process("3333333333")],
        rootfs=[rc.Rootfs("4444444444", mounted=True), rc.Rootfs("5555555555", mounted=False)],
        cgroups=["3333333333", "6666666666"],
    ))
    by_id = {f.container_id: f for f in findings}
    assert sorted(by_id) == ["3333333333", "4444444444", "5555555555", "6666666666"]
    assert by_id["3333333333"].actions == (rc.DeleteProcess(),)
    assert by_id["4444444444"].actions == (rc.RemoveRootfs(),) and "mounted" in by_id["4444444444"].problem
    assert by_id["5555555555"].actions == (rc.RemoveRootfs(),)
    assert by_id["6666666666"].actions == (rc.DeleteProcess(),) and "cgroup" in by_id["6666666666"].problem
    assert all(f.name == "" for f in findings)


def test_a_container_that_lost_only_its_record_is_kept_for_rebuild_state() -> None:
    # A state database deleted while the services were down comes back empty: --repair (which
    # scripts/up runs) must not take the running or exited containers whose executor state can
    # rebuild their records.
    exited = rc.Process(id="2222222222", status="exited", exit_code=3)
    lost = rc.Snapshot(
        (), (running_process(), exited), (mounted(), mounted("2222222222")), ("1111111111", "2222222222"), IMAGES,
        rebuildable=frozenset({"1111111111", "2222222222"}),
    )
    findings = rc.plan(lost)
    assert [(f.container_id, f.actions) for f in findings] == [("1111111111", ()), ("2222222222", ())]
    assert findings[0].problem.startswith("a container (running) whose record is missing")
    assert findings[1].problem.startswith("a container (exited) whose record is missing")
    assert "mydocker system check --repair --rebuild-state" in findings[0].problem
    # Leftovers stay leftovers: never started (a run cut short), rootfs gone (a rolled-back run), or
    # nothing to rebuild from.
    parked = rc.Process(id="1111111111", status="created")
    for snapshot in (
        rc.Snapshot((), (parked,), (mounted(),), (), IMAGES, rebuildable=frozenset({"1111111111"})),
        rc.Snapshot((), (running_process(),), (), (), IMAGES, rebuildable=frozenset({"1111111111"})),
        rc.Snapshot((), (running_process(),), (mounted(),), (), IMAGES),
    ):
        assert rc.DeleteProcess() in rc.plan(snapshot)[0].actions


def test_a_missing_image_is_reported_without_a_repair() -> None:
    findings = rc.plan(snap(records=[record("exited", image="gone")], rootfs=[mounted()]))
    assert [(f.problem, f.actions) for f in findings] == [('its image "gone" is missing', ())]
    # Half-created records go anyway: their image does not matter.
    (finding,) = rc.plan(snap(records=[record("created", image="gone")]))
    assert "half-created" in finding.problem


def test_finding_lines_name_the_container() -> None:
    (finding,) = rc.plan(snap(records=[record("created", name="web")]))
    assert finding.line().startswith("1111111111 (web): half-created")
    (orphan,) = rc.plan(snap(cgroups=["7777777777"]))
    assert orphan.line() == "7777777777: a cgroup without a record"


def test_a_networked_container_is_unplugged_before_its_exit_or_removal_is_recorded() -> None:
    # Dead while recorded running: the veth and port rules go before the address is freed.
    (finding,) = rc.plan(snap(records=[record("running", pid=42, pid_start_time=4200, network="n1")], rootfs=[mounted()]))
    assert finding.actions[0] == rc.Disconnect() and isinstance(finding.actions[1], rc.RecordExit)
    (finding,) = rc.plan(snap(records=[record("created", network="n1")], rootfs=[mounted()]))
    assert finding.actions == (rc.Disconnect(), *rc.REMOVE_ALL)
    # Without a network nothing is unplugged.
    (finding,) = rc.plan(snap(records=[record("created")], rootfs=[mounted()]))
    assert rc.Disconnect() not in finding.actions


def test_a_network_whose_bridge_is_gone_gets_it_back() -> None:
    networks = (rc.NetworkBridge("n1", "mdb-n1", bridge_present=False), rc.NetworkBridge("n2", "mdb-n2", True))
    (finding,) = rc.plan(rc.Snapshot((), (), (), (), IMAGES, networks))
    assert finding.line() == "network n1: its bridge mdb-n1 is missing"
    assert finding.actions == (rc.EnsureBridge("n1"),)


def test_a_bridge_without_a_network_record_is_removed() -> None:
    bridges = (rc.ExecutorBridge("gone", "mdb-gone", "10.1.0.0/24"), rc.ExecutorBridge("n1", "mdb-n1", "10.2.0.0/24"))
    networks = (rc.NetworkBridge("n1", "mdb-n1", bridge_present=True),)
    (finding,) = rc.plan(rc.Snapshot((), (), (), (), IMAGES, networks, bridges))
    assert finding.line() == "network gone: its bridge mdb-gone exists without a network record"
    assert finding.actions == (rc.RemoveBridge("gone", "mdb-gone", "10.1.0.0/24"),)
