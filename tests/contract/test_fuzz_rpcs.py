"""Generated requests at every RPC of every service through a real channel: no INTERNAL, no crash, nothing left behind.

The RPCs come from the generated descriptors (tests/fuzz_messages.py), so a new RPC is fuzzed
without an edit here. Fields that name host resources are kept inside this test's sandbox: rootfs,
volume, device and source paths point at temp paths, registries at a closed local port, and a
bridge subnet that would parse is spoiled, so CreateBridge/RemoveBridge stop at validation (a valid
one would change the host's links and iptables, which the network tests cover with their own names).
The number of cases per RPC is printed in the terminal summary (tests/contract/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import socket
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.executor.v1 import executor_pb2 as ex
from protos.state.v1 import state_pb2 as sta
from protos.storage.v1 import storage_pb2 as sto
from protos.types.v1 import types_pb2
from services.common import reference
from services.common.client import check_health, is_domain_error, open_channel
from services.common.config import Config
from services.common.ctl import REPO, running_services, service_env
from services.executor.cgroup_layout import CgroupLayout
from services.storage.registry_auth import checked_host
from tests.busybox import BUSYBOX
from tests.conftest import ServiceTracker, temp_config_dir
from tests.fuzz_messages import COUNTER, Rpc, all_rpcs, call, call_raw, request_strategy, text_strategy

pytestmark = pytest.mark.root

SERVICES = ("state", "storage", "executor")
# Per RPC: enough for a few hundred cases per service; MYDOCKER_FUZZ_EXAMPLES raises it for a long run.
EXAMPLES = int(os.environ.get("MYDOCKER_FUZZ_EXAMPLES", "40"))
RAW_EXAMPLES = int(os.environ.get("MYDOCKER_FUZZ_RAW_EXAMPLES", "15"))
CALL_TIMEOUT = 30.0
# What a call may end with; DEADLINE_EXCEEDED (a hang), UNAVAILABLE from the transport (a crash),
# INTERNAL and UNKNOWN (an unexpected exception) fail the test.
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


@dataclass
class FuzzHost:
    """The three services on temp roots, the sandbox that fields naming host paths point into, and a dead port."""

    config: Config
    pids: dict[str, int]
    sandbox: Path
    dead_registry: str
    channels: dict[str, grpc.Channel] = field(default_factory=dict)
    baseline: dict[str, object] = field(default_factory=dict)
    # The merged dir of BASE_CONTAINER's rootfs: the one rootfs_path the executor accepts.
    base_rootfs: str = ""

    def sandbox_paths(self) -> list[str]:
        return [str(self.sandbox / name) for name in ("missing", "missing/deeper", "dir", "empty", "garbage", "empty.tar")]


def _make_sandbox(base: Path) -> Path:
    sandbox = base / "sandbox"
    (sandbox / "dir").mkdir(parents=True)
    (sandbox / "empty").write_bytes(b"")
    (sandbox / "garbage").write_bytes(os.urandom(4096))
    # Two zero blocks: a valid tar with no members, which ImportImage may legitimately turn into an image.
    (sandbox / "empty.tar").write_bytes(b"\0" * 1024)
    _write_base_tar(sandbox / "base.tar")
    return sandbox


def _write_base_tar(path: Path) -> None:
    """A root filesystem with busybox as sh and true, and root in /etc/passwd: enough for a container to be created."""
    def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644):
        info = tarfile.TarInfo(name)
        info.type, info.size, info.linkname, info.mode = kind, len(data), link, mode
        return info, io.BytesIO(data) if data else None

    with tarfile.open(path, "w") as tar:
        for directory in ("bin", "etc", "tmp", "root"):
            tar.addfile(*entry(directory, tarfile.DIRTYPE, mode=0o755))
        tar.addfile(*entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
        for applet in ("sh", "true", "sleep"):
            tar.addfile(*entry(f"bin/{applet}", tarfile.SYMTYPE, link="busybox", mode=0o777))
        tar.addfile(*entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"))
        tar.addfile(*entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"))


@contextlib.contextmanager
def _dead_port() -> Iterator[int]:
    """A local port bound but never listening: a connection to it is refused, and nobody else can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def _ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.common.ctl", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL,
    )


def _mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(str(path))]


