"""`system check`: compare what the three services hold, and plan the repairs (pure data, no I/O).

The services never talk to each other, so only the CLI sees all of it: state's records, the executor's
processes and cgroups, storage's rootfs (and so the mounts) and images. Work in progress is left alone:
a record in CREATED or REMOVING whose owner (the CLI doing it) still lives belongs to that CLI.
Everything else that does not add up becomes a Finding with the actions that repair it, in order.
"""

from __future__ import annotations

import dataclasses

from collections.abc import Iterable
from dataclasses import dataclass, field

# Exit code recorded for a container whose process vanished without a recorded status.
LOST_EXIT_CODE = 255


@dataclass(frozen=True)
class Record:
    """A state record, reduced to what the check needs."""

    id: str
    name: str
    status: str  # created, running, stopped, exited, removing
    image: str
    pid: int = 0
    pid_start_time: int = 0
    auto_remove: bool = False
    # The owner of a CREATED/REMOVING record is alive (checked by the caller, on this host).
    owner_alive: bool = False
    # Network name; "" when the container has loopback only.
    network: str = ""


@dataclass(frozen=True)
class Process:
    """The executor's view of one container."""

    id: str
    status: str  # created, running, exited
    pid: int = 0
    pid_start_time: int = 0
    shim_pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False


@dataclass(frozen=True)
class Rootfs:
    """Storage's view of one container rootfs."""

    id: str
    mounted: bool


@dataclass(frozen=True)
class Snapshot:
    records: tuple[Record, ...]
    processes: tuple[Process, ...]
    rootfs: tuple[Rootfs, ...]
    cgroups: tuple[str, ...]
    images: frozenset[str]
    networks: tuple["NetworkBridge", ...] = ()
    # Bridges the executor made (ListBridges): one whose network has no record is an orphan.
    bridges: tuple["ExecutorBridge", ...] = ()
    # Ids of record-less processes whose executor state can rebuild their record (ListContainerRecords).
    rebuildable: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ExecutorBridge:
    """A bridge the executor created and still lists."""

    network: str
    bridge: str
    subnet: str


@dataclass(frozen=True)
class NetworkBridge:
    """A network record and whether its bridge exists on this host (a reboot takes bridges and rules)."""

    name: str
    bridge: str
    bridge_present: bool


# -- actions: one RPC each, applied in order ------------------------------------------------------


@dataclass(frozen=True)
class RecordExit:
    """state: move the record to EXITED with this exit code."""

    exit_code: int
    oom_killed: bool = False
    error: str = ""


@dataclass(frozen=True)
class RecordRunning:
    """state: the process was started but never recorded: record it as running."""

    pid: int
    pid_start_time: int
    shim_pid: int


@dataclass(frozen=True)
class DeleteProcess:
    """executor: kill if needed, then delete its state and cgroup (idempotent)."""


@dataclass(frozen=True)
class RemoveRootfs:
    """storage: unmount and delete the rootfs (idempotent)."""


@dataclass(frozen=True)
class MarkRemoving:
    """state: move the record to REMOVING, owned by whoever repairs."""


@dataclass(frozen=True)
class DeleteRecord:
    """state: delete the record."""


@dataclass(frozen=True)
class Disconnect:
    """executor: remove the container's veth and port rules (idempotent)."""


@dataclass(frozen=True)
class EnsureBridge:
    """executor: create the network's bridge and rules again (idempotent)."""

    network: str


@dataclass(frozen=True)
class RemoveBridge:
    """executor: delete a bridge and its rules (idempotent)."""

    network: str
    bridge: str
    subnet: str


Action = (
    RecordExit | RecordRunning | DeleteProcess | RemoveRootfs | MarkRemoving | DeleteRecord | Disconnect | EnsureBridge
    | RemoveBridge
)
REMOVE_ALL: tuple[Action, ...] = (DeleteProcess(), RemoveRootfs(), DeleteRecord())


@dataclass(frozen=True)
class Finding:
    container_id: str
    name: str  # "" when there is no record
    problem: str
    repair: str  # what --repair does; "" when it cannot
    actions: tuple[Action, ...] = field(default=())

    def line(self) -> str:
        who = f"{self.container_id} ({self.name})" if self.name else self.container_id
        return f"{who}: {self.problem}"


def _exit_of(process: Process) -> RecordExit:
    return RecordExit(process.exit_code, process.oom_killed)


def _check_created(record: Record, process: Process | None) -> Finding | None:
    if record.owner_alive:
        return None
    if process is not None and process.status == "running":
        return Finding(
            record.id, record.name, "started, but the start was never recorded (the CLI that ran it is gone)",
            "record it as running",
            (RecordRunning(process.pid, process.pid_start_time, process.shim_pid),),
        )
    if process is not None and process.status == "exited":
        return Finding(
            record.id, record.name, f"ran and exited ({process.exit_code}), but neither was recorded",
            "record the exit", (_exit_of(process),),
        )
    return Finding(
        record.id, record.name, "half-created: the CLI creating it is gone and its process never started",
        "remove it with its rootfs", REMOVE_ALL,
    )


