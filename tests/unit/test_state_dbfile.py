"""A damaged, deleted or replaced state database: found at open and before every transaction; set aside on request;
and RestoreContainer, which puts rebuilt records back with their addresses."""

from __future__ import annotations

import dataclasses
import os
import sqlite3

import pytest

from services.common.config import Config
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.state import dbfile
from services.state.__main__ import open_store
from services.state.core import StateCore
from services.state.model import ContainerSpec, ContainerStatus, PortMapping, Resources, Volume
from services.state.store import Store

REPAIR = "run 'mydocker system check --repair --rebuild-state'"


def filled_db(path, containers: int = 40) -> None:
    """A real database with `containers` records, checkpointed so every page is in the main file."""
    with Store(path) as store:
        core = StateCore(store)
        for index in range(containers):
            core.create_container(ContainerSpec(image="busybox", command=["sh", "-c", "x" * 300], name=f"c{index}"))
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def corrupt_middle(path) -> None:
    """Overwrite the middle third of the file, page headers included, as torn writes or bad disk blocks would."""
    data = bytearray(path.read_bytes())
    start, end = len(data) // 3, 2 * len(data) // 3
    data[start:end] = (b"\xde\xad\xbe\xef" * (end - start))[: end - start]
    path.write_bytes(bytes(data))


def test_a_file_that_is_not_a_database_is_damaged(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite\n" * 300)
    with pytest.raises(dbfile.DamagedDatabase) as caught:
        Store(path)
    message = str(caught.value)
    assert message == f"state database {path} is damaged (file is not a database): {REPAIR}"
    assert "\n" not in message


def test_a_database_with_an_overwritten_page_fails_the_integrity_check(tmp_path):
    path = tmp_path / "state.db"
    filled_db(path)
    corrupt_middle(path)
    with pytest.raises(dbfile.DamagedDatabase) as caught:
        Store(path)
    assert str(caught.value).startswith(f"state database {path} is damaged (")
    assert str(caught.value).endswith(REPAIR)


def test_a_healthy_database_opens_with_its_records(tmp_path):
    path = tmp_path / "state.db"
    filled_db(path, containers=3)
    with Store(path) as store, store.read() as transaction:
        assert transaction.count_containers() == 3


def test_a_deleted_database_is_refused_before_the_next_transaction(tmp_path):
    path = tmp_path / "state.db"
    with Store(path) as store:
        core = StateCore(store)
        core.create_container(ContainerSpec(image="busybox", command=["true"], name="before"))
        path.unlink()
        with pytest.raises(dbfile.DatabaseGone) as caught:
            core.create_container(ContainerSpec(image="busybox", command=["true"], name="after"))
        assert str(caught.value) == f"state database {path} was deleted while the state service ran: {REPAIR}"
        with pytest.raises(dbfile.DatabaseGone):
            core.list_containers()
        assert not path.exists(), "nothing may be written to a new file at the path either"


def test_a_replaced_database_is_refused(tmp_path):
    path = tmp_path / "state.db"
    with Store(path) as store:
        core = StateCore(store)
        other = tmp_path / "other.db"
        filled_db(other, containers=1)
        os.replace(other, path)
        with pytest.raises(dbfile.DatabaseGone, match="was replaced by another file while the state service ran"):
            core.info()


def test_set_aside_moves_the_database_and_its_wal_and_shm(tmp_path):
    path = tmp_path / "state.db"
    for suffix, text in (("", "db"), ("-wal", "wal"), ("-shm", "shm")):
        (tmp_path / f"state.db{suffix}").write_text(text)
    moved = dbfile.set_aside(path, now=1_800_000_000)
    assert moved == tmp_path / "state.db.damaged-20270115T080000Z"
    assert [moved.read_text(), (tmp_path / f"{moved.name}-wal").read_text(), (tmp_path / f"{moved.name}-shm").read_text()] == [
        "db", "wal", "shm",
    ]
    assert not any((tmp_path / f"state.db{suffix}").exists() for suffix in ("", "-wal", "-shm"))
    path.write_text("again")
    assert dbfile.set_aside(path, now=1_800_000_000) == tmp_path / "state.db.damaged-20270115T080000Z-2"


def test_the_service_refuses_to_start_with_one_line_unless_told_to_set_aside(tmp_path):
    config = Config(root=tmp_path / "root", run=tmp_path / "run")
    path = config.state_db_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SystemExit) as caught:
        open_store(config)
    assert str(caught.value) == f"mydocker-state: state database {path} is damaged (file is not a database): {REPAIR}"
    assert path.read_bytes().startswith(b"\x00garbage"), "without the flag nothing is moved"
    store, moved = open_store(config, set_aside_damaged=True)
    with store:
        assert moved.startswith(f"{path}.damaged-")
        assert os.path.exists(moved) and store.schema_version >= 1
        with store.read() as transaction:
            assert transaction.count_containers() == 0


