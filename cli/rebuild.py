"""`system check --repair --rebuild-state`: a fresh state database, then the records rebuilt from executor and storage.

The state service is the only owner of records, so it sets its damaged database aside itself: the CLI
restarts it with --set-aside-damaged-db (one path for a database damaged at start, which keeps the
service from starting, and one deleted or replaced while it ran, which it refuses to go on with).
Then every network whose bridge the executor lists and every container it holds a state dir for gets
its record back, when it has none: the record the CLI handed the executor at create time (`record`),
brought up to date with the live state (status, pids, exit code, address), or for a state dir of an
older version whatever the plan, the rootfs and the network connection still tell.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from cli.convert import status_name
from cli.services import CliError, Services
from protos.executor.v1 import executor_pb2 as ex
from protos.state.v1 import state_pb2 as st
from protos.storage.v1 import storage_pb2 as sto
from services.common import ctl
from services.common.client import check_health

SET_ASIDE_FLAG = "--set-aside-damaged-db"
STATUS_OF_PROCESS = {
    ex.PROCESS_STATUS_CREATED: st.CONTAINER_STATUS_CREATED,
    ex.PROCESS_STATUS_RUNNING: st.CONTAINER_STATUS_RUNNING,
    # The executor cannot tell `stop` from an exit of the process's own: both come back as exited.
    ex.PROCESS_STATUS_EXITED: st.CONTAINER_STATUS_EXITED,
}

# What the saved record (taken at create time) cannot know: set from the executor's live state instead.
LIVE_FIELDS = ("ip", "started_at", "finished_at", "pid", "pid_start_time", "shim_pid", "exit_code", "oom_killed", "error")


# -- pure: records from what the executor and storage hold -------------------------------------------


def missing_networks(bridges: Iterable[ex.Bridge], recorded: Iterable[str]) -> list[st.CreateNetworkRequest]:
    """A CreateNetwork for each bridge the executor made whose network has no record (gateway: the bridge's)."""
    known = set(recorded)
    return [
        st.CreateNetworkRequest(name=bridge.network, subnet=bridge.subnet, gateway=bridge.gateway)
        for bridge in bridges
        if bridge.network not in known
    ]


def started_at(pid_start_time: int, boot_time: float, ticks_per_second: int) -> Timestamp:
    """When a process started, from its start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int((boot_time + pid_start_time / ticks_per_second) * 1e9))
    return stamp


def saved_record(saved: ex.ContainerRecord) -> st.Container | None:
    """The state record the CLI gave the executor at create time; None when there is none (older versions)."""
    if saved.request.HasField("record") and saved.request.record.Is(st.Container.DESCRIPTOR):
        record = st.Container()
        saved.request.record.Unpack(record)
        return record
    return None


def record_from_request(
    saved: ex.ContainerRecord, rootfs: sto.Rootfs | None, network_of_bridge: Mapping[str, str]
) -> st.Container:
    """What a state dir of an older version still tells: argv, env (the image's included), limits, user;
    the image and volumes from the rootfs; the name is then the id, as for a container run without one."""
    if rootfs is None or not rootfs.image:
        raise ValueError("no saved record and no rootfs: its image is unknown")
    request = saved.request
    return st.Container(
        id=saved.id,
        name=saved.id,
        image=rootfs.image,
        image_id=rootfs.image_id,
        command=request.process.args,
        env=request.process.env,
        volumes=rootfs.volumes,
        resources=request.resources,
        network=network_of_bridge.get(saved.bridge_name, ""),
        ports=saved.ports,
        hostname=request.hostname,
        working_dir=request.process.cwd or "/",
        tty=request.process.terminal,
        stdin_open=request.process.stdin,
        security=request.security,
        created_at=saved.created_at,
    )


def rebuild_record(
    saved: ex.ContainerRecord,
    rootfs: sto.Rootfs | None,
    network_of_bridge: Mapping[str, str],
    boot_time: float,
    ticks_per_second: int,
) -> st.Container:
    """The record to restore for one executor state dir; ValueError (one line) when it cannot be rebuilt."""
    record = saved_record(saved) or record_from_request(saved, rootfs, network_of_bridge)
    process = saved.process
    status = STATUS_OF_PROCESS.get(process.status)
    if status is None:
        raise ValueError(f"its process has no known status ({process.status})")
    rebuilt = st.Container()
    rebuilt.CopyFrom(record)
    rebuilt.status = status
    for field in LIVE_FIELDS:
        rebuilt.ClearField(field)
    if status != st.CONTAINER_STATUS_CREATED:
        # Only a record being created keeps its owner: while that CLI lives, repairs leave it alone.
        rebuilt.ClearField("owner")
    if status in (st.CONTAINER_STATUS_RUNNING, st.CONTAINER_STATUS_CREATED) and saved.address and rebuilt.network:
        # A running (or still being created) container keeps its address: it is reserved again with the record.
        rebuilt.ip = saved.address
    if status == st.CONTAINER_STATUS_RUNNING:
        rebuilt.pid = process.pid
        rebuilt.pid_start_time = process.pid_start_time
        rebuilt.shim_pid = process.shim_pid
        rebuilt.started_at.CopyFrom(started_at(process.pid_start_time, boot_time, ticks_per_second))
    elif status == st.CONTAINER_STATUS_EXITED:
        rebuilt.exit_code = process.exit_code
        rebuilt.oom_killed = process.oom_killed
        if process.HasField("exited_at"):
            rebuilt.finished_at.CopyFrom(process.exited_at)
    return rebuilt


# -- side effects --------------------------------------------------------------------------------------


def boot_time() -> float:
    with open("/proc/stat") as handle:
        for line in handle:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise CliError("/proc/stat has no btime line: cannot date the running containers' starts")


def state_problem(services: Services) -> str:
    """Why the state service cannot serve records ("" when it can): not running, or its database damaged."""
    health = check_health(services.config, "state")
    if health.status != "SERVING":
        return f"the state service is {health.status.lower()} ({health.detail or 'no detail'})"
    try:
        services.call("state", "GetInfo", st.GetInfoRequest())
    except CliError as err:
        return str(err)
    return ""


def recover_state_service(services: Services, echo: Callable[[str], None]) -> Services:
    """Restart the state service with --set-aside-damaged-db; returns the Services to go on with.

    Always, not only when it fails: its integrity check runs at start only, and a database can be damaged
    in pages that the calls made so far never read.
    """
    problem = state_problem(services)
    if problem:
        echo(f"state: {problem}")
    echo(f"state: restarting the state service with {SET_ASIDE_FLAG} (it checks its database as it starts)")
    why = ctl.restart(services.config, "state", (SET_ASIDE_FLAG,))
    if why:
        raise CliError(f"the state service does not start even with {SET_ASIDE_FLAG}: {why}")
    fresh = Services(services.config)  # new channels: the old ones may be backing off from the dead socket
    info = fresh.call("state", "GetInfo", st.GetInfoRequest())
    if info.damaged_database:
        echo(f"state: moved the damaged database to {info.damaged_database}; started on a fresh one")
    return fresh


def rebuild(services: Services, echo: Callable[[str], None]) -> tuple[int, set[str]]:
    """Restore every missing network and container record.

    Returns how many could not be rebuilt, and the ids of rootfs left without a record nor executor state:
    the check that follows must keep those (their writable layer may hold data), not remove them as orphans.
    """
    failed = 0
    networks = services.call("state", "ListNetworks", st.ListNetworksRequest()).networks
    bridges = services.call("executor", "ListBridges", ex.ListBridgesRequest()).bridges
    for request in missing_networks(bridges, (n.name for n in networks)):
        try:
            services.call("state", "CreateNetwork", request)
            echo(f"network {request.name}: record rebuilt ({request.subnet})")
        except CliError as err:
            failed += 1
            echo(f"network {request.name}: cannot rebuild its record: {err}")
    network_of_bridge = {b.bridge_name: b.network for b in bridges}
    recorded = {c.id for c in services.call("state", "ListContainers", st.ListContainersRequest()).containers}
    rootfs = {r.container_id: r for r in services.call("storage", "ListRootfs", sto.ListRootfsRequest()).rootfs}
    saved = services.call("executor", "ListContainerRecords", ex.ListContainerRecordsRequest(), timeout=60).records
    btime, ticks = boot_time(), os.sysconf("SC_CLK_TCK")
    for entry in saved:
        if entry.id in recorded:
            continue
        try:
            record = rebuild_record(entry, rootfs.get(entry.id), network_of_bridge, btime, ticks)
        except ValueError as err:
            failed += 1
            echo(f"{entry.id}: cannot rebuild its record: {err}")
            continue
        try:
            if not record.ip and entry.bridge_name:
                # Its exit was never recorded: unplug it as recording the exit would, since its address is not reserved.
                services.call("executor", "DisconnectContainer", ex.DisconnectContainerRequest(container_id=entry.id))
            services.call("state", "RestoreContainer", st.RestoreContainerRequest(container=record))
        except CliError as err:
            failed += 1
            echo(f"{entry.id} ({record.name}): cannot rebuild its record: {err}")
            continue
        source = "from the plan of an older version" if entry.request_from_plan else "from its saved record"
        echo(f"{entry.id} ({record.name}): record rebuilt {source}, {status_name(st.ContainerStatus, record.status)}")
    kept = set(rootfs) - recorded - {entry.id for entry in saved}
    for container_id in sorted(kept):
        echo(
            f"{container_id}: only its rootfs is left (no executor state), so its record cannot be rebuilt: kept; "
            f"save what you need from {rootfs[container_id].path}, then run 'mydocker system check --repair'"
        )
    return failed + len(kept), kept