def _check_running(record: Record, process: Process | None, rootfs: Rootfs | None) -> Finding | None:
    if process is None:
        return Finding(
            record.id, record.name, "recorded as running, but the executor has no trace of its process",
            f"record it as exited ({LOST_EXIT_CODE})",
            (RecordExit(LOST_EXIT_CODE, error="the process was lost (its shim and state are gone)"),),
        )
    if process.status == "exited":
        return Finding(
            record.id, record.name, f"recorded as running, but its process exited ({process.exit_code})",
            "record the exit", (_exit_of(process),),
        )
    if rootfs is None or not rootfs.mounted:
        return Finding(record.id, record.name, "running without a mounted rootfs", "")
    return None


def _check_stopped(record: Record, process: Process | None) -> Finding | None:
    if process is not None and process.status == "running":
        return Finding(record.id, record.name, f"recorded as {record.status}, but its process runs", "")
    if record.auto_remove and record.status == "exited":
        return Finding(
            record.id, record.name, "exited with --rm, but not removed yet", "remove it",
            (MarkRemoving(), *REMOVE_ALL),
        )
    return None


def _check_record(record: Record, process: Process | None, rootfs: Rootfs | None, images: frozenset[str]) -> list[Finding]:
    findings = []
    if record.status == "created":
        finding = _check_created(record, process)
    elif record.status == "running":
        finding = _check_running(record, process, rootfs)
    elif record.status == "removing":
        finding = None if record.owner_alive else Finding(
            record.id, record.name, "half-removed: the CLI removing it is gone", "finish the removal", REMOVE_ALL
        )
    else:
        finding = _check_stopped(record, process)
    if finding is not None:
        findings.append(finding)
    # A container being removed or half-created is about to go anyway; others keep needing their image.
    if record.status in ("running", "stopped", "exited") and record.image not in images:
        findings.append(Finding(record.id, record.name, f'its image "{record.image}" is missing', ""))
    return findings


# Process states of a container that ran: only these can be one whose record was lost.
STARTED = ("running", "exited")


def lost_records(snapshot: Snapshot, known: set[str]) -> set[str]:
    """Containers whose record is gone while the rest of them is whole: a process that was started (running or
    exited), its rootfs, and an executor state that can rebuild the record. A rolled-back `run` removes its
    rootfs before its record, and one cut short never started: those are leftovers, not containers."""
    rootfs = {r.id for r in snapshot.rootfs}
    return {
        p.id
        for p in snapshot.processes
        if p.id not in known and p.status in STARTED and p.id in rootfs and p.id in snapshot.rebuildable
    }


def _orphans(snapshot: Snapshot, known: set[str]) -> Iterable[Finding]:
    """What carries a container id no record has: never a run in progress, which creates its record first
    (the snapshot reads records last); at worst an `rm` in progress, whose removals are idempotent.

    A container that lost only its record (a state database deleted while the services were down starts
    empty) is never removed by --repair: `--rebuild-state` brings its record back from the executor.
    """
    processes = {p.id for p in snapshot.processes}
    lost = lost_records(snapshot, known)
    for process in snapshot.processes:
        if process.id in lost:
            yield Finding(
                process.id, "", f"a container ({process.status}) whose record is missing "
                "(its saved record brings it back: mydocker system check --repair --rebuild-state)", "",
            )
        elif process.id not in known:
            yield Finding(process.id, "", f"a process state ({process.status}) without a record", "delete it", (DeleteProcess(),))
    for rootfs in snapshot.rootfs:
        if rootfs.id in lost:
            continue
        if rootfs.id not in known:
            state = "a mounted rootfs" if rootfs.mounted else "a rootfs directory"
            yield Finding(rootfs.id, "", f"{state} without a record", "unmount and delete it", (RemoveRootfs(),))
    for cgroup in snapshot.cgroups:
        if cgroup not in known and cgroup not in processes:
            yield Finding(cgroup, "", "a cgroup without a record", "remove it", (DeleteProcess(),))


def plan(snapshot: Snapshot) -> list[Finding]:
    """Every inconsistency, records first (in the order given), then orphans by kind."""
    processes = {p.id: p for p in snapshot.processes}
    rootfs = {r.id: r for r in snapshot.rootfs}
    findings: list[Finding] = []
    for record in snapshot.records:
        findings += _check_record(record, processes.get(record.id), rootfs.get(record.id), snapshot.images)
    networked = _networked(snapshot)
    findings = [_unplug_first(finding, networked) for finding in findings]
    findings += _orphans(snapshot, {record.id for record in snapshot.records})
    recorded = {network.name for network in snapshot.networks}
    for bridge in snapshot.bridges:
        if bridge.network not in recorded:
            findings.append(
                Finding(
                    f"network {bridge.network}", "", f"its bridge {bridge.bridge} exists without a network record",
                    "remove the bridge and its rules", (RemoveBridge(bridge.network, bridge.bridge, bridge.subnet),),
                )
            )
    for network in snapshot.networks:
        if not network.bridge_present:
            findings.append(
                Finding(
                    f"network {network.name}", "", f"its bridge {network.bridge} is missing",
                    "create the bridge and its rules again", (EnsureBridge(network.name),),
                )
            )
    return findings


def _networked(snapshot: Snapshot) -> set[str]:
    return {record.id for record in snapshot.records if record.network}


def _unplug_first(finding: Finding, networked: set[str]) -> Finding:
    """A networked container whose exit is recorded or whose record goes loses its veth and port rules first:
    the address is freed with the record's move, and must not be reused while rules still point at it."""
    if finding.container_id not in networked or not any(isinstance(a, (RecordExit, DeleteRecord)) for a in finding.actions):
        return finding
    return dataclasses.replace(finding, actions=(Disconnect(), *finding.actions))