def test_set_aside_leaves_a_healthy_database_alone(tmp_path):
    config = Config(root=tmp_path / "root", run=tmp_path / "run")
    config.state_db_path().parent.mkdir(parents=True)
    filled_db(config.state_db_path(), 2)
    store, moved = open_store(config, set_aside_damaged=True)
    with store, store.read() as transaction:
        assert moved == "" and transaction.count_containers() == 2


# -- RestoreContainer ---------------------------------------------------------------------------


@pytest.fixture
def core(tmp_path):
    with Store(tmp_path / "state.db") as store:
        yield StateCore(store)


def record(core, **fields):
    """A record as a create, a network allocation and a start would leave it, minus the store."""
    spec = ContainerSpec(
        image="busybox", command=["top"], name="web", env=["A=1"], volumes=[Volume("/srv", "/data")],
        resources=Resources(memory_bytes=64 << 20, pids_limit=50), network="", ports=[PortMapping(8080, 80)],
    )
    created = core.create_container(dataclasses.replace(spec, **fields.pop("spec", {})))
    core.delete_container(created.id)
    return dataclasses.replace(
        created, status=ContainerStatus.RUNNING, pid=4242, pid_start_time=777, shim_pid=4241, started_at=5.0, **fields
    )


def test_restore_keeps_id_name_status_and_every_field(core):
    wanted = record(core)
    assert core.restore_container(wanted) == wanted
    assert core.get_container("web") == wanted


def test_restore_reserves_the_address_again(core):
    core.create_network("net1", subnet="10.77.0.0/24")
    wanted = record(core, spec={"network": "net1"}, ip="10.77.0.9")
    core.restore_container(wanted)
    owners = {a.address: a.owner for a in core.list_addresses("net1")}
    assert owners == {"10.77.0.1": "gateway", "10.77.0.9": wanted.id}
    # The next allocation skips it, and a second claim on it is refused.
    other = record(core, spec={"network": "net1", "name": "other", "ports": []}, ip="10.77.0.9")
    with pytest.raises(AlreadyExists, match="10.77.0.9 of network net1 is held already"):
        core.restore_container(other)
    assert core.list_containers() == [wanted]


def test_restore_refuses_what_a_record_never_is(core):
    wanted = record(core)
    with pytest.raises(InvalidArgument, match="invalid container id"):
        core.restore_container(dataclasses.replace(wanted, id="12"))
    with pytest.raises(InvalidArgument, match="without its pid"):
        core.restore_container(dataclasses.replace(wanted, pid=0))
    with pytest.raises(InvalidArgument, match="invalid pid_start_time"):
        core.restore_container(dataclasses.replace(wanted, pid_start_time=(1 << 64) - 1))
    with pytest.raises(NotFound, match="no such network: ghost"):
        core.restore_container(dataclasses.replace(wanted, network="ghost", ip="10.1.0.2"))
    core.restore_container(wanted)
    with pytest.raises(AlreadyExists, match="already has a record"):
        core.restore_container(wanted)
    with pytest.raises(AlreadyExists, match='name "web" is already in use'):
        core.restore_container(dataclasses.replace(wanted, id="1234567890"))