@pytest.fixture(scope="module")
def fuzz_host() -> Iterator[FuzzHost]:
    tracker = ServiceTracker()
    cgroup_parent = f"mdk-fuzz-{uuid.uuid4().hex[:8]}"
    with temp_config_dir() as config, _dead_port() as port:
        env = service_env(config)
        env["MYDOCKER_CGROUP_PARENT"] = cgroup_parent
        host = None
        try:
            started = _ctl(env, "up", *SERVICES)
            pids = tracker.note(config)
            assert started.returncode == 0, f"ctl up failed:\n{started.stdout}{started.stderr}"
            host = FuzzHost(config, {s: pids[s] for s in SERVICES}, _make_sandbox(config.root.parent), f"127.0.0.1:{port}")
            host.channels = {service: open_channel(config, service) for service in SERVICES}
            host.base_rootfs = _make_base(host)
            host.baseline = snapshot(host)
            yield host
        finally:
            if host is not None:
                if host.base_rootfs:
                    _stub_call(host, "storage", "RemoveRootfs", sto.RemoveRootfsRequest(container_id=BASE_CONTAINER))
                for channel in host.channels.values():
                    channel.close()
            tracker.note(config)
            _ctl(env, "down", *SERVICES)
            tracker.kill_leftovers()
            leftover = _mounts_below(config.root)
            for target in reversed(leftover):
                subprocess.run(["umount", "-l", target], check=False)
            CgroupLayout.from_host(parent=cgroup_parent).remove_parent()
            assert not leftover, f"the fuzzed services left mounts behind: {leftover}"


# What the seeded requests build on, made before the baseline is taken: an image of an empty tar,
# a rootfs of it, and a network record (the state service's alone: no bridge).
BASE_IMAGE = "fuzz-base:1"
BASE_CONTAINER = "9000000001"
BASE_NETWORK = "fuzznet"


def _make_base(host: FuzzHost) -> str:
    header = sto.ImportImageHeader(name=BASE_IMAGE, source_path=str(host.sandbox / "base.tar"))
    _stub_call(host, "storage", "ImportImage", [sto.ImportImageRequest(header=header)])
    prepared = _stub_call(host, "storage", "PrepareRootfs", sto.PrepareRootfsRequest(container_id=BASE_CONTAINER, image=BASE_IMAGE))
    _stub_call(host, "state", "CreateNetwork", sta.CreateNetworkRequest(name=BASE_NETWORK, subnet="10.252.0.0/24"))
    return prepared.rootfs.path


def seeds(host: FuzzHost) -> dict[str, list]:
    """Valid requests per RPC, which the fuzz mutates a few fields of: they get past validation into the work."""
    empty_tar = str(host.sandbox / "empty.tar")
    volume = [types_pb2.Volume(host_path=str(host.sandbox / "dir"), container_path="/data")]
    return {
        "StateService/CreateContainer": [sta.CreateContainerRequest(
            name="fz-1", image="busybox", command=["sh", "-c", "true"], env=["A=1"], labels={"k": "v"},
            volumes=volume, network=BASE_NETWORK, hostname="fz", working_dir="/",
        )],
        "StateService/CreateNetwork": [sta.CreateNetworkRequest(name="fznet2", subnet="10.253.0.0/24", labels={"k": "v"})],
        "StateService/AllocateAddress": [sta.AllocateAddressRequest(network=BASE_NETWORK, container_id="9000000003")],
        "StateService/ListContainers": [sta.ListContainersRequest(image="busybox", network=BASE_NETWORK, labels={"k": "v"})],
        "StorageService/ImportImage": [
            [sto.ImportImageRequest(header=sto.ImportImageHeader(name="fz/import:1", source_path=empty_tar, changes=['CMD ["sh"]', "ENV A=1"]))],
            [sto.ImportImageRequest(header=sto.ImportImageHeader(name="fz/import:2")), sto.ImportImageRequest(chunk=b"\0" * 1024)],
        ],
        "StorageService/LoadImage": [[sto.LoadImageRequest(header=sto.ImportImageHeader(name="fz/load:1", source_path=empty_tar))]],
        "StorageService/TagImage": [sto.TagImageRequest(source=BASE_IMAGE, target="fz/tag:1")],
        "StorageService/GetImage": [sto.GetImageRequest(name=BASE_IMAGE)],
        "StorageService/SaveImage": [sto.SaveImageRequest(references=[BASE_IMAGE])],
        "StorageService/PrepareRootfs": [sto.PrepareRootfsRequest(container_id="9000000002", image=BASE_IMAGE, volumes=volume)],
        "StorageService/GetRootfs": [sto.GetRootfsRequest(container_id=BASE_CONTAINER)],
        "StorageService/CommitContainer": [sto.CommitContainerRequest(
            container_id=BASE_CONTAINER, image="fz/commit:1", changes=["LABEL a=b", "WORKDIR /x"], comment="c", author="a",
        )],
        "StorageService/ExportContainer": [sto.ExportContainerRequest(container_id=BASE_CONTAINER)],
        "ExecutorService/CreateContainer": [ex.CreateContainerRequest(
            id="9000000003", hostname="fz", rootfs_path=host.base_rootfs,
            process=ex.ProcessSpec(args=["/bin/true"], env=["A=1"], cwd="/"), ip_address="10.252.0.5",
        )],
    }


