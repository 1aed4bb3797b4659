"""Rebuilding state records from what the executor and storage hold (cli/rebuild.py's pure part, and the executor's
conversion of its state files)."""

from __future__ import annotations

import pytest

from cli.rebuild import missing_networks, rebuild_record, started_at
from cli.lifecycle import packed
from protos.executor.v1 import executor_pb2 as ex
from protos.state.v1 import state_pb2 as st
from protos.storage.v1 import storage_pb2 as sto
from protos.types.v1 import types_pb2
from services.common.ctl import own_line
from services.executor.convert import saved_to_proto
from services.executor.model import ProcessState, ProcessStatus
from services.executor.records import SavedContainer

BOOT, TICKS = 1_700_000_000.0, 100
BRIDGES = {"mdb-net1": "net1"}


def created_record() -> st.Container:
    """The record as CreateContainer returned it, which the CLI hands the executor."""
    record = st.Container(
        id="1234567890", name="web", image="busybox", image_id="sha256:" + "a" * 64, command=["httpd", "-f"],
        env=["A=1"], volumes=[types_pb2.Volume(host_path="/srv", container_path="/data")],
        resources=types_pb2.Resources(memory_bytes=64 << 20), network="net1",
        ports=[types_pb2.PortMapping(host_port=8080, container_port=80, protocol=types_pb2.PROTOCOL_TCP)],
        hostname="web", working_dir="/", status=st.CONTAINER_STATUS_CREATED, stop_signal="SIGQUIT",
        owner=st.Owner(pid=77, pid_start_time=88), security=types_pb2.SecurityOptions(user="1000"),
    )
    record.created_at.FromSeconds(1_700_000_100)
    return record


def saved(status=ex.PROCESS_STATUS_RUNNING, with_record=True, **process) -> ex.ContainerRecord:
    request = ex.CreateContainerRequest(
        id="1234567890", hostname="web", rootfs_path="/r/overlay2/1234567890/merged",
        process=ex.ProcessSpec(args=["httpd", "-f"], env=["PATH=/bin", "A=1"], cwd="/www"),
        resources=types_pb2.Resources(memory_bytes=64 << 20), security=types_pb2.SecurityOptions(user="1000"),
    )
    if with_record:
        request.record.CopyFrom(packed(created_record()))
    entry = ex.ContainerRecord(
        id="1234567890", request=request, request_from_plan=not with_record,
        process=ex.ContainerProcess(id="1234567890", status=status, **process),
        bridge_name="mdb-net1", address="10.5.0.7",
        ports=[types_pb2.PortMapping(host_port=8080, container_port=80, protocol=types_pb2.PROTOCOL_TCP)],
    )
    entry.created_at.FromSeconds(1_700_000_099)
    return entry


def rootfs() -> sto.Rootfs:
    return sto.Rootfs(
        container_id="1234567890", image="busybox:1.36", image_id="sha256:" + "b" * 64,
        volumes=[types_pb2.Volume(host_path="/srv", container_path="/data")],
    )


def test_a_running_container_gets_its_saved_record_with_live_pids_and_its_address():
    rebuilt = rebuild_record(saved(pid=500, pid_start_time=2500, shim_pid=499), rootfs(), BRIDGES, BOOT, TICKS)
    expected = created_record()
    expected.status = st.CONTAINER_STATUS_RUNNING
    expected.ClearField("owner")
    expected.pid, expected.pid_start_time, expected.shim_pid, expected.ip = 500, 2500, 499, "10.5.0.7"
    expected.started_at.FromSeconds(1_700_000_025)
    assert rebuilt == expected


def test_an_exited_container_gets_its_exit_and_no_address():
    entry = saved(ex.PROCESS_STATUS_EXITED, exit_code=3, oom_killed=True)
    entry.process.exited_at.FromSeconds(1_700_000_300)
    rebuilt = rebuild_record(entry, None, BRIDGES, BOOT, TICKS)
    assert (rebuilt.status, rebuilt.exit_code, rebuilt.oom_killed, rebuilt.ip, rebuilt.pid) == (
        st.CONTAINER_STATUS_EXITED, 3, True, "", 0,
    )
    assert rebuilt.finished_at.seconds == 1_700_000_300 and not rebuilt.HasField("owner")


def test_a_container_still_being_created_keeps_its_owner():
    rebuilt = rebuild_record(saved(ex.PROCESS_STATUS_CREATED, pid=500), None, BRIDGES, BOOT, TICKS)
    assert rebuilt.status == st.CONTAINER_STATUS_CREATED
    assert (rebuilt.owner.pid, rebuilt.pid, rebuilt.ip) == (77, 0, "10.5.0.7")


