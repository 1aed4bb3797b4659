"""RestoreContainer and a deleted database through the state service's gRPC API (real server, real channel)."""

from __future__ import annotations

import grpc
import pytest

from protos.state.v1 import state_pb2 as pb
from protos.state.v1 import state_pb2_grpc
from protos.types.v1 import types_pb2
from services.state.__main__ import build

CODE = grpc.StatusCode


@pytest.fixture
def state(start_server, temp_config):
    _, channel = start_server(build(temp_config))
    return state_pb2_grpc.StateServiceStub(channel)


def a_record(state) -> pb.Container:
    """A full record as a networked `run` leaves it, then deleted: what a rebuild hands back."""
    state.CreateNetwork(pb.CreateNetworkRequest(name="net1", subnet="10.78.0.0/24"), timeout=5)
    request = pb.CreateContainerRequest(
        name="web", image="busybox", command=["sh", "-c", "top"], env=["A=1"], network="net1",
        volumes=[types_pb2.Volume(host_path="/srv", container_path="/data", read_only=True)],
        resources=types_pb2.Resources(memory_bytes=64 << 20, pids_limit=40),
        ports=[types_pb2.PortMapping(host_port=8080, container_port=80, protocol=types_pb2.PROTOCOL_TCP)],
        security=types_pb2.SecurityOptions(user="1000", cap_drop=["NET_RAW"]),
        labels={"k": "v"}, stop_signal="SIGQUIT",
    )
    created = state.CreateContainer(request, timeout=5).container
    state.DeleteContainer(pb.DeleteContainerRequest(id=created.id), timeout=5)
    record = pb.Container()
    record.CopyFrom(created)
    record.status = pb.CONTAINER_STATUS_RUNNING
    record.ClearField("owner")
    record.pid, record.pid_start_time, record.shim_pid, record.ip = 4242, 777, 4241, "10.78.0.7"
    record.started_at.FromSeconds(1_700_000_000)
    return record


def test_restore_returns_and_stores_the_record_as_given(state):
    record = a_record(state)
    restored = state.RestoreContainer(pb.RestoreContainerRequest(container=record), timeout=5).container
    assert restored == record
    assert state.GetContainer(pb.GetContainerRequest(reference="web"), timeout=5).container == record
    allocations = state.ListAddresses(pb.ListAddressesRequest(network="net1"), timeout=5).allocations
    assert [(a.address, a.owner) for a in allocations] == [("10.78.0.1", "gateway"), ("10.78.0.7", record.id)]
    # A second time: the id is taken.
    with pytest.raises(grpc.RpcError) as caught:
        state.RestoreContainer(pb.RestoreContainerRequest(container=record), timeout=5)
    assert caught.value.code() == CODE.ALREADY_EXISTS


def test_restore_refuses_an_unspecified_status(state):
    record = a_record(state)
    record.status = pb.CONTAINER_STATUS_UNSPECIFIED
    with pytest.raises(grpc.RpcError) as caught:
        state.RestoreContainer(pb.RestoreContainerRequest(container=record), timeout=5)
    assert caught.value.code() == CODE.INVALID_ARGUMENT


def test_a_deleted_database_makes_every_call_fail_with_one_line(state, temp_config):
    state.CreateNetwork(pb.CreateNetworkRequest(name="net1", subnet="10.78.0.0/24"), timeout=5)
    path = temp_config.state_db_path()
    path.unlink()
    for call, request in (
        (state.GetInfo, pb.GetInfoRequest()),
        (state.ListContainers, pb.ListContainersRequest()),
        (state.CreateContainer, pb.CreateContainerRequest(image="busybox", command=["true"])),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=5)
        assert caught.value.code() == CODE.FAILED_PRECONDITION
        assert caught.value.details() == (
            f"state database {path} was deleted while the state service ran: "
            "run 'mydocker system check --repair --rebuild-state'"
        )
    assert not path.exists()
