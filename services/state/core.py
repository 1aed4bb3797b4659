"""Logic of the state service: container records and their state machine, networks and IP allocation."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping

from services.common.config import VERSION
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.state.model import (
    HOSTNAME_MAX_LENGTH,
    Container,
    ContainerSpec,
    ContainerStatus,
    Owner,
    PortMapping,
    ServiceInfo,
    check_transition,
    ports_clash,
    validate_owner,
    validate_spec,
)
from services.state.core_networks import NetworksMixin
from services.state.require import require as _require
from services.state.require import require_container as _require_container
from services.state.store import Store, Transaction

_CONTAINER_ID_LOWEST = 10**9  # ten digits, the first one non-zero
_CONTAINER_ID_COUNT = 9 * 10**9
# Statuses of records that a multi-step operation (the CLI's run or rm) is in the middle of.
IN_PROGRESS_STATUSES = (ContainerStatus.CREATED, ContainerStatus.REMOVING)

log = logging.getLogger(__name__)


def _parse_status(status: ContainerStatus | str) -> ContainerStatus:
    try:
        return ContainerStatus(status)
    except ValueError:
        allowed = ", ".join(member.value for member in ContainerStatus)
        raise InvalidArgument(f'unknown container status "{status}": use one of {allowed}') from None


class StateCore(NetworksMixin):
    """The StateService RPCs over plain dataclasses; every write is one store transaction."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        version: str = VERSION,
        damaged_database: str = "",
        instance: str = "",
    ):
        # Which mydocker instance this is (Config.instance): bridge names depend on it.
        self.instance = instance
        self._store = store
        self._clock = clock
        self._version = version
        self._damaged_database = damaged_database

    def info(self) -> ServiceInfo:
        schema_version = self._store.schema_version
        with self._store.read() as transaction:
            containers = transaction.count_containers()
            networks = transaction.count_networks()
        return ServiceInfo(
            version=self._version,
            database_path=str(self._store.path),
            schema_version=schema_version,
            containers=containers,
            networks=networks,
            pid=os.getpid(),
            damaged_database=self._damaged_database,
        )

    def start(self) -> dict[ContainerStatus, list[Container]]:
        """Report, once before serving, the records left in CREATED or REMOVING.

        Every write is one transaction, so there is nothing to repair in the database itself; those
        records are the work of a CLI that may have died, which `mydocker system check --repair`
        finishes or undoes once their owner is gone. Returns them by status.
        """
        with self._store.read() as transaction:
            pending = {status: transaction.list_containers([status]) for status in IN_PROGRESS_STATUSES}
            count = transaction.count_containers()
        total = sum(len(containers) for containers in pending.values())
        log.info(
            "%d container record(s); %d in progress: %s",
            count,
            total,
            ", ".join(f"{len(containers)} {status.value}" for status, containers in pending.items()),
        )
        for status, containers in pending.items():
            for container in containers:
                owner = (
                    f"owner pid {container.owner.pid} (start time {container.owner.pid_start_time})"
                    if container.owner else "no owner"
                )
                log.info("container %s (%s) is %s, %s", container.id, container.name, status.value, owner)
        return pending

    # Containers.

    def create_container(self, spec: ContainerSpec, owner: Owner | None = None) -> Container:
        """Store a new CREATED record, owned by `owner` (the creating process) when given."""
        validate_spec(spec)
        validate_owner(owner)
        with self._store.write() as transaction:
            if spec.name:
                self._ensure_name_is_free(transaction, spec.name)
            if spec.ports:
                self._ensure_ports_are_free(transaction, spec.ports)
            container_id = self._new_container_id(transaction)
            name = spec.name or container_id
            container = Container(
                id=container_id,
                name=name,
                image=spec.image,
                command=tuple(spec.command),
                env=tuple(spec.env),
                volumes=tuple(spec.volumes),
                resources=spec.resources,
                network=spec.network,
                ports=tuple(spec.ports),
                labels=dict(spec.labels),
                # A name may be longer than a hostname can be; both share one alphabet.
                hostname=spec.hostname or name[:HOSTNAME_MAX_LENGTH],
                working_dir=spec.working_dir or "/",
                tty=spec.tty,
                stdin_open=spec.stdin_open,
                auto_remove=spec.auto_remove,
                security=spec.security,
                image_id=spec.image_id,
                stop_signal=spec.stop_signal,
                status=ContainerStatus.CREATED,
                created_at=self._clock(),
                owner=owner,
            )
            transaction.insert_container(container)
        return container

    @staticmethod
    def _ensure_name_is_free(transaction: Transaction, name: str) -> None:
        holder = transaction.get_container_by_name(name)
        if holder is not None:
            raise AlreadyExists(
                f'container name "{name}" is already in use by container {holder.id}: '
                "choose another name or remove that container"
            )
        # Lookups try ids before names, so a name equal to another container's id would be unreachable.
        if transaction.get_container(name) is not None:
            raise AlreadyExists(f'container name "{name}" is the id of another container: choose another name')

    @staticmethod
    def _ensure_ports_are_free(transaction: Transaction, ports: Iterable[PortMapping]) -> None:
        """A host port/protocol published by a container that is being created or runs is taken."""
        holders = transaction.list_containers((ContainerStatus.CREATED, ContainerStatus.RUNNING))
        for port in ports:
            for holder in holders:
                taken = next((held for held in holder.ports if ports_clash(held, port)), None)
                if taken is not None:
                    raise AlreadyExists(
                        f"host port {port.host_port}/{port.protocol} is already published by container "
                        f"{holder.id} ({holder.name}): choose another host port or remove that container"
                    )

    @staticmethod
    def _new_container_id(transaction: Transaction) -> str:
        while True:
            candidate = str(_CONTAINER_ID_LOWEST + secrets.randbelow(_CONTAINER_ID_COUNT))
            # The id becomes the name when none is given, so it must be free as both.
            if transaction.get_container(candidate) is None and transaction.get_container_by_name(candidate) is None:
                return candidate

    def get_container(self, reference: str) -> Container:
        """Find a container by exact id, then exact name, then unique id prefix."""
        if not reference:
            raise InvalidArgument("container reference is empty: give a container id, name or id prefix")
        with self._store.read() as transaction:
            container = transaction.get_container(reference) or transaction.get_container_by_name(reference)
            if container is not None:
                return container
            matching_ids = transaction.container_ids_with_prefix(reference)
            if len(matching_ids) == 1:
                return _require_container(transaction, matching_ids[0])
        if matching_ids:
            raise FailedPrecondition(
                f'container reference "{reference}" is ambiguous, it matches {", ".join(matching_ids)}: '
                "use more characters of the id"
            )
        raise NotFound(f"no such container: {reference}")

    def list_containers(
        self,
        statuses: Iterable[ContainerStatus | str] = (),
        image: str = "",
        network: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[Container]:
        """Records matching every given filter, oldest first; empty filters match everything."""
        wanted_statuses = [_parse_status(status) for status in statuses]
        with self._store.read() as transaction:
            return transaction.list_containers(wanted_statuses, image, network, labels)

    def update_container_status(
        self,
        container_id: str,
        status: ContainerStatus | str,
        pid: int = 0,
        pid_start_time: int = 0,
        shim_pid: int = 0,
        exit_code: int = 0,
        oom_killed: bool = False,
        error: str = "",
        owner: Owner | None = None,
        then_removing: bool = False,
    ) -> Container:
        """Move a record to `status`; `owner` is kept only for REMOVING, and every other move clears it.

        `then_removing` (with STOPPED or EXITED) makes a second legal move, on to REMOVING with `owner`,
        in the same transaction: the exit and the start of its removal are one write (`run --rm`, `rm -f`).
        """
        _require(container_id, "container id")
        validate_owner(owner)
        target = _parse_status(status)
        if then_removing and target not in (ContainerStatus.STOPPED, ContainerStatus.EXITED):
            raise InvalidArgument(
                f"container {container_id}: then_removing follows only a move to stopped or exited, not to {target.value}"
            )
        if target is ContainerStatus.RUNNING and (pid <= 0 or pid_start_time <= 0):
            raise InvalidArgument(
                f"container {container_id} cannot be marked running with pid {pid} and pid start time "
                f"{pid_start_time}: give the positive pid and start time of its process"
            )
        with self._store.write(may_use_reserve=True) as transaction:
            current = _require_container(transaction, container_id)
            check_transition(current.status, target, f"container {container_id}")
            now = self._clock()
            if target is ContainerStatus.RUNNING:
                updated = dataclasses.replace(
                    current, status=target, started_at=now, pid=pid, pid_start_time=pid_start_time,
                    shim_pid=shim_pid, exit_code=0, oom_killed=False, error="", owner=None,
                )
            elif target in (ContainerStatus.STOPPED, ContainerStatus.EXITED):
                # A container's address lives as long as its process: the next start allocates again.
                transaction.delete_allocations_of_owner(container_id)
                updated = dataclasses.replace(
                    current, status=target, finished_at=now, exit_code=exit_code, oom_killed=oom_killed,
                    error=error, pid=0, pid_start_time=0, shim_pid=0, owner=None, ip="",
                )
            else:
                if target is ContainerStatus.REMOVING:
                    transaction.delete_allocations_of_owner(container_id)
                    current = dataclasses.replace(current, ip="")
                updated = dataclasses.replace(current, status=target, owner=owner)
            if then_removing:
                check_transition(updated.status, ContainerStatus.REMOVING, f"container {container_id}")
                updated = dataclasses.replace(updated, status=ContainerStatus.REMOVING, owner=owner)
            transaction.update_container(updated)
        return updated

    def delete_container(self, container_id: str) -> Container:
        """Delete a record and release its addresses; returns the record as it was."""
        _require(container_id, "container id")
        with self._store.write(may_use_reserve=True) as transaction:
            container = _require_container(transaction, container_id)
            if container.status is ContainerStatus.RUNNING:
                raise FailedPrecondition(f"container {container_id} is running: stop it before removing it")
            transaction.delete_allocations_of_owner(container_id)
            transaction.delete_container(container_id)
        return container

    def restore_container(self, container: Container) -> Container:
        """Store a whole record as given (`system check --rebuild-state`); see services/state/restore.py."""
        from services.state.restore import restore_container

        return restore_container(self._store, container)
