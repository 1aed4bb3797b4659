"""The state service under 30 concurrent clients, and the owner of records, through a real server."""

from __future__ import annotations

import threading
from collections import Counter

import grpc
import pytest

from protos.state.v1 import state_pb2 as pb
from protos.state.v1 import state_pb2_grpc
from services.common.config import unix_target
from services.state.__main__ import build

CODE = grpc.StatusCode
CLIENTS = 30
ROUNDS = 8
TIMEOUT = 60


@pytest.fixture
def server(start_server, temp_config):
    running, channel = start_server(build(temp_config))
    return temp_config.socket_path("state"), state_pb2_grpc.StateServiceStub(channel)


def owner(pid: int = 4242) -> pb.Owner:
    return pb.Owner(pid=pid, pid_start_time=123456)


def test_owner_is_stored_returned_and_cleared(server):
    _, state = server
    created = state.CreateContainer(
        pb.CreateContainerRequest(name="a", image="busybox", command=["top"], owner=owner()), timeout=5
    ).container
    assert created.HasField("owner") and (created.owner.pid, created.owner.pid_start_time) == (4242, 123456)
    fetched = state.GetContainer(pb.GetContainerRequest(reference="a"), timeout=5).container
    assert fetched.owner == created.owner
    running = state.UpdateContainerStatus(
        pb.UpdateContainerStatusRequest(
            id=created.id, status=pb.CONTAINER_STATUS_RUNNING, pid=9, pid_start_time=10, owner=owner(1)
        ),
        timeout=5,
    ).container
    assert not running.HasField("owner")
    state.UpdateContainerStatus(pb.UpdateContainerStatusRequest(id=created.id, status=pb.CONTAINER_STATUS_EXITED), timeout=5)
    removing = state.UpdateContainerStatus(
        pb.UpdateContainerStatusRequest(id=created.id, status=pb.CONTAINER_STATUS_REMOVING, owner=owner(77)),
        timeout=5,
    ).container
    assert removing.owner.pid == 77
    listed = state.ListContainers(pb.ListContainersRequest(statuses=[pb.CONTAINER_STATUS_REMOVING]), timeout=5)
    assert [(c.id, c.owner.pid) for c in listed.containers] == [(created.id, 77)]
    unowned = state.CreateContainer(pb.CreateContainerRequest(name="b", image="busybox", command=["top"]), timeout=5)
    assert not unowned.container.HasField("owner")


@pytest.mark.parametrize("bad", [pb.Owner(), pb.Owner(pid=1), pb.Owner(pid_start_time=1), pb.Owner(pid=-3, pid_start_time=1)])
def test_invalid_owner_is_refused_and_nothing_changes(server, bad):
    _, state = server
    with pytest.raises(grpc.RpcError) as caught:
        state.CreateContainer(pb.CreateContainerRequest(name="x", image="busybox", command=["top"], owner=bad), timeout=5)
    assert caught.value.code() == CODE.INVALID_ARGUMENT and "owner" in caught.value.details()
    assert list(state.ListContainers(pb.ListContainersRequest(), timeout=5).containers) == []
    created = state.CreateContainer(pb.CreateContainerRequest(image="busybox", command=["top"]), timeout=5).container
    with pytest.raises(grpc.RpcError) as caught:
        state.UpdateContainerStatus(
            pb.UpdateContainerStatusRequest(id=created.id, status=pb.CONTAINER_STATUS_REMOVING, owner=bad), timeout=5
        )
    assert caught.value.code() == CODE.INVALID_ARGUMENT
    assert state.GetContainer(pb.GetContainerRequest(reference=created.id), timeout=5).container.status == (
        pb.CONTAINER_STATUS_CREATED
    )