# --- keeping generated requests inside the sandbox ------------------------------------------------------


def _path_strategy(host: FuzzHost) -> st.SearchStrategy[str]:
    """Sandbox paths, or generated text made relative (refused by every service as not absolute)."""
    return st.one_of(st.sampled_from(host.sandbox_paths()), text_strategy().map(lambda text: text.lstrip("/")))


def overrides(host: FuzzHost) -> dict[str, st.SearchStrategy]:
    paths = _path_strategy(host)
    return {
        "mydocker.executor.v1.CreateContainerRequest.rootfs_path": paths,
        "mydocker.types.v1.Volume.host_path": paths,
        "mydocker.types.v1.DeviceMapping.host_path": st.one_of(st.sampled_from(["/dev/null", "/dev/zero"]), paths),
        "mydocker.storage.v1.ImportImageHeader.source_path": paths,
    }


def _local_reference(text: str, registry: str) -> str:
    """A reference that parses is moved to the dead local registry: no fuzzed pull ever leaves the host."""
    parsed, _ = reference._parse(text)
    if parsed is None:
        return text
    suffix = (f":{parsed.tag}" if parsed.tag else "") + (f"@{parsed.digest}" if parsed.digest else "")
    return f"{registry}/{parsed.path}{suffix}"


def _spoil_subnet(text: str) -> str:
    with contextlib.suppress(ValueError):
        ipaddress.IPv4Network(text)
        return text + "/x"
    return text


# A seed's name or id left as it was becomes a fresh one, so a mutated seed is created rather than ALREADY_EXISTS.
FRESH = {
    ("StateService/CreateContainer", "name"): ("fz-1", "fz-{}"),
    ("StorageService/PrepareRootfs", "container_id"): ("9000000002", "90000{:05d}"),
    ("StorageService/CommitContainer", "image"): ("fz/commit:1", "fz/commit:{}"),
    ("ExecutorService/CreateContainer", "id"): ("9000000003", "90001{:05d}"),
}
_serial = iter(range(1, 10**5))


def _freshen(rpc: Rpc, message) -> None:
    for (rpc_name, field_name), (marker, pattern) in FRESH.items():
        if rpc.name == rpc_name and getattr(message, field_name) == marker:
            setattr(message, field_name, pattern.format(next(_serial)))
    if rpc.name == "StorageService/ImportImage" and message.WhichOneof("part") == "header":
        if message.header.name.startswith("fz/import:"):
            message.header.name = f"fz/import:{next(_serial)}"


def sanitize(rpc: Rpc, message, host: FuzzHost) -> None:
    """Per-RPC constraints that depend on a field's value rather than on its name."""
    _freshen(rpc, message)
    name = rpc.method.name
    if rpc.service == "storage" and name in ("PullImage", "PushImage"):
        message.reference = _local_reference(message.reference, host.dead_registry)
    elif rpc.service == "storage" and name == "Login":
        with contextlib.suppress(Exception):
            checked_host(message.registry)
            message.registry = host.dead_registry
    elif rpc.service == "executor" and name in ("CreateBridge", "RemoveBridge"):
        message.subnet = _spoil_subnet(message.subnet)


# --- what the services hold, before and after ----------------------------------------------------------


def _stub_call(host: FuzzHost, service: str, method: str, request):
    rpc = next(rpc for rpc in all_rpcs((service,)) if rpc.method.name == method)
    return call(host.channels[service], rpc, request, CALL_TIMEOUT)[0]


