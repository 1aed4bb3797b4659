"""The state service through its gRPC API: a real server on a temp unix socket, a real channel."""

from __future__ import annotations

import threading

import grpc
import pytest

from protos.state.v1 import state_pb2 as pb
from protos.state.v1 import state_pb2_grpc
from protos.types.v1 import types_pb2
from services.common.netnames import bridge_name
from services.common.config import VERSION
from services.state.__main__ import build

CODE = grpc.StatusCode


@pytest.fixture
def state(start_server, temp_config):
    _, channel = start_server(build(temp_config))
    return state_pb2_grpc.StateServiceStub(channel)


def create(state, name: str = "", command=("top",), **fields) -> pb.Container:
    request = pb.CreateContainerRequest(name=name, image="busybox", command=list(command), **fields)
    return state.CreateContainer(request, timeout=5).container


def expect(code: grpc.StatusCode, call, request, fragment: str = ""):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    assert caught.value.code() == code, caught.value.details()
    assert fragment in caught.value.details()
    return caught.value.details()


def to_running(state, container_id: str, pid: int = 4242) -> pb.Container:
    request = pb.UpdateContainerStatusRequest(
        id=container_id, status=pb.CONTAINER_STATUS_RUNNING, pid=pid, pid_start_time=777, shim_pid=pid - 1
    )
    return state.UpdateContainerStatus(request, timeout=5).container


def test_info(state, temp_config):
    create(state, "a")
    info = state.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert info.version == VERSION
    assert info.database_path == str(temp_config.state_db_path())
    assert info.schema_version >= 1
    assert (info.containers, info.networks) == (1, 0)


def test_create_container_stores_every_field(state):
    container = create(
        state,
        "web",
        command=("sh", "-c", "echo a b"),
        env=["A=1", "B=x=y"],
        volumes=[types_pb2.Volume(host_path="/srv/data", container_path="/data", read_only=True)],
        resources=types_pb2.Resources(memory_bytes=64 << 20, nano_cpus=1_500_000_000, cpuset_cpus="0", pids_limit=64),
        network="net1",
        ports=[types_pb2.PortMapping(host_port=8080, container_port=80, protocol=types_pb2.PROTOCOL_TCP)],
        labels={"team": "a"},
        working_dir="/tmp",
        tty=True,
        stdin_open=True,
        auto_remove=True,
    )
    assert len(container.id) == 10 and container.id.isdigit() and container.id[0] != "0"
    assert container.status == pb.CONTAINER_STATUS_CREATED
    assert list(container.command) == ["sh", "-c", "echo a b"]
    assert list(container.env) == ["A=1", "B=x=y"]
    assert container.volumes[0].read_only and container.volumes[0].container_path == "/data"
    assert container.resources.nano_cpus == 1_500_000_000
    assert container.ports[0].host_port == 8080
    assert dict(container.labels) == {"team": "a"}
    assert (container.hostname, container.working_dir) == ("web", "/tmp")
    assert container.tty and container.stdin_open and container.auto_remove
    assert container.created_at.seconds > 0
    assert container == state.GetContainer(pb.GetContainerRequest(reference=container.id), timeout=5).container


def test_name_defaults_to_id_and_must_be_unique(state):
    unnamed = create(state)
    assert unnamed.name == unnamed.id
    create(state, "c1")
    expect(CODE.ALREADY_EXISTS, state.CreateContainer, pb.CreateContainerRequest(name="c1", image="busybox", command=["top"]), "c1")


@pytest.mark.parametrize(
    "request_fields",
    [
        {"name": "bad name", "image": "busybox", "command": ["top"]},
        {"image": "", "command": ["top"]},
        {"image": "../etc", "command": ["top"]},
        {"image": "busybox", "command": []},
        {"image": "busybox", "command": ["top"], "env": ["=x"]},
        {"image": "busybox", "command": ["top"], "working_dir": "relative"},
        {"image": "busybox", "command": ["top"], "volumes": [types_pb2.Volume(host_path="rel", container_path="/d")]},
        {"image": "busybox", "command": ["top"], "resources": types_pb2.Resources(memory_bytes=-1)},
        {"image": "busybox", "command": ["top"], "ports": [types_pb2.PortMapping(host_port=0, container_port=80)]},
    ],
)
def test_create_container_rejects_bad_input(state, request_fields):
    expect(CODE.INVALID_ARGUMENT, state.CreateContainer, pb.CreateContainerRequest(**request_fields))


