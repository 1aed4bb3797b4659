"""The invariants every crash, reboot and concurrency test checks: records against shims, processes, mounts, dirs and cgroups (and tests/invariants_storage.py: images)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from protos.executor.v1 import executor_pb2, executor_pb2_grpc
from protos.state.v1 import state_pb2, state_pb2_grpc
from services.common.client import open_channel
from services.common.config import Config
from services.common.netnames import VETH_PREFIX, link_alias
from services.executor import firewall_rules, statefiles
from services.executor.cgroups import SHIMS_CGROUP, join_cgroup_path, parse_proc_cgroup
from services.storage import mountinfo
from tests.invariants_storage import check_storage, read_storage

CGROUP_ROOT = Path("/sys/fs/cgroup")
STATE_TIMEOUT = 10.0
RUNNING = state_pb2.CONTAINER_STATUS_RUNNING
# Statuses in which a CLI is midway through a multi-step operation, named by the record's owner.
IN_PROGRESS = (state_pb2.CONTAINER_STATUS_CREATED, state_pb2.CONTAINER_STATUS_REMOVING)


@dataclass(frozen=True)
class HostView:
    """What the host shows, read once: mounts below the roots, overlay2 dirs, live shims, cgroups."""

    # Mount points at or below ROOT or RUN (resolved paths, as mountinfo shows them).
    mounts: list[str]
    overlay_dirs: list[str]
    # Container id -> (pid, start time) of a shim that is alive now.
    live_shims: dict[str, tuple[int, int]]
    # Cgroup directories directly below the test's cgroup parent, in every hierarchy.
    cgroups: list[Path]


def records(config: Config) -> list[state_pb2.Container]:
    """Every container record, from the state service (which must be serving)."""
    with open_channel(config, "state") as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        return list(stub.ListContainers(state_pb2.ListContainersRequest(), timeout=STATE_TIMEOUT).containers)


def hierarchy_parents(cgroup_parent: str, cgroup_root: Path = CGROUP_ROOT) -> list[Path]:
    """The directory of `cgroup_parent` in every mounted hierarchy, as the executor resolves it from its cgroup.

    Every hierarchy, not only the controllers the executor uses, so a stray cgroup anywhere shows.
    """
    own = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    found: dict[str, Path] = {}
    for key, path in own.items():
        if key == "":
            base = cgroup_root if (cgroup_root / "cgroup.controllers").exists() else cgroup_root / "unified"
        else:
            base = cgroup_root / key.removeprefix("name=")
        if not base.is_dir():
            continue
        directory = base / join_cgroup_path(path, cgroup_parent).lstrip("/")
        found.setdefault(os.path.realpath(directory), directory)
    return sorted(found.values())


def read_host(config: Config, cgroup_parent: str) -> HostView:
    root = os.path.realpath(config.root)
    run = os.path.realpath(config.run)
    mounts = [
        m.mount_point
        for m in mountinfo.read()
        if mountinfo.is_under(m.mount_point, root) or mountinfo.is_under(m.mount_point, run)
    ]
    overlay = Path(root) / "overlay2"
    overlay_dirs = sorted(os.listdir(overlay)) if overlay.is_dir() else []
    live_shims = {}
    state_dirs = sorted(p for p in config.run.iterdir() if p.is_dir()) if config.run.is_dir() else []
    for state_dir in state_dirs:
        pid, start = statefiles.parse_pid(statefiles.read_text(str(state_dir / statefiles.SHIM_PID)))
        if pid and statefiles.is_alive(pid, start):
            live_shims[state_dir.name] = (pid, start)
    cgroups = []
    for parent in hierarchy_parents(cgroup_parent):
        if parent.is_dir():
            cgroups += [child for child in sorted(parent.iterdir()) if child.is_dir() and child.name != SHIMS_CGROUP]
    return HostView(mounts, overlay_dirs, live_shims, cgroups)


def violations(config: Config, cgroup_parent: str, networks: bool = False) -> list[str]:
    """Every invariant that does not hold, one line each; empty when all hold.

    Call it when no command is in flight: a record in CREATED or REMOVING is then half-done work, and
    a blob no image record names is a leftover (the storage service collects those when it starts).
    With `networks`, addresses, veths and port rules are checked too: every veth and port rule of
    this instance (told apart by link alias and tag, so another instance's running beside do not count).
    """
    containers = records(config)
    found = check(containers, read_host(config, cgroup_parent), config)
    found += check_storage(read_storage(config))
    if networks:
        found += check_networks(containers, allocations(config), read_network_host(config))
        found += check_bridges(network_records(config), executor_bridges(config))
    return found


def network_records(config: Config) -> list[state_pb2.Network]:
    with open_channel(config, "state") as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        return list(stub.ListNetworks(state_pb2.ListNetworksRequest(), timeout=STATE_TIMEOUT).networks)


def executor_bridges(config: Config) -> list[executor_pb2.Bridge]:
    with open_channel(config, "executor") as channel:
        stub = executor_pb2_grpc.ExecutorServiceStub(channel)
        return list(stub.ListBridges(executor_pb2.ListBridgesRequest(), timeout=STATE_TIMEOUT).bridges)


def check_bridges(networks: list[state_pb2.Network], bridges: list[executor_pb2.Bridge]) -> list[str]:
    """Every network record has its bridge on the host; every bridge the executor made has a record."""
    found = []
    for network in networks:
        if not os.path.exists(f"/sys/class/net/{network.bridge}"):
            found.append(f"network {network.name} has no bridge {network.bridge}")
    recorded = {network.name for network in networks}
    for bridge in bridges:
        if bridge.network not in recorded:
            found.append(f"bridge {bridge.bridge} of network {bridge.network} has no network record")
    return found


@dataclass(frozen=True)
class NetworkHostView:
    """Host-wide network state: mydocker's container veths, and the containers its port rules name."""

    veth_ids: list[str]
    rule_ids: list[str]


def allocations(config: Config) -> list[state_pb2.AddressAllocation]:
    """Every address held in every network, gateways left out."""
    with open_channel(config, "state") as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        held = []
        for network in stub.ListNetworks(state_pb2.ListNetworksRequest(), timeout=STATE_TIMEOUT).networks:
            request = state_pb2.ListAddressesRequest(network=network.name)
            held += [a for a in stub.ListAddresses(request, timeout=STATE_TIMEOUT).allocations if a.owner != "gateway"]
        return held


def _link_alias_of(name: str) -> str:
    try:
        return Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
    except OSError:
        return ""  # gone in between


def read_network_host(config: Config) -> NetworkHostView:
    """The veths and port rules of `config`'s instance only: another instance's (a test running beside) are not ours."""
    alias = link_alias(config.instance)
    veth_ids = sorted(
        name.removeprefix(VETH_PREFIX)
        for name in os.listdir("/sys/class/net")
        if name.startswith(VETH_PREFIX) and _link_alias_of(name) == alias
    )
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    # The firewall's own parser: the containers its port rules are tagged with.
    return NetworkHostView(veth_ids, sorted(firewall_rules.published_ports(firewall_rules.parse_save(saved), config.instance)))


def check_networks(
    containers: list[state_pb2.Container], held: list[state_pb2.AddressAllocation], host: NetworkHostView
) -> list[str]:
    """A running networked container has its veth and its address; nothing else holds either, or a port rule."""
    running = {c.id: c for c in containers if c.status == RUNNING}
    found = []
    addresses = {a.owner: a.address for a in held}
    for c in running.values():
        if c.network and c.id not in host.veth_ids:
            found.append(f"container {c.id} ({c.name}) runs on network {c.network} without its veth {VETH_PREFIX}{c.id}")
        if c.network and addresses.get(c.id) != c.ip:
            found.append(f"container {c.id} ({c.name}) has ip {c.ip!r} but holds {addresses.get(c.id)!r}")
    for allocation in held:
        if allocation.owner not in running:
            found.append(f"address {allocation.address} in {allocation.network} is held by {allocation.owner}, which is not running")
    for container_id in host.veth_ids:
        if container_id not in running:
            found.append(f"veth {VETH_PREFIX}{container_id} belongs to no running container")
    for container_id in host.rule_ids:
        if container_id not in running:
            found.append(f"iptables rules of {container_id} remain, and it is not running")
    return found


def check(containers: list[state_pb2.Container], host: HostView, config: Config) -> list[str]:
    """The invariants, from records and a host view read beforehand."""
    root = Path(os.path.realpath(config.root))
    overlay = root / "overlay2"
    by_id = {c.id: c for c in containers}
    found: list[str] = []

    for c in containers:
        label = f"container {c.id} ({c.name}, {state_pb2.ContainerStatus.Name(c.status)})"
        if c.status == RUNNING:
            shim = host.live_shims.get(c.id)
            if shim is None:
                found.append(f"{label}: no live shim (shim.pid in {config.run / c.id})")
            elif c.shim_pid and shim[0] != c.shim_pid:
                found.append(f"{label}: the record's shim pid {c.shim_pid} is not the live shim {shim[0]}")
            if not statefiles.is_alive(c.pid, c.pid_start_time):
                found.append(f"{label}: no live process {c.pid} started at {c.pid_start_time}")
            if str(overlay / c.id / "merged") not in host.mounts:
                found.append(f"{label}: rootfs {overlay / c.id / 'merged'} is not mounted")
        if c.status in IN_PROGRESS and not statefiles.is_alive(c.owner.pid, c.owner.pid_start_time):
            found.append(f"{label}: half-done, and its owner (pid {c.owner.pid}) is gone")
        # Its tag file, or (untagged with rmi -f since, or named by id) the record of the image it was made from.
        record = root / "imagedb" / "sha256" / f"{c.image_id.removeprefix('sha256:')}.json"
        if not (root / "image" / f"{c.image}.tar").is_file() and not (c.image_id and record.is_file()):
            found.append(f"{label}: its image {c.image} does not exist ({root / 'image' / (c.image + '.tar')})")

    for name in host.overlay_dirs:
        if name not in by_id:
            found.append(f"rootfs directory {overlay / name} has no record")
        lower = overlay / name / "lower"
        if lower.is_symlink() and not lower.exists():
            found.append(f"rootfs {overlay / name}: its layer {os.readlink(lower)} is gone")
    for mount_point in host.mounts:
        relative = Path(mount_point).relative_to(overlay).parts if mountinfo.is_under(mount_point, str(overlay)) else ()
        if not relative:
            found.append(f"mount {mount_point} is no container's rootfs")
        elif relative[0] not in by_id:
            found.append(f"mount {mount_point} has no record")
    for container_id, (pid, _) in host.live_shims.items():
        if container_id not in by_id:
            found.append(f"shim {pid} of {container_id} is alive without a record")
    for cgroup in host.cgroups:
        if cgroup.name not in by_id:
            found.append(f"cgroup {cgroup} has no record")
    return found