def _tree(base: Path, skip: tuple[str, ...], lazy_dirs: tuple[str, ...] = ()) -> list[str]:
    """Paths below `base`; `skip` subtrees are left out, and so are `lazy_dirs` themselves (made on first use)."""
    found = []
    for directory, dirs, files in os.walk(base):
        relative = os.path.relpath(directory, base)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(relative, d)) not in skip]
        paths = [os.path.normpath(os.path.join(relative, name)) for name in (*dirs, *files)]
        found.extend(path for path in paths if path not in lazy_dirs)
    return sorted(found)


def _children(pids: set[int]) -> list[str]:
    """Processes whose parent is one of `pids` (a shim or an exec helper left running), by command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            if ppid in pids:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    found.append(cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return sorted(found)


def snapshot(host: FuzzHost) -> dict[str, object]:
    """Everything a fuzzed call could leave: records, images, rootfs, processes, cgroups, bridges, files, mounts."""
    state = lambda method, request: _stub_call(host, "state", method, request)  # noqa: E731
    storage = lambda method, request: _stub_call(host, "storage", method, request)  # noqa: E731
    executor = lambda method, request: _stub_call(host, "executor", method, request)  # noqa: E731
    return {
        "state containers": sorted(c.id for c in state("ListContainers", sta.ListContainersRequest()).containers),
        "state networks": sorted(n.name for n in state("ListNetworks", sta.ListNetworksRequest()).networks),
        "images": sorted(i.id for i in storage("ListImages", sto.ListImagesRequest()).images),
        "tags": sorted(t for i in storage("ListImages", sto.ListImagesRequest()).images for t in i.repo_tags),
        "addresses": sorted(
            a.owner for a in state("ListAddresses", sta.ListAddressesRequest(network=BASE_NETWORK)).allocations
        ) if host.base_rootfs else [],
        "rootfs": sorted(r.container_id for r in storage("ListRootfs", sto.ListRootfsRequest()).rootfs),
        "volumes": sorted(v.volume.host_path for v in storage("ListVolumes", sto.ListVolumesRequest()).volumes),
        "executor containers": sorted(p.id for p in executor("ListContainers", ex.ListContainersRequest()).processes),
        "cgroups": sorted(executor("ListCgroups", ex.ListCgroupsRequest()).container_ids),
        "bridges": sorted(b.network for b in executor("ListBridges", ex.ListBridgesRequest()).bridges),
        "children": _children(set(host.pids.values())),
        "mounts": _mounts_below(host.config.root),
        # The logs grow, the database changes and compiled seccomp profiles are a cache: not leftovers.
        # Per-digest lock files stay by design (unlinking a file others may flock is racy).
        # The base rootfs gets what containers on it make (mount points, /etc/hosts): not leftovers either.
        "root files": _tree(
            host.config.root,
            ("log", "state", "layers/locks", "blobs/locks", *(f"overlay2/{BASE_CONTAINER}/{d}" for d in ("merged", "upper", "work"))),
            lazy_dirs=("tmp", "tmp/storage", ".auth.json.lock", "imagedb/thin", "containers"),
        ),
        "run files": _tree(host.config.run, ("seccomp", "pycache")),
    }


def clean_up(host: FuzzHost) -> None:
    """Remove what the fuzz legitimately created (a valid record, an empty image), through the services' own RPCs."""
    base = host.baseline
    for container in _stub_call(host, "state", "ListContainers", sta.ListContainersRequest()).containers:
        if container.id in base["state containers"]:
            continue
        if container.status == sta.CONTAINER_STATUS_RUNNING:
            _stub_call(host, "state", "UpdateContainerStatus",
                       sta.UpdateContainerStatusRequest(id=container.id, status=sta.CONTAINER_STATUS_EXITED))
        _stub_call(host, "state", "DeleteContainer", sta.DeleteContainerRequest(id=container.id))
    for allocation in _stub_call(host, "state", "ListAddresses", sta.ListAddressesRequest(network=BASE_NETWORK)).allocations:
        if allocation.owner not in base["addresses"]:
            _stub_call(host, "state", "ReleaseAddress",
                       sta.ReleaseAddressRequest(network=BASE_NETWORK, container_id=allocation.owner))
    for network in _stub_call(host, "state", "ListNetworks", sta.ListNetworksRequest()).networks:
        if network.name not in base["state networks"]:
            _stub_call(host, "state", "DeleteNetwork", sta.DeleteNetworkRequest(name=network.name))
    for rootfs in _stub_call(host, "storage", "ListRootfs", sto.ListRootfsRequest()).rootfs:
        if rootfs.container_id not in base["rootfs"]:
            _stub_call(host, "storage", "RemoveRootfs", sto.RemoveRootfsRequest(container_id=rootfs.container_id))
    for image in _stub_call(host, "storage", "ListImages", sto.ListImagesRequest()).images:
        if image.id not in base["images"]:
            _stub_call(host, "storage", "RemoveImage", sto.RemoveImageRequest(name=image.id, force=True))
            continue
        for tag in image.repo_tags:
            if tag not in base["tags"]:
                _stub_call(host, "storage", "RemoveImage", sto.RemoveImageRequest(name=tag))
    _stub_call(host, "storage", "PruneLayers", sto.PruneLayersRequest())
    for process in _stub_call(host, "executor", "ListContainers", ex.ListContainersRequest()).processes:
        if process.id not in base["executor containers"]:
            _stub_call(host, "executor", "DeleteContainer", ex.DeleteContainerRequest(id=process.id, force=True))