def test_get_container_by_id_name_and_prefix(state):
    container = create(state, "rootfs")
    for reference in (container.id, "rootfs", container.id[:4]):
        found = state.GetContainer(pb.GetContainerRequest(reference=reference), timeout=5).container
        assert found.id == container.id
    expect(CODE.NOT_FOUND, state.GetContainer, pb.GetContainerRequest(reference="nope"), "nope")
    expect(CODE.INVALID_ARGUMENT, state.GetContainer, pb.GetContainerRequest(reference=""))


def test_ambiguous_prefix_is_a_clear_error(state):
    ids = {create(state).id for _ in range(40)}
    # Forty 10-digit ids share some first digit, so a one-digit prefix is ambiguous.
    digit = next(d for d in "123456789" if sum(i.startswith(d) for i in ids) > 1)
    details = expect(CODE.FAILED_PRECONDITION, state.GetContainer, pb.GetContainerRequest(reference=digit), "ambiguous")
    assert digit in details


def test_list_filters(state):
    a = create(state, "a", labels={"k": "v"})
    b = create(state, "b", network="n1")
    to_running(state, b.id)

    def ids(**filters):
        return [c.id for c in state.ListContainers(pb.ListContainersRequest(**filters), timeout=5).containers]

    assert ids() == [a.id, b.id]
    assert ids(statuses=[pb.CONTAINER_STATUS_RUNNING]) == [b.id]
    assert ids(statuses=[pb.CONTAINER_STATUS_CREATED, pb.CONTAINER_STATUS_RUNNING]) == [a.id, b.id]
    assert ids(network="n1") == [b.id]
    assert ids(labels={"k": "v"}) == [a.id]
    assert ids(image="other") == []


def test_status_updates_follow_the_state_machine(state):
    container = create(state, "sm")
    running = to_running(state, container.id)
    assert running.status == pb.CONTAINER_STATUS_RUNNING
    assert (running.pid, running.pid_start_time, running.shim_pid) == (4242, 777, 4241)
    assert running.started_at.seconds > 0

    expect(
        CODE.FAILED_PRECONDITION,
        state.UpdateContainerStatus,
        pb.UpdateContainerStatusRequest(id=container.id, status=pb.CONTAINER_STATUS_CREATED),
        "invalid state transition from running to created",
    )
    stopped = state.UpdateContainerStatus(
        pb.UpdateContainerStatusRequest(id=container.id, status=pb.CONTAINER_STATUS_STOPPED, exit_code=143), timeout=5
    ).container
    assert (stopped.status, stopped.exit_code, stopped.pid) == (pb.CONTAINER_STATUS_STOPPED, 143, 0)
    assert stopped.finished_at.seconds > 0


def test_an_exit_can_start_its_removal_in_the_same_write(state):
    container = create(state, "rm-at-exit")
    to_running(state, container.id)
    owner = pb.Owner(pid=4242, pid_start_time=99)
    expect(
        CODE.INVALID_ARGUMENT,
        state.UpdateContainerStatus,
        pb.UpdateContainerStatusRequest(
            id=container.id, status=pb.CONTAINER_STATUS_RUNNING, pid=1, pid_start_time=1, then_removing=True
        ),
        "then_removing follows only a move to stopped or exited",
    )
    removing = state.UpdateContainerStatus(
        pb.UpdateContainerStatusRequest(
            id=container.id, status=pb.CONTAINER_STATUS_EXITED, exit_code=3, owner=owner, then_removing=True
        ),
        timeout=5,
    ).container
    assert (removing.status, removing.exit_code, removing.owner) == (pb.CONTAINER_STATUS_REMOVING, 3, owner)
    assert removing.finished_at.seconds > 0


