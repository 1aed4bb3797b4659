"""Where mydocker keeps its files: the two roots (MYDOCKER_ROOT, MYDOCKER_RUN) and every path derived from them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

VERSION = "0.1.0"
API_VERSION = "v1"
DEFAULT_ROOT = Path("/var/lib/mydocker")
DEFAULT_RUN = Path("/run/mydocker")
SERVICES = ("state", "storage", "executor")
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Config:
    """The roots every service and the CLI agree on; tests point both at temp dirs."""

    root: Path = DEFAULT_ROOT
    run: Path = DEFAULT_RUN

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, root: str | None = None, run: str | None = None) -> "Config":
        """Flags win over MYDOCKER_ROOT / MYDOCKER_RUN, which win over the defaults."""
        env = os.environ if env is None else env
        root_dir = root or env.get("MYDOCKER_ROOT") or DEFAULT_ROOT
        run_dir = run or env.get("MYDOCKER_RUN") or DEFAULT_RUN
        return cls(root=Path(root_dir).absolute(), run=Path(run_dir).absolute())

    @property
    def instance(self) -> str:
        """"" for the default root, else 8 hex digits of its path: what keeps host-wide names of two instances apart.

        Cgroup parents, bridge names, link aliases and iptables tags carry it, so an instance never
        takes another's resources for its own (tests run many instances, each on its own temp root).
        """
        if self.root == DEFAULT_ROOT:
            return ""
        return hashlib.sha256(os.fsencode(self.root)).hexdigest()[:8]

    def default_cgroup_parent(self) -> str:
        """Where container cgroups go unless MYDOCKER_CGROUP_PARENT says otherwise: one parent per instance."""
        return f"mydocker-{self.instance}" if self.instance else "mydocker"

    def socket_path(self, service: str) -> Path:
        return self.run / f"{service}.sock"

    def pid_path(self, service: str) -> Path:
        return self.run / f"{service}.pid"

    def lock_path(self, service: str) -> Path:
        return self.run / f"{service}.lock"

    def log_path(self, service: str) -> Path:
        return self.root / "log" / f"{service}.log"

    def state_db_path(self) -> Path:
        return self.root / "state" / "state.db"


def unix_target(socket: Path) -> str:
    """gRPC target for a unix socket path; never the abstract namespace, which has no permissions."""
    return f"unix://{socket}" if socket.is_absolute() else f"unix:{socket}"


def check_socket_path(socket: Path) -> None:
    """Raise ValueError naming the path when it cannot be bound (too long for sun_path)."""
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"socket path {socket} is longer than {MAX_SOCKET_PATH} bytes: use a shorter MYDOCKER_RUN"
        )