def check_services(host: FuzzHost, after: str) -> None:
    """Every service still the same process, SERVING, and holding what it held before."""
    pids = running_services(host.config)
    for service in SERVICES:
        assert pids.get(service) == host.pids[service], f"the {service} service died or restarted after {after}"
        health = check_health(host.config, service)
        assert health.status == "SERVING", f"the {service} service is {health.status} after {after}: {health.detail}"
    clean_up(host)
    now = snapshot(host)
    changed = {
        key: {"added": sorted(set(now[key]) - set(host.baseline[key])), "gone": sorted(set(host.baseline[key]) - set(now[key]))}
        for key in now
        if now[key] != host.baseline[key]
    }
    assert not changed, f"after {after} and clean-up, things changed: {changed}"


# --- the properties ----------------------------------------------------------------------------------


def _outcome(err: grpc.RpcError | None) -> str:
    if err is None:
        return "OK"
    if err.code() == grpc.StatusCode.UNAVAILABLE and not is_domain_error(err):
        return "UNAVAILABLE (transport)"
    return err.code().name


def _assert_clean(rpc: Rpc, err: grpc.RpcError | None, shown: str) -> None:
    outcome = _outcome(err)
    bad = err is not None and (err.code() in BAD_CODES or outcome == "UNAVAILABLE (transport)")
    assert not bad, f"{rpc.name} answered {outcome}: {err.details() if err else ''}\nrequest: {shown[:2000]}"


RPCS = all_rpcs(SERVICES)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_generated_requests_get_a_clean_status(fuzz_host: FuzzHost, rpc: Rpc) -> None:
    channel = fuzz_host.channels[rpc.service]

    @settings(FUZZ_SETTINGS, max_examples=EXAMPLES)
    @given(request_strategy(rpc, overrides(fuzz_host), seeds(fuzz_host).get(rpc.name, ())))
    def fuzz(request) -> None:
        for message in request if isinstance(request, list) else [request]:
            sanitize(rpc, message, fuzz_host)
        err = None
        try:
            call(channel, rpc, request, CALL_TIMEOUT)
        except grpc.RpcError as caught:
            err = caught
        COUNTER.note(rpc.name, _outcome(err))
        _assert_clean(rpc, err, repr(request))

    fuzz()
    check_services(fuzz_host, f"fuzzing {rpc.name}")


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: rpc.name)
def test_undecodable_bytes_are_invalid_argument(fuzz_host: FuzzHost, rpc: Rpc) -> None:
    """Bytes that are no message of the type (bad wire format, a string field with bytes that are not UTF-8)."""
    channel = fuzz_host.channels[rpc.service]
    # Field 1 as a length-delimited value holding 0xff: a bad UTF-8 string, or a bad nested message.
    not_utf8 = b"\x0a\x01\xff"

    @settings(FUZZ_SETTINGS, max_examples=RAW_EXAMPLES)
    @given(st.lists(st.one_of(st.just(not_utf8), st.binary(min_size=1, max_size=64)), min_size=1, max_size=3))
    def fuzz(payloads: list[bytes]) -> None:
        err = None
        try:
            call_raw(channel, rpc, payloads, CALL_TIMEOUT)
        except grpc.RpcError as caught:
            err = caught
        COUNTER.note(f"{rpc.name} (raw bytes)", _outcome(err))
        _assert_clean(rpc, err, repr(payloads))

    fuzz()
    check_services(fuzz_host, f"raw bytes at {rpc.name}")