def test_status_update_errors(state):
    container = create(state)
    expect(
        CODE.NOT_FOUND,
        state.UpdateContainerStatus,
        pb.UpdateContainerStatusRequest(id="0000000000", status=pb.CONTAINER_STATUS_RUNNING, pid=1, pid_start_time=1),
    )
    expect(
        CODE.INVALID_ARGUMENT,
        state.UpdateContainerStatus,
        pb.UpdateContainerStatusRequest(id=container.id, status=pb.CONTAINER_STATUS_RUNNING),
        "pid",
    )
    expect(
        CODE.INVALID_ARGUMENT,
        state.UpdateContainerStatus,
        pb.UpdateContainerStatusRequest(id=container.id, status=pb.CONTAINER_STATUS_UNSPECIFIED),
    )


def test_delete_container(state):
    container = create(state, "del")
    to_running(state, container.id)
    expect(CODE.FAILED_PRECONDITION, state.DeleteContainer, pb.DeleteContainerRequest(id=container.id), "running")
    state.UpdateContainerStatus(
        pb.UpdateContainerStatusRequest(id=container.id, status=pb.CONTAINER_STATUS_EXITED, exit_code=0), timeout=5
    )
    deleted = state.DeleteContainer(pb.DeleteContainerRequest(id=container.id), timeout=5).container
    assert deleted.id == container.id
    expect(CODE.NOT_FOUND, state.DeleteContainer, pb.DeleteContainerRequest(id=container.id))
    expect(CODE.NOT_FOUND, state.GetContainer, pb.GetContainerRequest(reference="del"))


def test_networks(state):
    created = state.CreateNetwork(pb.CreateNetworkRequest(name="n1", subnet="10.77.0.0/24", labels={"a": "b"}), timeout=5).network
    assert (created.driver, created.subnet, created.gateway) == ("bridge", "10.77.0.0/24", "10.77.0.1")
    reply = state.GetNetwork(pb.GetNetworkRequest(name="n1"), timeout=5)
    assert reply.network == created
    assert [(a.address, a.owner) for a in reply.allocations] == [("10.77.0.1", "gateway")]
    state.CreateNetwork(pb.CreateNetworkRequest(name="n0", subnet="10.78.0.0/30", gateway="10.78.0.2"), timeout=5)
    assert [n.name for n in state.ListNetworks(pb.ListNetworksRequest(), timeout=5).networks] == ["n0", "n1"]

    expect(CODE.ALREADY_EXISTS, state.CreateNetwork, pb.CreateNetworkRequest(name="n1", subnet="10.79.0.0/24"), "n1")
    expect(CODE.FAILED_PRECONDITION, state.CreateNetwork, pb.CreateNetworkRequest(name="n2", subnet="10.77.0.0/16"), "n1")
    for bad in (
        pb.CreateNetworkRequest(name="n3", subnet=""),
        pb.CreateNetworkRequest(name="n3", subnet="10.80.0.0/33"),
        pb.CreateNetworkRequest(name="n3", subnet="10.80.0.5/24"),
        pb.CreateNetworkRequest(name="n3", subnet="10.80.0.0/24", gateway="10.81.0.1"),
        pb.CreateNetworkRequest(name="n3", subnet="10.80.0.0/24", driver="overlay"),
        pb.CreateNetworkRequest(name="bad name", subnet="10.80.0.0/24"),
    ):
        expect(CODE.INVALID_ARGUMENT, state.CreateNetwork, bad)
    expect(CODE.NOT_FOUND, state.GetNetwork, pb.GetNetworkRequest(name="missing"), "missing")

    deleted = state.DeleteNetwork(pb.DeleteNetworkRequest(name="n0"), timeout=5).network
    assert deleted.name == "n0"
    expect(CODE.NOT_FOUND, state.DeleteNetwork, pb.DeleteNetworkRequest(name="n0"))


