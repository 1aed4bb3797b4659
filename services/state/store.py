"""SQLite persistence of container, network and IP allocation records, with versioned migrations."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.common.security import security_from_dict, security_to_dict
from services.state import ipam
from services.state.model import (
    AddressAllocation,
    Container,
    ContainerStatus,
    Network,
    Owner,
    PortMapping,
    Resources,
    Volume,
)

# Each migration is a list of statements run in one transaction; user_version
# counts the migrations applied. Append new migrations; never edit old ones.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE containers (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            image TEXT NOT NULL,
            command TEXT NOT NULL,
            env TEXT NOT NULL,
            volumes TEXT NOT NULL,
            resources TEXT NOT NULL,
            network TEXT NOT NULL,
            ports TEXT NOT NULL,
            ip TEXT NOT NULL,
            labels TEXT NOT NULL,
            hostname TEXT NOT NULL,
            working_dir TEXT NOT NULL,
            tty INTEGER NOT NULL,
            stdin_open INTEGER NOT NULL,
            auto_remove INTEGER NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('created', 'running', 'stopped', 'exited', 'removing')),
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            pid INTEGER NOT NULL,
            pid_start_time INTEGER NOT NULL,
            shim_pid INTEGER NOT NULL,
            exit_code INTEGER NOT NULL,
            oom_killed INTEGER NOT NULL,
            error TEXT NOT NULL
        ) STRICT
        """,
        "CREATE INDEX containers_by_age ON containers (created_at, id)",
        """
        CREATE TABLE networks (
            name TEXT PRIMARY KEY,
            driver TEXT NOT NULL,
            subnet TEXT NOT NULL UNIQUE,
            gateway TEXT NOT NULL,
            labels TEXT NOT NULL,
            created_at REAL NOT NULL
        ) STRICT
        """,
        """
        CREATE TABLE ip_allocations (
            network TEXT NOT NULL REFERENCES networks (name),
            address INTEGER NOT NULL,
            owner TEXT NOT NULL,
            PRIMARY KEY (network, address),
            UNIQUE (network, owner)
        ) STRICT
        """,
        "CREATE INDEX ip_allocations_by_owner ON ip_allocations (owner)",
    ),
    # 2: the owner of a CREATED or REMOVING record; 0 and 0 mean none, which is what older rows get.
    (
        "ALTER TABLE containers ADD COLUMN owner_pid INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE containers ADD COLUMN owner_pid_start_time INTEGER NOT NULL DEFAULT 0",
    ),
    # 3: security options (issue #10), as JSON of the fields that differ from the defaults; older rows: defaults.
    ("ALTER TABLE containers ADD COLUMN security TEXT NOT NULL DEFAULT '{}'",),
    # 4: the image id and the image's stop signal (issue #11); older rows: "" for both.
    (
        "ALTER TABLE containers ADD COLUMN image_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE containers ADD COLUMN stop_signal TEXT NOT NULL DEFAULT ''",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)

_CONTAINER_COLUMNS = (
    "id", "name", "image", "command", "env", "volumes", "resources", "network", "ports", "ip",
    "labels", "hostname", "working_dir", "tty", "stdin_open", "auto_remove", "status",
    "created_at", "started_at", "finished_at", "pid", "pid_start_time", "shim_pid",
    "exit_code", "oom_killed", "error", "owner_pid", "owner_pid_start_time", "security",
    "image_id", "stop_signal",
)
# The only columns that change after creation; everything else is immutable by contract.
_CONTAINER_MUTABLE_COLUMNS = (
    "ip", "status", "started_at", "finished_at", "pid", "pid_start_time", "shim_pid",
    "exit_code", "oom_killed", "error", "owner_pid", "owner_pid_start_time",
)


def _container_to_row(container: Container) -> dict[str, object]:
    return {
        "id": container.id,
        "name": container.name,
        "image": container.image,
        "command": json.dumps(list(container.command)),
        "env": json.dumps(list(container.env)),
        "volumes": json.dumps([dataclasses.asdict(volume) for volume in container.volumes]),
        "resources": json.dumps(dataclasses.asdict(container.resources)),
        "network": container.network,
        "ports": json.dumps([dataclasses.asdict(port) for port in container.ports]),
        "ip": container.ip,
        "labels": json.dumps(container.labels),
        "hostname": container.hostname,
        "working_dir": container.working_dir,
        "tty": int(container.tty),
        "stdin_open": int(container.stdin_open),
        "auto_remove": int(container.auto_remove),
        "status": container.status.value,
        "created_at": container.created_at,
        "started_at": container.started_at,
        "finished_at": container.finished_at,
        "pid": container.pid,
        "pid_start_time": container.pid_start_time,
        "shim_pid": container.shim_pid,
        "exit_code": container.exit_code,
        "oom_killed": int(container.oom_killed),
        "error": container.error,
        "owner_pid": container.owner.pid if container.owner else 0,
        "owner_pid_start_time": container.owner.pid_start_time if container.owner else 0,
        "security": json.dumps(security_to_dict(container.security)),
        "image_id": container.image_id,
        "stop_signal": container.stop_signal,
    }


