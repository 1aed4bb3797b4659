"""Unit tests of the state service core over a real SQLite file: records, lookups, IPAM and concurrency."""

import multiprocessing
import os
import signal
import sqlite3
import threading
import time

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, InvalidTransition, NotFound
from services.state import core as core_module
from services.state.core import StateCore
from services.state.model import ContainerSpec, ContainerStatus, PortMapping, Resources, Volume
from services.state.store import SCHEMA_VERSION, Store

S = ContainerStatus


class FakeClock:
    """Returns 1001.0, 1002.0, ... so that every record gets a distinct, predictable time."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db_path):
    with Store(db_path) as opened:
        yield opened


@pytest.fixture
def core(store):
    return StateCore(store, clock=FakeClock())


@pytest.fixture
def fixed_ids(monkeypatch):
    """Make container ids come from a given list, e.g. fixed_ids("1200000000", "1300000000")."""

    def use(*ids):
        values = iter(int(container_id) - 10**9 for container_id in ids)
        monkeypatch.setattr(core_module.secrets, "randbelow", lambda upper: next(values))

    return use


def spec(**fields):
    fields.setdefault("image", "busybox")
    fields.setdefault("command", ["sh"])
    return ContainerSpec(**fields)


# Containers.


def test_create_container_fills_defaults(core):
    container = core.create_container(spec())
    assert len(container.id) == 10 and container.id.isdigit() and container.id[0] != "0"
    assert container.name == container.id
    assert container.hostname == container.id
    assert container.working_dir == "/"
    assert container.status is S.CREATED
    assert container.created_at == 1001.0
    assert container.started_at is None and container.finished_at is None
    assert (container.pid, container.pid_start_time, container.shim_pid, container.ip) == (0, 0, 0, "")
    assert core.get_container(container.id) == container


def test_create_container_stores_every_field(core):
    full = spec(
        name="web",
        command=["sh", "-c", "echo hi"],
        env=["A=1", "B=x=y"],
        volumes=[Volume("/srv", "/data", read_only=True)],
        resources=Resources(memory_bytes=64 << 20, nano_cpus=500_000_000, cpuset_cpus="0", pids_limit=20),
        network="net1",
        ports=[PortMapping(8080, 80, "tcp", "127.0.0.1"), PortMapping(53, 53, "udp")],
        labels={"tier": "front"},
        hostname="webhost",
        working_dir="/srv",
        tty=True,
        stdin_open=True,
        auto_remove=True,
        image_id="sha256:" + "ab" * 32,
        stop_signal="SIGQUIT",
    )
    created = core.create_container(full)
    stored = core.get_container("web")
    assert stored == created
    assert stored.command == ("sh", "-c", "echo hi")
    assert stored.volumes == (Volume("/srv", "/data", read_only=True),)
    assert stored.ports[1] == PortMapping(53, 53, "udp")
    assert stored.resources.pids_limit == 20
    assert (stored.image_id, stored.stop_signal) == ("sha256:" + "ab" * 32, "SIGQUIT")
    assert (stored.hostname, stored.working_dir, stored.tty, stored.stdin_open, stored.auto_remove) == (
        "webhost", "/srv", True, True, True)


def test_hostname_defaults_to_name_cut_to_hostname_length(core):
    assert core.create_container(spec(name="web")).hostname == "web"
    assert core.create_container(spec(name="n" * 100)).hostname == "n" * 63


def test_invalid_spec_is_refused_and_nothing_stored(core):
    with pytest.raises(InvalidArgument, match="invalid image reference"):
        core.create_container(spec(image="library//busybox"))
    with pytest.raises(InvalidArgument, match="invalid image id"):
        core.create_container(spec(image="busybox", image_id="sha256:xyz"))
    assert core.list_containers() == []


def test_container_names_are_unique(core):
    first = core.create_container(spec(name="web"))
    with pytest.raises(AlreadyExists) as raised:
        core.create_container(spec(name="web"))
    assert str(raised.value) == (
        f'container name "web" is already in use by container {first.id}: '
        "choose another name or remove that container"
    )
    with pytest.raises(AlreadyExists, match="is the id of another container"):
        core.create_container(spec(name=first.id))
    assert len(core.list_containers()) == 1


def test_id_generation_retries_until_unique(core, fixed_ids):
    fixed_ids("1111111111", "1111111111", "2222222222", "3333333333", "4444444444")
    assert core.create_container(spec()).id == "1111111111"
    assert core.create_container(spec()).id == "2222222222"
    # An id already used as a name is skipped too.
    core.create_container(spec(name="3333333333"))
    assert core.create_container(spec()).id == "4444444444"


def test_lookup_by_id_name_and_prefix(core, fixed_ids):
    fixed_ids("1200000000", "1300000000", "1310000000", "9000000000")
    first = core.create_container(spec(name="alpha"))
    second = core.create_container(spec(name="beta"))
    third = core.create_container(spec())
    named_like_prefix = core.create_container(spec(name="13"))
    assert core.get_container("1200000000") == first
    assert core.get_container("beta") == second
    assert core.get_container("12") == first
    assert core.get_container("131") == third
    # An exact name wins over an id prefix.
    assert core.get_container("13") == named_like_prefix


def test_ambiguous_prefix_lists_matches(core, fixed_ids):
    fixed_ids("1300000000", "1310000000")
    core.create_container(spec())
    core.create_container(spec())
    with pytest.raises(FailedPrecondition) as raised:
        core.get_container("1")
    assert str(raised.value) == (
        'container reference "1" is ambiguous, it matches 1300000000, 1310000000: use more characters of the id'
    )


def test_missing_and_empty_references(core):
    with pytest.raises(NotFound, match="^no such container: nope$"):
        core.get_container("nope")
    with pytest.raises(InvalidArgument):
        core.get_container("")
    with pytest.raises(NotFound):
        core.get_container("%")


def test_list_containers_filters_and_order(core):
    a = core.create_container(spec(name="a", image="busybox", network="n1", labels={"tier": "front", "x": "1"}))
    b = core.create_container(spec(name="b", image="alpine", network="n1", labels={"tier": "back"}))
    c = core.create_container(spec(name="c", image="busybox", labels={"tier": "front"}))
    core.update_container_status(b.id, S.RUNNING, pid=10, pid_start_time=20)
    assert [x.name for x in core.list_containers()] == ["a", "b", "c"]
    assert [x.name for x in core.list_containers(statuses=[S.RUNNING])] == ["b"]
    assert [x.name for x in core.list_containers(statuses=["created", "running"])] == ["a", "b", "c"]
    assert [x.name for x in core.list_containers(image="busybox")] == ["a", "c"]
    assert [x.name for x in core.list_containers(network="n1")] == ["a", "b"]
    assert [x.name for x in core.list_containers(labels={"tier": "front"})] == ["a", "c"]
    assert [x.name for x in core.list_containers(labels={"tier": "front", "x": "1"})] == ["a"]
    assert [x.name for x in core.list_containers(image="busybox", network="n1", statuses=[S.CREATED])] == ["a"]
    assert core.list_containers(labels={"tier": "nowhere"}) == []
    assert [x.id for x in core.list_containers()] == [a.id, b.id, c.id]


def test_running_then_stopped_then_running_again(core):
    container = core.create_container(spec())
    running = core.update_container_status(container.id, S.RUNNING, pid=100, pid_start_time=5000, shim_pid=99)
    assert (running.status, running.pid, running.pid_start_time, running.shim_pid) == (S.RUNNING, 100, 5000, 99)
    assert running.started_at == 1002.0
    stopped = core.update_container_status(container.id, S.STOPPED, exit_code=137, oom_killed=True)
    assert (stopped.status, stopped.exit_code, stopped.oom_killed) == (S.STOPPED, 137, True)
    assert (stopped.pid, stopped.pid_start_time, stopped.shim_pid) == (0, 0, 0)
    assert stopped.finished_at == 1003.0 and stopped.started_at == 1002.0
    again = core.update_container_status(container.id, "running", pid=101, pid_start_time=6000)
    assert (again.exit_code, again.oom_killed, again.error, again.started_at) == (0, False, "", 1004.0)
    assert core.get_container(container.id) == again


def test_exited_from_created_records_the_error(core):
    container = core.create_container(spec())
    exited = core.update_container_status(container.id, S.EXITED, exit_code=127, error="exec: sh: not found")
    assert (exited.status, exited.exit_code, exited.error) == (S.EXITED, 127, "exec: sh: not found")
    removing = core.update_container_status(container.id, S.REMOVING)
    assert removing.status is S.REMOVING
    assert (removing.exit_code, removing.error) == (127, "exec: sh: not found")
    assert removing.finished_at == exited.finished_at


def test_running_needs_pid_and_start_time(core):
    container = core.create_container(spec())
    for pid, start_time in [(0, 5), (5, 0), (-1, 5)]:
        with pytest.raises(InvalidArgument, match="cannot be marked running"):
            core.update_container_status(container.id, S.RUNNING, pid=pid, pid_start_time=start_time)
    assert core.get_container(container.id).status is S.CREATED


def test_illegal_transition_changes_nothing(core):
    container = core.create_container(spec())
    running = core.update_container_status(container.id, S.RUNNING, pid=1, pid_start_time=1)
    expected = f"container {container.id}: invalid state transition from running to removing"
    with pytest.raises(InvalidTransition, match=expected):
        core.update_container_status(container.id, S.REMOVING)
    with pytest.raises(InvalidTransition):
        core.update_container_status(container.id, S.RUNNING, pid=2, pid_start_time=2)
    assert core.get_container(container.id) == running


def test_update_status_errors(core):
    with pytest.raises(NotFound):
        core.update_container_status("1234567890", S.EXITED)
    container = core.create_container(spec())
    with pytest.raises(InvalidArgument, match='unknown container status "paused"'):
        core.update_container_status(container.id, "paused")
    with pytest.raises(InvalidArgument):
        core.update_container_status("", S.EXITED)


def test_delete_container(core):
    container = core.create_container(spec())
    core.update_container_status(container.id, S.RUNNING, pid=1, pid_start_time=1)
    with pytest.raises(FailedPrecondition, match="is running: stop it"):
        core.delete_container(container.id)
    stopped = core.update_container_status(container.id, S.STOPPED)
    assert core.delete_container(container.id) == stopped
    with pytest.raises(NotFound):
        core.get_container(container.id)
    with pytest.raises(NotFound):
        core.delete_container(container.id)


# Networks.


def test_create_network_defaults(core):
    network = core.create_network("net1", subnet="10.20.0.0/24", labels={"a": "b"})
    assert (network.name, network.driver) == ("net1", "bridge")
    assert (network.subnet, network.gateway) == ("10.20.0.0/24", "10.20.0.1")
    assert network.labels == {"a": "b"} and network.created_at == 1001.0
    fetched, allocations = core.get_network("net1")
    assert fetched == network
    assert [(a.address, a.owner) for a in allocations] == [("10.20.0.1", "gateway")]


def test_create_network_with_gateway(core):
    network = core.create_network("net1", driver="bridge", subnet="10.20.0.0/24", gateway="10.20.0.254")
    assert network.gateway == "10.20.0.254"
    container = core.create_container(spec())
    assert core.allocate_address("net1", container.id).allocation.address == "10.20.0.1"


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"driver": "overlay"}, 'unsupported network driver "overlay"'),
        ({"subnet": "10.0.0.5/24"}, "host bits set: use 10.0.0.0/24"),
        ({"subnet": ""}, "subnet is empty"),
        ({"gateway": "10.9.0.1"}, "not a host address"),
        ({"name": "bad/name"}, "invalid network name"),
    ],
)
def test_create_network_invalid_arguments(core, fields, message):
    arguments = {"name": "net1", "subnet": "10.0.0.0/24", **fields}
    with pytest.raises(InvalidArgument, match=message):
        core.create_network(**arguments)
    assert core.list_networks() == []


def test_network_name_taken_and_overlaps(core):
    core.create_network("wide", subnet="10.0.0.0/16")
    with pytest.raises(AlreadyExists, match='network name "wide" is already in use'):
        core.create_network("wide", subnet="10.1.0.0/16")
    with pytest.raises(FailedPrecondition, match="overlaps subnet 10.0.0.0/16 of network wide"):
        core.create_network("inner", subnet="10.0.3.0/24")
    with pytest.raises(FailedPrecondition, match="of network wide"):
        core.create_network("outer", subnet="10.0.0.0/8")
    core.create_network("beside", subnet="10.1.0.0/24")
    assert [n.name for n in core.list_networks()] == ["beside", "wide"]


def test_network_not_found(core):
    for call in (core.get_network, core.delete_network, core.list_addresses):
        with pytest.raises(NotFound, match="no such network: ghost"):
            call("ghost")
    container = core.create_container(spec())
    with pytest.raises(NotFound):
        core.allocate_address("ghost", container.id)


def test_delete_network_refused_while_attached(core):
    core.create_network("net1", subnet="10.0.0.0/24")
    container = core.create_container(spec(network="net1"))
    core.allocate_address("net1", container.id)
    with pytest.raises(FailedPrecondition, match=f"network net1 is in use by containers {container.id}"):
        core.delete_network("net1")
    core.release_address("net1", container.id)
    deleted = core.delete_network("net1")
    assert deleted.name == "net1"
    assert core.list_networks() == []
    # The gateway reservation went with it, so the same subnet can come back.
    core.create_network("net2", subnet="10.0.0.0/24")


# IP allocation.


def test_slash_30_has_exactly_one_container_address(core):
    core.create_network("tiny", subnet="10.0.0.0/30")
    first, second = core.create_container(spec()), core.create_container(spec())
    assignment = core.allocate_address("tiny", first.id)
    assert (assignment.allocation.address, assignment.prefix_length, assignment.gateway) == ("10.0.0.2", 30, "10.0.0.1")
    assert core.get_container(first.id).ip == "10.0.0.2"
    with pytest.raises(FailedPrecondition) as raised:
        core.allocate_address("tiny", second.id)
    assert str(raised.value) == (
        "network tiny (10.0.0.0/30) has no free address: remove a container from it or use a larger subnet"
    )
    assert core.get_container(second.id).ip == ""


def test_slash_24_never_hands_out_network_or_broadcast(core):
    core.create_network("net", subnet="192.168.7.0/24")
    addresses = [core.allocate_address("net", core.create_container(spec()).id).allocation.address for _ in range(253)]
    assert addresses == [f"192.168.7.{n}" for n in range(2, 255)]
    with pytest.raises(FailedPrecondition, match="has no free address"):
        core.allocate_address("net", core.create_container(spec()).id)
    listed = core.list_addresses("net")
    assert [a.address for a in listed] == [f"192.168.7.{n}" for n in range(1, 255)]
    assert listed[0].owner == "gateway"


def test_slash_16_allocates_hundreds_and_reuses_lowest(core):
    # Its speed is measured in bench/ipam.py.
    core.create_network("big", subnet="10.8.0.0/16")
    containers = [core.create_container(spec()) for _ in range(300)]
    addresses = [core.allocate_address("big", c.id).allocation.address for c in containers]
    assert addresses[0] == "10.8.0.2" and addresses[-1] == "10.8.1.45"
    assert len(set(addresses)) == 300
    core.release_address("big", containers[200].id)
    core.release_address("big", containers[100].id)
    newcomer = core.create_container(spec())
    assert core.allocate_address("big", newcomer.id).allocation.address == addresses[100]


def test_allocation_errors(core):
    core.create_network("net", subnet="10.0.0.0/24")
    container = core.create_container(spec())
    with pytest.raises(NotFound, match="no such container: 1234567890"):
        core.allocate_address("net", "1234567890")
    core.allocate_address("net", container.id)
    with pytest.raises(FailedPrecondition, match=f"container {container.id} already holds 10.0.0.2 in network net"):
        core.allocate_address("net", container.id)
    with pytest.raises(InvalidArgument, match="gateway address cannot be released"):
        core.release_address("net", "gateway")


def test_release_address(core):
    core.create_network("net", subnet="10.0.0.0/24")
    container = core.create_container(spec())
    core.allocate_address("net", container.id)
    released = core.release_address("net", container.id)
    assert (released.network, released.address, released.owner) == ("net", "10.0.0.2", container.id)
    assert core.get_container(container.id).ip == ""
    with pytest.raises(NotFound, match=f"container {container.id} holds no address in network net"):
        core.release_address("net", container.id)


def test_delete_container_releases_its_address(core):
    core.create_network("net", subnet="10.0.0.0/24")
    container = core.create_container(spec())
    core.allocate_address("net", container.id)
    deleted = core.delete_container(container.id)
    assert deleted.ip == "10.0.0.2"
    assert [a.owner for a in core.list_addresses("net")] == ["gateway"]
    core.delete_network("net")


# Concurrency, durability and migrations.


def test_threads_allocating_concurrently_get_distinct_addresses(core):
    core.create_network("net", subnet="10.50.0.0/24")
    container_ids = [core.create_container(spec()).id for _ in range(200)]
    batches = [container_ids[i::8] for i in range(8)]
    results: list[str] = []
    results_lock = threading.Lock()
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def allocate(batch):
        start.wait()
        try:
            for container_id in batch:
                address = core.allocate_address("net", container_id).allocation.address
                with results_lock:
                    results.append(address)
        except (sqlite3.Error, FailedPrecondition) as error:
            failures.append(error)

    threads = [threading.Thread(target=allocate, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(results) == 200 and len(set(results)) == 200
    assert sorted(results, key=lambda a: int(a.rsplit(".", 1)[1])) == [f"10.50.0.{n}" for n in range(2, 202)]


def _allocate_in_child(db_path, container_ids, start, results):
    with Store(db_path) as store:
        child_core = StateCore(store)
        start.wait()
        try:
            results.put([(cid, child_core.allocate_address("net", cid).allocation.address) for cid in container_ids])
        except (sqlite3.Error, FailedPrecondition) as error:
            # Report instead of dying, so the parent fails at once rather than waiting on the queue.
            results.put(repr(error))


def test_two_processes_allocating_concurrently_never_collide(core, db_path):
    core.create_network("net", subnet="10.60.0.0/24")
    container_ids = [core.create_container(spec()).id for _ in range(120)]
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    results = context.Queue()
    children = [
        context.Process(target=_allocate_in_child, args=(db_path, container_ids[i::2], start, results))
        for i in range(2)
    ]
    for child in children:
        child.start()
    start.wait(timeout=60)
    # This process allocates too, through its own connection.
    parent_pairs = [(cid, core.allocate_address("net", cid).allocation.address) for cid in
                    [core.create_container(spec()).id for _ in range(20)]]
    child_results = [results.get(timeout=60), results.get(timeout=60)]
    assert all(isinstance(result, list) for result in child_results), child_results
    pairs = child_results[0] + child_results[1] + parent_pairs
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    addresses = [address for _, address in pairs]
    assert len(addresses) == 140 and len(set(addresses)) == 140
    for container_id, address in pairs:
        assert core.get_container(container_id).ip == address


def _create_then_wait_to_be_killed(db_path, created):
    with Store(db_path) as store:
        created.put(StateCore(store).create_container(spec(name="survivor")).id)
        time.sleep(60)


def test_committed_write_survives_kill_9(db_path):
    context = multiprocessing.get_context("spawn")
    created = context.Queue()
    child = context.Process(target=_create_then_wait_to_be_killed, args=(db_path, created))
    child.start()
    container_id = created.get(timeout=60)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=60)
    with Store(db_path) as store:
        assert StateCore(store).get_container("survivor").id == container_id


def test_data_survives_reopening(db_path):
    with Store(db_path) as store:
        first_core = StateCore(store, clock=FakeClock())
        first_core.create_network("net", subnet="10.0.0.0/24")
        container = first_core.create_container(spec(name="keep", labels={"k": "v"}))
        first_core.allocate_address("net", container.id)
        expected = first_core.get_container("keep")
    with Store(db_path) as store:
        reopened = StateCore(store)
        assert reopened.get_container("keep") == expected
        assert reopened.get_network("net")[0].subnet == "10.0.0.0/24"
        assert [a.address for a in reopened.list_addresses("net")] == ["10.0.0.1", "10.0.0.2"]


def test_store_settings_and_idempotent_migrations(db_path):
    with Store(db_path) as store:
        StateCore(store).create_container(spec(name="one"))
        assert store.schema_version == SCHEMA_VERSION >= 1
    with Store(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [c.name for c in StateCore(store).list_containers()] == ["one"]
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_newer_schema_is_refused(db_path):
    Store(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(FailedPrecondition, match="upgrade mydocker"):
        Store(db_path)


def test_info(core, store, db_path):
    core.create_container(spec())
    core.create_network("net", subnet="10.0.0.0/24")
    info = core.info()
    assert (info.database_path, info.schema_version, info.containers, info.networks, info.pid) == (
        str(db_path), SCHEMA_VERSION, 1, 1, os.getpid())
    assert info.version


def test_ids_are_spread_over_ten_digits(core):
    ids = [core.create_container(spec()).id for _ in range(30)]
    assert all(len(i) == 10 and i[0] != "0" for i in ids)
    assert len(set(ids)) == 30
    assert len({i[0] for i in ids}) > 1


# Issue #5: bridges, published ports, addresses freed with the process.


def test_network_bridge_is_derived_from_the_name(core):
    assert core.create_network("net1", subnet="10.0.0.0/24").bridge("") == "mdb-net1"
    long_name = "a-rather-long-network-name"
    bridge = core.create_network(long_name, subnet="10.0.1.0/24").bridge("")
    assert bridge.startswith("mdh-") and len(bridge) == 15
    assert core.get_network(long_name)[0].bridge("") == bridge


def test_another_instance_gets_other_bridges_for_the_same_names(store):
    default, other = StateCore(store, clock=FakeClock()), StateCore(store, clock=FakeClock(), instance="0123abcd")
    network = default.create_network("net1", subnet="10.0.0.0/24")
    assert network.bridge(default.instance) == "mdb-net1"
    assert network.bridge(other.instance).startswith("mdh-") and network.bridge(other.instance) != "mdb-net1"


def test_bridge_name_collision_is_refused(core, monkeypatch):
    core.create_network("net1", subnet="10.0.0.0/24")
    monkeypatch.setattr("services.state.core_networks.bridge_name", lambda name, instance: "mdb-same")
    monkeypatch.setattr("services.state.model.bridge_name", lambda name, instance: "mdb-same")
    with pytest.raises(AlreadyExists, match='maps to bridge mdb-same, already used by network net1'):
        core.create_network("net2", subnet="10.0.1.0/24")


def test_host_port_held_by_a_live_container_is_refused(core):
    web = core.create_container(spec(ports=(PortMapping(8080, 80),)))
    with pytest.raises(AlreadyExists) as raised:
        core.create_container(spec(ports=(PortMapping(8080, 81),)))
    assert str(raised.value) == (
        f"host port 8080/tcp is already published by container {web.id} ({web.name}): "
        "choose another host port or remove that container"
    )
    # Another protocol, or another host address than a specific one, is free.
    core.create_container(spec(ports=(PortMapping(8080, 80, "udp"),)))
    core.update_container_status(web.id, S.RUNNING, pid=10, pid_start_time=20)
    with pytest.raises(AlreadyExists):
        core.create_container(spec(ports=(PortMapping(8080, 80, host_ip="127.0.0.1"),)))
    # A stopped container holds no port.
    core.update_container_status(web.id, S.STOPPED, exit_code=0)
    core.create_container(spec(ports=(PortMapping(8080, 80),)))


def test_address_is_released_when_the_process_ends_or_removal_begins(core):
    core.create_network("net1", subnet="10.0.0.0/24")
    for final in (S.STOPPED, S.EXITED, S.REMOVING):
        container = core.create_container(spec(network="net1"))
        core.allocate_address("net1", container.id)
        if final is not S.REMOVING:
            core.update_container_status(container.id, S.RUNNING, pid=10, pid_start_time=20)
        updated = core.update_container_status(container.id, final)
        assert updated.ip == "" and core.get_container(container.id).ip == ""
        assert [a.owner for a in core.list_addresses("net1")] == ["gateway"]