def test_address_allocation_lifecycle(state):
    state.CreateNetwork(pb.CreateNetworkRequest(name="tiny", subnet="10.90.0.0/30"), timeout=5)
    first, second = create(state, "first", network="tiny"), create(state, "second", network="tiny")
    reply = state.AllocateAddress(pb.AllocateAddressRequest(network="tiny", container_id=first.id), timeout=5)
    assert (reply.allocation.address, reply.allocation.owner) == ("10.90.0.2", first.id)
    assert (reply.prefix_length, reply.gateway) == (30, "10.90.0.1")
    assert state.GetContainer(pb.GetContainerRequest(reference=first.id), timeout=5).container.ip == "10.90.0.2"

    expect(CODE.FAILED_PRECONDITION, state.AllocateAddress, pb.AllocateAddressRequest(network="tiny", container_id=first.id))
    expect(CODE.FAILED_PRECONDITION, state.AllocateAddress, pb.AllocateAddressRequest(network="tiny", container_id=second.id), "no free address")
    expect(CODE.NOT_FOUND, state.AllocateAddress, pb.AllocateAddressRequest(network="missing", container_id=first.id))
    expect(CODE.NOT_FOUND, state.AllocateAddress, pb.AllocateAddressRequest(network="tiny", container_id="0000000000"))
    expect(CODE.FAILED_PRECONDITION, state.DeleteNetwork, pb.DeleteNetworkRequest(name="tiny"), first.id)

    listed = state.ListAddresses(pb.ListAddressesRequest(network="tiny"), timeout=5).allocations
    assert [(a.address, a.owner) for a in listed] == [("10.90.0.1", "gateway"), ("10.90.0.2", first.id)]

    released = state.ReleaseAddress(pb.ReleaseAddressRequest(network="tiny", container_id=first.id), timeout=5)
    assert released.allocation.address == "10.90.0.2"
    assert state.GetContainer(pb.GetContainerRequest(reference=first.id), timeout=5).container.ip == ""
    expect(CODE.NOT_FOUND, state.ReleaseAddress, pb.ReleaseAddressRequest(network="tiny", container_id=first.id))
    # The freed address goes to the next container.
    reply = state.AllocateAddress(pb.AllocateAddressRequest(network="tiny", container_id=second.id), timeout=5)
    assert reply.allocation.address == "10.90.0.2"
    expect(CODE.NOT_FOUND, state.ListAddresses, pb.ListAddressesRequest(network="missing"))


def test_deleting_a_container_releases_its_address(state):
    state.CreateNetwork(pb.CreateNetworkRequest(name="n", subnet="10.91.0.0/30"), timeout=5)
    container = create(state, network="n")
    state.AllocateAddress(pb.AllocateAddressRequest(network="n", container_id=container.id), timeout=5)
    state.DeleteContainer(pb.DeleteContainerRequest(id=container.id), timeout=5)
    owners = [a.owner for a in state.ListAddresses(pb.ListAddressesRequest(network="n"), timeout=5).allocations]
    assert owners == ["gateway"]
    state.DeleteNetwork(pb.DeleteNetworkRequest(name="n"), timeout=5)