def _row_to_container(row: sqlite3.Row) -> Container:
    return Container(
        id=row["id"],
        name=row["name"],
        image=row["image"],
        command=tuple(json.loads(row["command"])),
        env=tuple(json.loads(row["env"])),
        volumes=tuple(Volume(**volume) for volume in json.loads(row["volumes"])),
        resources=Resources(**json.loads(row["resources"])),
        network=row["network"],
        ports=tuple(PortMapping(**port) for port in json.loads(row["ports"])),
        ip=row["ip"],
        labels=json.loads(row["labels"]),
        hostname=row["hostname"],
        working_dir=row["working_dir"],
        tty=bool(row["tty"]),
        stdin_open=bool(row["stdin_open"]),
        auto_remove=bool(row["auto_remove"]),
        status=ContainerStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        pid=row["pid"],
        pid_start_time=row["pid_start_time"],
        shim_pid=row["shim_pid"],
        exit_code=row["exit_code"],
        oom_killed=bool(row["oom_killed"]),
        error=row["error"],
        owner=Owner(row["owner_pid"], row["owner_pid_start_time"]) if row["owner_pid"] else None,
        security=security_from_dict(json.loads(row["security"])),
        image_id=row["image_id"],
        stop_signal=row["stop_signal"],
    )


def _row_to_network(row: sqlite3.Row) -> Network:
    return Network(
        name=row["name"],
        driver=row["driver"],
        subnet=row["subnet"],
        gateway=row["gateway"],
        labels=json.loads(row["labels"]),
        created_at=row["created_at"],
    )


def _row_to_allocation(row: sqlite3.Row) -> AddressAllocation:
    return AddressAllocation(
        network=row["network"], address=ipam.int_to_address(row["address"]), owner=row["owner"]
    )


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
        return _row_to_container(row) if row else None

    def get_container_by_name(self, name: str) -> Container | None:
        row = self._one("SELECT * FROM containers WHERE name = ?", (name,))
        return _row_to_container(row) if row else None

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
        containers = [_row_to_container(row) for row in rows]
        wanted_labels = dict(labels or {})
        return [
            container
            for container in containers
            if all(container.labels.get(key) == value for key, value in wanted_labels.items())
        ]

    def insert_container(self, container: Container) -> None:
        row = _container_to_row(container)
        self._connection.execute(
            f"INSERT INTO containers ({', '.join(row)}) VALUES ({', '.join(':' + column for column in row)})",
            row,
        )

    def update_container(self, container: Container) -> None:
        """Write the mutable columns of an existing record."""
        row = _container_to_row(container)
        assignments = ", ".join(f"{column} = :{column}" for column in _CONTAINER_MUTABLE_COLUMNS)
        self._connection.execute(f"UPDATE containers SET {assignments} WHERE id = :id", row)

    def delete_container(self, container_id: str) -> None:
        self._connection.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    def count_containers(self) -> int:
        return self._count("containers")

    # Networks.

    def get_network(self, name: str) -> Network | None:
        row = self._one("SELECT * FROM networks WHERE name = ?", (name,))
        return _row_to_network(row) if row else None

    def list_networks(self) -> list[Network]:
        return [_row_to_network(row) for row in self._all("SELECT * FROM networks ORDER BY name")]

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
        return [_row_to_allocation(row) for row in rows]

    def used_addresses(self, network: str) -> set[int]:
        rows = self._all("SELECT address FROM ip_allocations WHERE network = ?", (network,))
        return {row["address"] for row in rows}

    def get_allocation(self, network: str, owner: str) -> AddressAllocation | None:
        row = self._one("SELECT * FROM ip_allocations WHERE network = ? AND owner = ?", (network, owner))
        return _row_to_allocation(row) if row else None

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

    def __init__(self, path: Path, busy_timeout_ms: int = 30_000):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: the sqlite3 module must not open transactions
        # behind our back; read() and write() issue BEGIN themselves.
        self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._connection.row_factory = sqlite3.Row
        try:
            self._configure(busy_timeout_ms)
            self._migrate()
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

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        """A consistent snapshot for queries; writes through it are a bug."""
        with self._lock:
            self._connection.execute("BEGIN")
            try:
                yield Transaction(self._connection)
            finally:
                self._connection.execute("ROLLBACK")

    @contextmanager
    def write(self) -> Iterator[Transaction]:
        """A write transaction, committed when the block ends and rolled back if it raises.

        BEGIN IMMEDIATE takes the write lock up front, so a read-modify-write
        (a unique id, the lowest free address) cannot race another writer.
        """
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self._connection)
                self._connection.execute("COMMIT")
            except BaseException:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
