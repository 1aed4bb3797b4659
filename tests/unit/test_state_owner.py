"""The owner of CREATED and REMOVING records: validation, storage, clearing, and the migration that added it."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, InvalidTransition
from services.state.core import StateCore
from services.state.model import ContainerSpec, ContainerStatus, Owner, validate_owner
from services.common.security import SecurityOptions
from services.state.rows import container_to_row as _container_to_row
from services.state.schema import MIGRATIONS, SCHEMA_VERSION
from services.state.store import Store

S = ContainerStatus
ME = Owner(pid=4242, pid_start_time=987654)
OTHER = Owner(pid=77, pid_start_time=1)


@pytest.fixture
def db_path():
    base = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
    try:
        yield base / "state.db"
    finally:
        shutil.rmtree(base)


@pytest.fixture
def core(db_path):
    with Store(db_path) as store:
        yield StateCore(store)


def spec(name: str = "") -> ContainerSpec:
    return ContainerSpec(image="busybox", command=("top",), name=name)


@pytest.mark.parametrize("owner", [None, Owner(1, 1), ME])
def test_valid_owners(owner):
    validate_owner(owner)


@pytest.mark.parametrize("owner", [Owner(0, 5), Owner(5, 0), Owner(-1, 5), Owner(0, 0)])
def test_invalid_owners_are_one_clear_line(owner):
    with pytest.raises(InvalidArgument) as caught:
        validate_owner(owner)
    assert "\n" not in str(caught.value) and "positive" in str(caught.value)


def test_create_stores_the_owner_and_it_is_optional(core):
    owned = core.create_container(spec("owned"), ME)
    assert owned.status is S.CREATED and owned.owner == ME
    assert core.get_container("owned").owner == ME
    assert core.create_container(spec("free")).owner is None
    assert core.get_container("free").owner is None


def test_invalid_owner_on_create_stores_nothing(core):
    with pytest.raises(InvalidArgument):
        core.create_container(spec("bad"), Owner(0, 1))
    assert core.list_containers() == []


def test_owner_follows_the_state_machine(core):
    container = core.create_container(spec(), ME)
    running = core.update_container_status(container.id, S.RUNNING, pid=10, pid_start_time=20, owner=OTHER)
    assert running.owner is None, "only REMOVING takes an owner; RUNNING clears the creator"
    exited = core.update_container_status(container.id, S.EXITED, exit_code=3, owner=OTHER)
    assert exited.owner is None
    removing = core.update_container_status(container.id, S.REMOVING, owner=OTHER)
    assert removing.owner == OTHER
    assert core.get_container(container.id).owner == OTHER
    assert [c.id for c in core.list_containers([S.REMOVING]) if c.owner == OTHER] == [container.id]


def test_created_to_exited_or_removing_replaces_the_creator(core):
    failed = core.create_container(spec("failed"), ME)
    assert core.update_container_status(failed.id, S.EXITED, error="no such image").owner is None
    abandoned = core.create_container(spec("abandoned"), ME)
    assert core.update_container_status(abandoned.id, S.REMOVING, owner=OTHER).owner == OTHER
    unowned = core.create_container(spec("unowned"), ME)
    assert core.update_container_status(unowned.id, S.REMOVING).owner is None


def test_invalid_owner_on_update_changes_nothing(core):
    container = core.create_container(spec(), ME)
    with pytest.raises(InvalidArgument):
        core.update_container_status(container.id, S.REMOVING, owner=Owner(1, 0))
    assert core.get_container(container.id) == container


def test_removing_is_final_so_a_removal_cannot_be_taken_over(core):
    container = core.create_container(spec(), ME)
    core.update_container_status(container.id, S.REMOVING, owner=ME)
    with pytest.raises(InvalidTransition):
        core.update_container_status(container.id, S.REMOVING, owner=OTHER)
    assert core.get_container(container.id).owner == ME


def test_a_version_1_database_is_migrated_and_its_records_have_no_owner(db_path):
    with Store(db_path) as store:
        template = StateCore(store).create_container(spec("old"), ME)
    db_path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    raw = sqlite3.connect(db_path, isolation_level=None)
    try:
        for statement in MIGRATIONS[0]:
            raw.execute(statement)
        raw.execute("PRAGMA user_version = 1")
        # The columns of version 1: later migrations added the owner and the security options.
        row = {
                k: v for k, v in _container_to_row(template).items()
                if not k.startswith("owner_") and k not in ("security", "image_id", "stop_signal")
            }
        raw.execute(f"INSERT INTO containers ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})", row)
    finally:
        raw.close()
    with Store(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        core = StateCore(store)
        migrated = core.get_container("old")
        assert migrated.owner is None and migrated.status is S.CREATED
        assert migrated.security == SecurityOptions()
        assert core.update_container_status(migrated.id, S.REMOVING, owner=OTHER).owner == OTHER


def test_start_reports_records_in_progress(core, caplog):
    created = core.create_container(spec("c"), ME)
    removing = core.create_container(spec("r"))
    core.update_container_status(removing.id, S.REMOVING, owner=OTHER)
    core.create_container(spec("x"))
    done = core.create_container(spec("done"))
    core.update_container_status(done.id, S.EXITED)
    with caplog.at_level(logging.INFO, logger="services.state.core"):
        pending = core.start()
    assert [c.id for c in pending[S.CREATED]] == [created.id, core.get_container("x").id]
    assert [c.id for c in pending[S.REMOVING]] == [removing.id]
    assert "4 container record(s); 3 in progress: 2 created, 1 removing" in caplog.text
    assert f"container {created.id} (c) is created, owner pid 4242" in caplog.text


def test_an_exit_and_the_start_of_its_removal_are_one_move(core) -> None:
    """then_removing: EXITED (or STOPPED) and on to REMOVING in one transaction, each move a legal one."""
    core.create_network("net1", subnet="10.0.0.0/24")
    for first in (S.EXITED, S.STOPPED):
        container = core.create_container(ContainerSpec(image="busybox", command=("top",), network="net1"))
        core.allocate_address("net1", container.id)
        core.update_container_status(container.id, S.RUNNING, pid=10, pid_start_time=20)
        removing = core.update_container_status(
            container.id, first, exit_code=137, oom_killed=True, owner=ME, then_removing=True
        )
        assert (removing.status, removing.owner, removing.exit_code, removing.oom_killed) == (S.REMOVING, ME, 137, True)
        assert removing.finished_at is not None and removing.pid == 0 and removing.ip == ""
        assert core.get_container(container.id) == removing
        assert [a.owner for a in core.list_addresses("net1")] == ["gateway"]
        core.delete_container(container.id)


def test_then_removing_goes_only_with_an_exit_and_changes_nothing_otherwise(core) -> None:
    container = core.create_container(spec())
    for status in (S.RUNNING, S.REMOVING, S.CREATED):
        with pytest.raises(InvalidArgument, match="then_removing follows only a move to stopped or exited"):
            core.update_container_status(container.id, status, pid=1, pid_start_time=1, owner=ME, then_removing=True)
    assert core.get_container(container.id).status is S.CREATED
    removing = core.update_container_status(container.id, S.REMOVING, owner=OTHER)
    # Already being removed: the exit is an illegal move, and the record stays as it was.
    with pytest.raises(InvalidTransition):
        core.update_container_status(container.id, S.EXITED, owner=ME, then_removing=True)
    assert core.get_container(container.id) == removing