def test_concurrent_allocations_over_grpc_never_repeat_an_address(state):
    state.CreateNetwork(pb.CreateNetworkRequest(name="busy", subnet="10.92.0.0/24"), timeout=5)
    containers = [create(state) for _ in range(60)]
    addresses: list[str] = []
    lock = threading.Lock()

    def allocate(container_id: str) -> None:
        reply = state.AllocateAddress(pb.AllocateAddressRequest(network="busy", container_id=container_id), timeout=30)
        with lock:
            addresses.append(reply.allocation.address)

    threads = [threading.Thread(target=allocate, args=(c.id,)) for c in containers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(addresses) == len(set(addresses)) == 60
    assert "10.92.0.0" not in addresses and "10.92.0.255" not in addresses and "10.92.0.1" not in addresses


def test_records_survive_a_server_restart_on_the_same_database(start_server, temp_config):
    running, channel = start_server(build(temp_config))
    state = state_pb2_grpc.StateServiceStub(channel)
    container = create(state, "keep")
    to_running(state, container.id)
    state.CreateNetwork(pb.CreateNetworkRequest(name="kept", subnet="10.93.0.0/24"), timeout=5)
    state.AllocateAddress(pb.AllocateAddressRequest(network="kept", container_id=container.id), timeout=5)
    running.stop(grace=1)

    _, channel = start_server(build(temp_config))
    state = state_pb2_grpc.StateServiceStub(channel)
    again = state.GetContainer(pb.GetContainerRequest(reference="keep"), timeout=5).container
    assert again.id == container.id
    assert again.status == pb.CONTAINER_STATUS_RUNNING
    assert again.ip == "10.93.0.2"
    assert state.GetNetwork(pb.GetNetworkRequest(name="kept"), timeout=5).network.subnet == "10.93.0.0/24"


def test_bridge_names_published_ports_and_addresses_freed_with_the_process(state, temp_config):
    network = state.CreateNetwork(pb.CreateNetworkRequest(name="web", subnet="10.93.0.0/24"), timeout=5).network
    # A temp root is another instance than the default one: its bridges are its own.
    assert temp_config.instance and network.bridge == bridge_name("web", temp_config.instance) != "mdb-web"
    assert state.GetNetwork(pb.GetNetworkRequest(name="web"), timeout=5).network.bridge == network.bridge

    port = types_pb2.PortMapping(host_port=8080, container_port=80, protocol=types_pb2.PROTOCOL_TCP)
    web = create(state, "web1", network="web", ports=[port])
    expect(CODE.ALREADY_EXISTS, state.CreateContainer, pb.CreateContainerRequest(image="busybox", command=["top"], ports=[port]), web.id)
    udp = types_pb2.PortMapping(host_port=8080, container_port=80, protocol=types_pb2.PROTOCOL_UDP)
    create(state, "web2", ports=[udp])

    state.AllocateAddress(pb.AllocateAddressRequest(network="web", container_id=web.id), timeout=5)
    running = pb.UpdateContainerStatusRequest(id=web.id, status=pb.CONTAINER_STATUS_RUNNING, pid=10, pid_start_time=20)
    assert state.UpdateContainerStatus(running, timeout=5).container.ip == "10.93.0.2"
    stopped = pb.UpdateContainerStatusRequest(id=web.id, status=pb.CONTAINER_STATUS_STOPPED)
    assert state.UpdateContainerStatus(stopped, timeout=5).container.ip == ""
    owners = [a.owner for a in state.ListAddresses(pb.ListAddressesRequest(network="web"), timeout=5).allocations]
    assert owners == ["gateway"]
    # Stopped, it holds its host port no more.
    create(state, "web3", ports=[port])


def test_security_options_are_stored_and_checked(state):
    security = types_pb2.SecurityOptions(
        cap_add=["NET_ADMIN"],
        cap_drop=["ALL"],
        seccomp_profile='{"defaultAction": "SCMP_ACT_ALLOW"}',
        no_new_privileges=True,
        user="1000:1000",
        group_add=["audio"],
        read_only_rootfs=True,
        tmpfs=[types_pb2.TmpfsMount(path="/run", options="size=1m")],
        devices=[types_pb2.DeviceMapping(host_path="/dev/fuse", container_path="/dev/fuse", permissions="rw")],
        ulimits=[types_pb2.Ulimit(name="nofile", soft=10, hard=20)],
        oom_score_adj=-5,
    )
    container = create(state, "secure", security=security)
    assert container.security == security
    fetched = state.GetContainer(pb.GetContainerRequest(reference="secure"), timeout=5).container
    assert fetched.security == security
    assert create(state, "plain").security == types_pb2.SecurityOptions()
    for bad, fragment in [
        (types_pb2.SecurityOptions(cap_add=["NOPE"]), 'unknown capability "NOPE"'),
        (types_pb2.SecurityOptions(user="a:b:c"), "invalid user"),
        (types_pb2.SecurityOptions(ulimits=[types_pb2.Ulimit(name="nofile", soft=5, hard=1)]), "soft limit 5"),
        (types_pb2.SecurityOptions(oom_score_adj=5000), "outside -1000..1000"),
    ]:
        expect(CODE.INVALID_ARGUMENT, state.CreateContainer, pb.CreateContainerRequest(image="busybox", command=["top"], security=bad), fragment)
    clash = pb.CreateContainerRequest(
        image="busybox",
        command=["top"],
        volumes=[types_pb2.Volume(host_path="/srv", container_path="/data")],
        security=types_pb2.SecurityOptions(tmpfs=[types_pb2.TmpfsMount(path="/data/")]),
    )
    expect(CODE.INVALID_ARGUMENT, state.CreateContainer, clash, '"/data/" is both a volume and a --tmpfs')