def test_a_state_dir_of_an_older_version_gives_what_it_still_can():
    rebuilt = rebuild_record(saved(with_record=False, pid=500, pid_start_time=2500, shim_pid=499), rootfs(), BRIDGES, BOOT, TICKS)
    assert (rebuilt.id, rebuilt.name, rebuilt.image, rebuilt.image_id) == (
        "1234567890", "1234567890", "busybox:1.36", "sha256:" + "b" * 64,
    )
    assert (list(rebuilt.command), list(rebuilt.env), rebuilt.working_dir, rebuilt.security.user) == (
        ["httpd", "-f"], ["PATH=/bin", "A=1"], "/www", "1000",
    )
    assert (rebuilt.network, rebuilt.ip, rebuilt.resources.memory_bytes) == ("net1", "10.5.0.7", 64 << 20)
    assert [p.host_port for p in rebuilt.ports] == [8080] and [v.container_path for v in rebuilt.volumes] == ["/data"]
    assert rebuilt.created_at.seconds == 1_700_000_099


def test_without_record_or_rootfs_the_image_is_unknown():
    with pytest.raises(ValueError, match="image is unknown"):
        rebuild_record(saved(with_record=False), None, BRIDGES, BOOT, TICKS)


def test_missing_networks_take_the_bridges_gateway():
    bridges = [
        ex.Bridge(network="net1", bridge_name="mdb-net1", subnet="10.5.0.0/24", gateway="10.5.0.254"),
        ex.Bridge(network="kept", bridge_name="mdb-kept", subnet="10.6.0.0/24", gateway="10.6.0.1"),
        ex.Bridge(network="old", bridge_name="mdb-old", subnet="10.7.0.0/24"),
    ]
    assert missing_networks(bridges, ["kept"]) == [
        st.CreateNetworkRequest(name="net1", subnet="10.5.0.0/24", gateway="10.5.0.254"),
        st.CreateNetworkRequest(name="old", subnet="10.7.0.0/24", gateway=""),
    ]


def test_started_at_counts_clock_ticks_from_boot():
    assert started_at(12345, BOOT, TICKS).ToNanoseconds() == int((BOOT + 123.45) * 1e9)


def test_the_executor_rebuilds_a_request_from_an_older_plan():
    plan = {
        "id": "1234567890", "hostname": "h", "rootfs": "/r/m", "args": ["top"], "env": ["PATH=/bin"], "cwd": "/w",
        "terminal": True, "stdin": False, "stdio_mode": "attach",
        "limits": {"memory_bytes": 1 << 20, "nano_cpus": 5, "cpuset_cpus": "0", "pids_limit": 9},
        "security": {"user": "nobody"},
    }
    state = ProcessState(id="1234567890", status=ProcessStatus.RUNNING, pid=5, pid_start_time=6)
    connection = {"bridge": "mdb-x", "address": "10.1.0.2"}
    record = saved_to_proto(SavedContainer(state, None, plan, connection, 1_700_000_000_000_000_000))
    assert record.request_from_plan and not record.request.HasField("record")
    request = record.request
    assert (list(request.process.args), request.process.cwd, request.process.terminal, request.stdio_mode) == (
        ["top"], "/w", True, ex.STDIO_MODE_ATTACH,
    )
    assert (request.resources.pids_limit, request.resources.cpuset_cpus, request.security.user) == (9, "0", "nobody")
    assert (record.bridge_name, record.address, list(record.ports)) == ("mdb-x", "10.1.0.2", [])
    assert record.created_at.seconds == 1_700_000_000


def test_the_executor_returns_a_saved_request_as_it_was_written():
    request = ex.CreateContainerRequest(id="1234567890", hostname="h", record=packed(created_record()))
    state = ProcessState(id="1234567890", status=ProcessStatus.EXITED, exit_code=2)
    connection = {"bridge": "mdb-x", "address": "10.1.0.2", "ports": [
        {"host_ip": "", "host_port": 53, "container_port": 5353, "protocol": "udp"},
    ]}
    record = saved_to_proto(SavedContainer(state, request.SerializeToString(), {}, connection, 0))
    assert record.request == request and not record.request_from_plan
    assert record.process.exit_code == 2
    assert [(p.host_port, p.container_port, p.protocol) for p in record.ports] == [(53, 5353, types_pb2.PROTOCOL_UDP)]


def test_ctl_shows_the_services_own_line():
    lines = ["2026 state[1] INFO started", "mydocker-state: state database /x is damaged (y): run 'z'", "trailing"]
    assert own_line(lines, "state") == "mydocker-state: state database /x is damaged (y): run 'z'"
    assert own_line(lines, "storage") == ""


def test_rebuild_state_needs_repair():
    from cli.check import run_check
    from cli.services import CliError

    with pytest.raises(CliError, match="--rebuild-state changes the records: give it with --repair"):
        run_check(False, False, print, rebuild_state=True)
