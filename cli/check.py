"""`system check [--repair]`: read the three services into a reconcile.Snapshot, print the findings, apply repairs."""

from __future__ import annotations

import os

from cli import reconcile
from cli.convert import status_name
from cli.lifecycle import ensure_bridge, this_process
from cli.services import CliError, Services
from protos.executor.v1 import executor_pb2 as ex
from protos.state.v1 import state_pb2 as st
from protos.storage.v1 import storage_pb2 as sto
from services.common import procinfo


def _owner_alive(container: st.Container) -> bool:
    owner = container.owner
    return container.HasField("owner") and procinfo.is_alive(owner.pid, owner.pid_start_time)


def present_images(images, containers) -> frozenset[str]:
    """The names of the containers' images that exist: every tag of every image (as Docker shows it, and
    without ":latest", as the seed names it), and a container's own image name when its image id is listed."""
    names = set()
    for image in images:
        names.add(image.name)
        names.update(image.repo_tags)
        names.update(tag.removesuffix(":latest") for tag in image.repo_tags)
    ids = {image.id for image in images}
    names.update(c.image for c in containers if c.image_id and c.image_id in ids)
    return frozenset(names)


def snapshot(services: Services) -> reconcile.Snapshot:
    """Everything the check compares. Records are read last: a `run` creates its record before its rootfs
    and process, so whatever rootfs or process was seen already has its record in what is read after."""
    bridges = tuple(
        reconcile.ExecutorBridge(b.network, b.bridge_name, b.subnet)
        for b in services.call("executor", "ListBridges", ex.ListBridgesRequest()).bridges
    )
    processes = tuple(
        reconcile.Process(
            id=p.id,
            status=status_name(ex.ProcessStatus, p.status),
            pid=p.pid,
            pid_start_time=p.pid_start_time,
            shim_pid=p.shim_pid,
            exit_code=p.exit_code,
            oom_killed=p.oom_killed,
        )
        for p in services.call("executor", "ListContainers", ex.ListContainersRequest()).processes
    )
    cgroups = tuple(services.call("executor", "ListCgroups", ex.ListCgroupsRequest()).container_ids)
    rootfs = tuple(
        reconcile.Rootfs(id=r.container_id, mounted=r.mounted)
        for r in services.call("storage", "ListRootfs", sto.ListRootfsRequest()).rootfs
    )
    listed = services.call("storage", "ListImages", sto.ListImagesRequest()).images
    containers = services.call("state", "ListContainers", st.ListContainersRequest()).containers
    images = present_images(listed, containers)
    records = tuple(
        reconcile.Record(
            id=c.id,
            name=c.name,
            status=status_name(st.ContainerStatus, c.status),
            image=c.image,
            pid=c.pid,
            pid_start_time=c.pid_start_time,
            auto_remove=c.auto_remove,
            owner_alive=_owner_alive(c),
            network=c.network,
        )
        for c in containers
    )
    networks = tuple(
        # The check runs on the services' host, as root: /sys/class/net is the kernel's own list.
        reconcile.NetworkBridge(n.name, n.bridge, os.path.exists(f"/sys/class/net/{n.bridge}"))
        for n in services.call("state", "ListNetworks", st.ListNetworksRequest()).networks
    )
    known = {record.id for record in records}
    rebuildable = frozenset()
    if any(p.id not in known and p.status in reconcile.STARTED for p in processes):
        # Only then: it reads every container's saved record.
        saved = services.call("executor", "ListContainerRecords", ex.ListContainerRecordsRequest(), timeout=60).records
        rebuildable = frozenset(record.id for record in saved)
    return reconcile.Snapshot(records, processes, rootfs, cgroups, images, networks, bridges, rebuildable)


def apply(services: Services, finding: reconcile.Finding) -> None:
    """Run a finding's actions in order; each is idempotent, so a failed repair can simply be run again."""
    container_id = finding.container_id
    for action in finding.actions:
        if isinstance(action, reconcile.RecordExit):
            request = st.UpdateContainerStatusRequest(
                id=container_id, status=st.CONTAINER_STATUS_EXITED, exit_code=action.exit_code,
                oom_killed=action.oom_killed, error=action.error,
            )
            services.call("state", "UpdateContainerStatus", request)
        elif isinstance(action, reconcile.RecordRunning):
            request = st.UpdateContainerStatusRequest(
                id=container_id, status=st.CONTAINER_STATUS_RUNNING, pid=action.pid,
                pid_start_time=action.pid_start_time, shim_pid=action.shim_pid,
            )
            services.call("state", "UpdateContainerStatus", request)
        elif isinstance(action, reconcile.MarkRemoving):
            request = st.UpdateContainerStatusRequest(id=container_id, status=st.CONTAINER_STATUS_REMOVING, owner=this_process())
            services.call("state", "UpdateContainerStatus", request)
        elif isinstance(action, reconcile.DeleteProcess):
            services.call("executor", "DeleteContainer", ex.DeleteContainerRequest(id=container_id, force=True))
        elif isinstance(action, reconcile.RemoveRootfs):
            services.call("storage", "RemoveRootfs", sto.RemoveRootfsRequest(container_id=container_id), timeout=120)
        elif isinstance(action, reconcile.Disconnect):
            services.call("executor", "DisconnectContainer", ex.DisconnectContainerRequest(container_id=container_id))
        elif isinstance(action, reconcile.EnsureBridge):
            ensure_bridge(services, action.network)
        elif isinstance(action, reconcile.RemoveBridge):
            remove = ex.RemoveBridgeRequest(network=action.network, bridge_name=action.bridge, subnet=action.subnet)
            services.call("executor", "RemoveBridge", remove)
        elif isinstance(action, reconcile.DeleteRecord):
            services.call("state", "DeleteContainer", st.DeleteContainerRequest(id=container_id), missing_ok=True)
        else:
            raise TypeError(f"unknown repair action {action!r}")


def run_check(repair: bool, quiet: bool, echo, rebuild_state: bool = False) -> int:
    """Print findings (and repairs); the exit status: 0 when consistent (or all repaired), 1 otherwise.

    With `rebuild_state` (and `repair`), first a damaged state database is set aside and the missing
    records rebuilt (cli/rebuild.py), so the check that follows sees the containers as theirs, not orphans.
    """
    services = Services()
    rebuild_failed, kept = 0, set()
    if rebuild_state:
        if not repair:
            raise CliError("--rebuild-state changes the records: give it with --repair")
        from cli import rebuild

        services = rebuild.recover_state_service(services, echo)
        rebuild_failed, kept = rebuild.rebuild(services, echo)
    findings = [f for f in reconcile.plan(snapshot(services)) if f.container_id not in kept]
    if not findings:
        if not quiet:
            echo("no problems found")
        return 1 if rebuild_failed else 0
    if not repair:
        for finding in findings:
            echo(f"{finding.line()}: {finding.repair or 'cannot be repaired here'}")
        fixable = sum(1 for f in findings if f.actions)
        echo(f"{len(findings)} problem(s) found; {fixable} can be repaired with: mydocker system check --repair")
        return 1
    failed = unrepairable = 0
    for finding in findings:
        if not finding.actions:
            unrepairable += 1
            echo(f"{finding.line()}: cannot be repaired here")
            continue
        try:
            apply(services, finding)
        except CliError as err:
            failed += 1
            echo(f"{finding.line()}: repair failed: {err}")
        else:
            echo(f"{finding.line()}: repaired ({finding.repair})")
    if failed or unrepairable:
        echo(f"{failed} repair(s) failed, {unrepairable} problem(s) cannot be repaired here")
        return 1
    return 1 if rebuild_failed else 0
