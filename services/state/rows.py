"""Records as table rows and back: the one place that knows how a container, network or allocation is stored."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

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

CONTAINER_COLUMNS = (
    "id", "name", "image", "command", "env", "volumes", "resources", "network", "ports", "ip",
    "labels", "hostname", "working_dir", "tty", "stdin_open", "auto_remove", "status",
    "created_at", "started_at", "finished_at", "pid", "pid_start_time", "shim_pid",
    "exit_code", "oom_killed", "error", "owner_pid", "owner_pid_start_time", "security",
    "image_id", "stop_signal",
)
# The only columns that change after creation; everything else is immutable by contract.
CONTAINER_MUTABLE_COLUMNS = (
    "ip", "status", "started_at", "finished_at", "pid", "pid_start_time", "shim_pid",
    "exit_code", "oom_killed", "error", "owner_pid", "owner_pid_start_time",
)


def container_to_row(container: Container) -> dict[str, object]:
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


def row_to_container(row: sqlite3.Row) -> Container:
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


def row_to_network(row: sqlite3.Row) -> Network:
    return Network(
        name=row["name"],
        driver=row["driver"],
        subnet=row["subnet"],
        gateway=row["gateway"],
        labels=json.loads(row["labels"]),
        created_at=row["created_at"],
    )


def row_to_allocation(row: sqlite3.Row) -> AddressAllocation:
    return AddressAllocation(
        network=row["network"], address=ipam.int_to_address(row["address"]), owner=row["owner"]
    )
