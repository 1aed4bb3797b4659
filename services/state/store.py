"""SQLite persistence of container, network and IP allocation records, with versioned migrations."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.common.nospace import free_bytes, is_no_space, make_reserve, no_space_error, release_reserve
from services.state import dbfile, ipam
from services.state.model import AddressAllocation, Container, ContainerStatus, Network
from services.state.rows import (
    CONTAINER_MUTABLE_COLUMNS,
    container_to_row,
    row_to_allocation,
    row_to_container,
    row_to_network,
)
from services.state.schema import MIGRATIONS, SCHEMA_VERSION  # noqa: F401 (SCHEMA_VERSION: this module's API too)

# Space kept back beside the database (state.db.reserve) and given up, on a nearly full disk, for writes
# that undo or remove (a failed run's record deleted, rm): SQLite's WAL needs room for those too.
RESERVE_BYTES = 1 << 20


class Transaction:
    """Record queries and changes inside one open SQLite transaction; obtained from Store.read/write."""

    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection

    def _one(self, sql: str, parameters: Iterable[object] = ()) -> sqlite3.Row | None:
        return self._connection.execute(sql, tuple(parameters)).fetchone()

    def _all(self, sql: str, parameters: Iterable[object] = ()) -> list[sqlite3.Row]:
        return self._connection.execute(sql, tuple(parameters)).fetchall()

    def _count(self, table: str) -> int:
        return self._one(f"SELECT count(*) FROM {table}")[0]

    # Containers.

    def get_container(self, container_id: str) -> Container | None:
        row = self._one("SELECT * FROM containers WHERE id = ?", (container_id,))
        return row_to_container(row) if row else None

    def get_container_by_name(self, name: str) -> Container | None:
        row = self._one("SELECT * FROM containers WHERE name = ?", (name,))
        return row_to_container(row) if row else None

    def container_ids_with_prefix(self, prefix: str) -> list[str]:
        # substr rather than LIKE so that "%" and "_" in a reference match literally.
        rows = self._all(
            "SELECT id FROM containers WHERE substr(id, 1, ?) = ? ORDER BY id", (len(prefix), prefix)
        )
        return [row["id"] for row in rows]

    def list_containers(
        self,
        statuses: Iterable[ContainerStatus] = (),
        image: str = "",
        network: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> list[Container]:
        clauses: list[str] = []
        parameters: list[object] = []
        status_values = [ContainerStatus(status).value for status in statuses]
        if status_values:
            clauses.append(f"status IN ({', '.join('?' * len(status_values))})")
            parameters.extend(status_values)
        if image:
            clauses.append("image = ?")
            parameters.append(image)
        if network:
            clauses.append("network = ?")
            parameters.append(network)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._all(f"SELECT * FROM containers {where} ORDER BY created_at, id", parameters)
        containers = [row_to_container(row) for row in rows]
        wanted_labels = dict(labels or {})
        return [
            container
            for container in containers
            if all(container.labels.get(key) == value for key, value in wanted_labels.items())
        ]

    def insert_container(self, container: Container) -> None:
        row = container_to_row(container)
        self._connection.execute(
            f"INSERT INTO containers ({', '.join(row)}) VALUES ({', '.join(':' + column for column in row)})",
            row,
        )

    def update_container(self, container: Container) -> None:
        """Write the mutable columns of an existing record."""
        row = container_to_row(container)
        assignments = ", ".join(f"{column} = :{column}" for column in CONTAINER_MUTABLE_COLUMNS)
        self._connection.execute(f"UPDATE containers SET {assignments} WHERE id = :id", row)

    def delete_container(self, container_id: str) -> None:
        self._connection.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def count_containers(self) -> int:
        return self._count("containers")

    # Networks.

    def get_network(self, name: str) -> Network | None:
        row = self._one("SELECT * FROM networks WHERE name = ?", (name,))
        return row_to_network(row) if row else None

    def list_networks(self) -> list[Network]:
        return [row_to_network(row) for row in self._all("SELECT * FROM networks ORDER BY name")]

    def insert_network(self, network: Network) -> None:
        self._connection.execute(
            "INSERT INTO networks (name, driver, subnet, gateway, labels, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (network.name, network.driver, network.subnet, network.gateway,
             json.dumps(network.labels), network.created_at),
        )

    def delete_network(self, name: str) -> None:
        self._connection.execute("DELETE FROM networks WHERE name = ?", (name,))

    def count_networks(self) -> int:
        return self._count("networks")

    # IP allocations.

    def list_allocations(self, network: str) -> list[AddressAllocation]:
        rows = self._all("SELECT * FROM ip_allocations WHERE network = ? ORDER BY address", (network,))
        return [row_to_allocation(row) for row in rows]

    def used_addresses(self, network: str) -> set[int]:
        rows = self._all("SELECT address FROM ip_allocations WHERE network = ?", (network,))
        return {row["address"] for row in rows}

    def get_allocation(self, network: str, owner: str) -> AddressAllocation | None:
        row = self._one("SELECT * FROM ip_allocations WHERE network = ? AND owner = ?", (network, owner))
        return row_to_allocation(row) if row else None

    def insert_allocation(self, network: str, address: int, owner: str) -> AddressAllocation:
        self._connection.execute(
            "INSERT INTO ip_allocations (network, address, owner) VALUES (?, ?, ?)",
            (network, address, owner),
        )
        return AddressAllocation(network=network, address=ipam.int_to_address(address), owner=owner)

    def delete_allocation(self, network: str, owner: str) -> None:
        self._connection.execute("DELETE FROM ip_allocations WHERE network = ? AND owner = ?", (network, owner))

    def delete_allocations_of_owner(self, owner: str) -> None:
        self._connection.execute("DELETE FROM ip_allocations WHERE owner = ?", (owner,))

    def delete_allocations_of_network(self, network: str) -> None:
        self._connection.execute("DELETE FROM ip_allocations WHERE network = ?", (network,))


class Store:
    """One SQLite database file, safe to share between threads and with other processes.

    A single connection guarded by a lock serves every thread; SQLite's file
    locks (BEGIN IMMEDIATE plus busy_timeout) serialize writers across processes.

    Not one connection per thread: gRPC's 32 workers would then contend through
    SQLite's busy handler, which sleeps and retries unfairly and turns a burst of
    writers into "database is locked" once busy_timeout runs out. The lock queues
    them instead, and every transaction is short (no I/O but the database's own).
    """

    def __init__(self, path: Path, busy_timeout_ms: int = 30_000, check: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: the sqlite3 module must not open transactions
        # behind our back; read() and write() issue BEGIN themselves.
        self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._connection.row_factory = sqlite3.Row
        self._reserve = self.path.with_name(self.path.name + ".reserve")
        self._reserve_missing = True
        try:
            self._identity = dbfile.FileIdentity.of(self.path)
            self._configure(busy_timeout_ms)
            if check:
                problem = dbfile.integrity_check(self._connection)
                if problem:
                    raise dbfile.DamagedDatabase(self.path, problem)
            self._migrate()
        except sqlite3.DatabaseError as err:
            self._connection.close()
            if dbfile.is_damage(err):
                raise dbfile.DamagedDatabase(self.path, str(err)) from None
            raise
        except BaseException:
            self._connection.close()
            raise

    def _configure(self, busy_timeout_ms: int) -> None:
        # busy_timeout first, so that a second process switching to WAL at the same time waits.
        self._connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        journal_mode = self._connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if journal_mode != "wal":
            raise FailedPrecondition(
                f"database {self.path} cannot use WAL journaling (got {journal_mode}): put it on a local filesystem"
            )
        # FULL syncs the WAL on every commit, so a committed write survives even a power cut.
        self._connection.execute("PRAGMA synchronous = FULL")
        self._connection.execute("PRAGMA foreign_keys = ON")

    def _migrate(self) -> None:
        with self.write():
            applied = self._read_schema_version()
            if applied > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"database {self.path} has schema version {applied}, newer than the supported "
                    f"{SCHEMA_VERSION}: upgrade mydocker"
                )
            for version in range(applied, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    self._connection.execute(statement)
                self._connection.execute(f"PRAGMA user_version = {version + 1}")

    def _read_schema_version(self) -> int:
        return self._connection.execute("PRAGMA user_version").fetchone()[0]

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._read_schema_version()

    def _begin(self, statement: str) -> None:
        """BEGIN, once the path still names the file we opened: never serve (or write into) an unlinked database."""
        dbfile.check_identity(self.path, self._identity)
        try:
            self._connection.execute(statement)
        except sqlite3.DatabaseError as err:
            if dbfile.is_damage(err):
                raise dbfile.DamagedDatabase(self.path, str(err)) from None
            raise

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        """A consistent snapshot for queries; writes through it are a bug."""
        with self._lock:
            self._begin("BEGIN")
            try:
                yield Transaction(self._connection)
            except sqlite3.DatabaseError as err:
                if dbfile.is_damage(err):
                    raise dbfile.DamagedDatabase(self.path, str(err)) from None
                raise
            finally:
                self._connection.execute("ROLLBACK")

    @contextmanager
    def write(self, may_use_reserve: bool = False) -> Iterator[Transaction]:
        """A write transaction, committed when the block ends and rolled back if it raises.

        BEGIN IMMEDIATE takes the write lock up front, so a read-modify-write
        (a unique id, the lowest free address) cannot race another writer.
        A full disk is NoSpace, after the rollback; `may_use_reserve` (deletes and status changes, which
        undo or remove) gives up the reserve file first when the disk is nearly full.
        """
        with self._lock, self._full_disk(may_use_reserve):
            self._begin("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._connection)
                self._connection.execute("COMMIT")
            except BaseException as err:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                if isinstance(err, sqlite3.DatabaseError) and dbfile.is_damage(err):
                    raise dbfile.DamagedDatabase(self.path, str(err)) from None
                raise

    @contextmanager
    def _full_disk(self, may_use_reserve: bool) -> Iterator[None]:
        """NoSpace for SQLite's "disk is full"; the reserve given up for undo, made again once there is room."""
        if may_use_reserve and free_bytes(self.path.parent) < RESERVE_BYTES and release_reserve(self._reserve):
            self._reserve_missing = True
        try:
            yield
        except (OSError, sqlite3.OperationalError) as err:
            if is_no_space(err):
                raise no_space_error("writing the state database", self.path.parent, err) from err
            raise
        if self._reserve_missing:
            self._reserve_missing = not make_reserve(self._reserve, RESERVE_BYTES)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