class Client:
    """One CLI-like loop on its own channel; every unexpected status is kept, never raised in the thread."""

    def __init__(self, socket, number: int):
        self.channel = grpc.insecure_channel(unix_target(socket))
        self.stub = state_pb2_grpc.StateServiceStub(self.channel)
        self.number = number
        self.created_ids: list[str] = []
        self.shared_wins: list[int] = []
        self.shared_losses: list[int] = []
        self.unexpected: list[str] = []

    def call(self, method: str, request, expected=()):
        try:
            return getattr(self.stub, method)(request, timeout=TIMEOUT)
        except grpc.RpcError as err:
            if err.code() not in expected:
                self.unexpected.append(f"{method}: {err.code().name}: {err.details()}")
            return err

    def run(self, barrier: threading.Barrier, shared_ids: dict[int, str]) -> None:
        for round_number in range(ROUNDS):
            # Everyone asks for the same name at the same moment: one wins, the others are told it is taken.
            barrier.wait()
            shared = self.call(
                "CreateContainer",
                pb.CreateContainerRequest(name=f"shared-{round_number}", image="busybox", command=["top"], owner=owner(self.number + 1)),
                expected=(CODE.ALREADY_EXISTS,),
            )
            if isinstance(shared, grpc.RpcError):
                if shared.code() == CODE.ALREADY_EXISTS:
                    self.shared_losses.append(round_number)
            else:
                self.shared_wins.append(round_number)
                self.created_ids.append(shared.container.id)
                shared_ids[round_number] = shared.container.id
            self.lifecycle(round_number)
            # Racing the winner's own removal of last round's shared container: gone or in progress are both fine.
            if round_number - 1 in shared_ids:
                other = shared_ids[round_number - 1]
                self.call("GetContainer", pb.GetContainerRequest(reference=other), expected=(CODE.NOT_FOUND,))
                self.call(
                    "UpdateContainerStatus",
                    pb.UpdateContainerStatusRequest(id=other, status=pb.CONTAINER_STATUS_REMOVING, owner=owner(self.number + 1)),
                    expected=(CODE.NOT_FOUND, CODE.FAILED_PRECONDITION),
                )
                self.call("DeleteContainer", pb.DeleteContainerRequest(id=other), expected=(CODE.NOT_FOUND,))

    def lifecycle(self, round_number: int) -> None:
        """create, get, list, running, exited, removing, delete: what run -d then rm does to state."""
        name = f"c{self.number}-{round_number}"
        created = self.call(
            "CreateContainer", pb.CreateContainerRequest(name=name, image="busybox", command=["top"], owner=owner(self.number + 1))
        )
        if isinstance(created, grpc.RpcError):
            return
        container_id = created.container.id
        self.created_ids.append(container_id)
        steps = [
            ("GetContainer", pb.GetContainerRequest(reference=name)),
            ("ListContainers", pb.ListContainersRequest()),
            ("UpdateContainerStatus", pb.UpdateContainerStatusRequest(
                id=container_id, status=pb.CONTAINER_STATUS_RUNNING, pid=100 + self.number, pid_start_time=5)),
            ("ListContainers", pb.ListContainersRequest(statuses=[pb.CONTAINER_STATUS_RUNNING])),
            ("UpdateContainerStatus", pb.UpdateContainerStatusRequest(id=container_id, status=pb.CONTAINER_STATUS_EXITED)),
            ("UpdateContainerStatus", pb.UpdateContainerStatusRequest(
                id=container_id, status=pb.CONTAINER_STATUS_REMOVING, owner=owner(self.number + 1))),
            ("DeleteContainer", pb.DeleteContainerRequest(id=container_id)),
        ]
        for method, request in steps:
            if isinstance(self.call(method, request), grpc.RpcError):
                return


def test_thirty_concurrent_clients_see_only_domain_errors(server):
    socket, state = server
    clients = [Client(socket, number) for number in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS, timeout=TIMEOUT)
    shared_ids: dict[int, str] = {}
    threads = [threading.Thread(target=c.run, args=(barrier, shared_ids), name=f"client-{c.number}") for c in clients]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        for client in clients:
            client.channel.close()

    unexpected = [line for client in clients for line in client.unexpected]
    assert unexpected == [], unexpected[:5]
    created = [container_id for client in clients for container_id in client.created_ids]
    assert len(created) == len(set(created)) == CLIENTS * ROUNDS + ROUNDS
    wins = Counter(r for client in clients for r in client.shared_wins)
    losses = Counter(r for client in clients for r in client.shared_losses)
    assert all(wins[r] == 1 and losses[r] == CLIENTS - 1 for r in range(ROUNDS)), (wins, losses)
    # Every lifecycle container was deleted; of the shared ones at most the last round's may remain.
    left = state.ListContainers(pb.ListContainersRequest(), timeout=5).containers
    assert {c.name for c in left} <= {f"shared-{ROUNDS - 1}"}
    info = state.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert info.containers == len(left)
