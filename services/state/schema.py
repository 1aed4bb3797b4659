"""The state database's schema: the migrations that build it, applied in order and counted in user_version."""

from __future__ import annotations

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
