"""A full disk under MYDOCKER_ROOT: every write that fails with ENOSPC gives one line naming the filesystem, leaves
nothing half-made, and every service keeps serving and works again once space is freed, without a restart.

The root is a directory on a 64 MiB tmpfs this module mounts (one level down: running_host treats a mount at
the root itself as a leftover); MYDOCKER_RUN stays on /tmp. A filler file allocated with posix_fallocate leaves
a chosen number of bytes free, and deleting it is "freeing space". The three services stay up for the whole
module; each test checks the invariants (tests/invariants.py, tests/invariants_storage.py) after a failure and
removes what it made.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.state.v1 import state_pb2, state_pb2_grpc
from services.common.client import check_health, open_channel
from services.common.config import SERVICES, Config
from services.common.errors import NoSpace
from services.state.core import StateCore
from services.state.model import ContainerSpec
from services.state.store import RESERVE_BYTES, Store
from tests import imagetools
from tests.conftest import ServiceTracker
from tests.e2e.conftest import Host, one_line_error, running_host
from tests.imagetools import HandImage, compress, docker_archive_members, sha256, tar_bytes, write_tar
from tests.invariants import violations
from tests.registry import docker_registry
from tests.waiting import wait_until

pytestmark = pytest.mark.root

FS_SIZE = 64 << 20
MIB = 1 << 20
WAIT = 20.0


@pytest.fixture(scope="module")
def small_fs() -> Iterator[Path]:
    """A 64 MiB tmpfs on a fresh dir under /tmp, unmounted and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="mdk-full-", dir="/tmp"))
    fs = base / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tmpfs", str(fs)], check=True)
    try:
        yield fs
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def full_host(small_fs: Path) -> Iterator[Host]:
    """The services with MYDOCKER_ROOT on the small tmpfs (and MYDOCKER_RUN beside it, on /tmp)."""
    tracker = ServiceTracker()
    config = Config(root=small_fs / "root", run=small_fs.parent / "run")
    try:
        with running_host(config, tracker, cgroup_prefix="mdk-full") as host:
            yield host
    finally:
        tracker.kill_leftovers()


@pytest.fixture
def work() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mdk-fullw-", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- helpers ---------------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def disk_full(fs: Path, leave: int) -> Iterator[Path]:
    """A filler file taking all but `leave` bytes of `fs` (rounded to its pages); deleted at the end (space freed)."""
    filler = fs / f"filler-{uuid.uuid4().hex[:8]}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, max(free_bytes(fs) - leave, 1))
        finally:
            os.close(fd)
        assert free_bytes(fs) <= leave + 4096, f"{free_bytes(fs)} bytes free, wanted {leave}"
        yield filler
    finally:
        filler.unlink(missing_ok=True)


def config_of(host: Host) -> Config:
    return Config(root=Path(host.env["MYDOCKER_ROOT"]), run=Path(host.env["MYDOCKER_RUN"]))


def assert_healthy(host: Host) -> None:
    """Every service SERVING, and the invariants hold (nothing half-made)."""
    config = config_of(host)
    for service in SERVICES:
        health = check_health(config, service)
        assert health.status == "SERVING", f"{service}: {health}"
    assert violations(config, host.cgroup_parent) == []


def no_space_line(result: subprocess.CompletedProcess[str], fs: Path) -> str:
    """The one-line error of a full disk, naming the filesystem."""
    line = one_line_error(result)
    assert "no space left on device while " in line, line
    assert str(fs) in line and line.endswith("free space there and retry"), line
    return line


def rootfs_tar(path: Path, data_bytes: int) -> Path:
    """A runnable rootfs tar: busybox as /bin/sh, and `data_bytes` of random data (it does not compress)."""
    with tarfile.open(path, "w") as tar:
        busybox = tar.gettarinfo("/bin/busybox", arcname="bin/busybox")
        with open("/bin/busybox", "rb") as binary:
            tar.addfile(busybox, binary)
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
        data = tarfile.TarInfo("data")
        data.size = data_bytes
        tar.addfile(data, io.BytesIO(os.urandom(data_bytes)))
    return path


def exists_inside(host: Host, container: str, path: str) -> bool:
    return host.mydocker("exec", container, "ls", path, check=False).returncode == 0


def _logged_until(host: Host, container: str, last: str) -> list[str] | None:
    """The container's log lines once `last` is the last of them, else None."""
    lines = host.mydocker("logs", container).stdout.splitlines()
    return lines if lines and lines[-1] == last else None


# -- images ----------------------------------------------------------------------------------------


def test_import_and_load_bigger_than_the_free_space(full_host: Host, small_fs: Path, work: Path) -> None:
    tar = rootfs_tar(work / "rootfs.tar", 3 * MIB)
    full_host.mydocker("import", str(tar), "fd-archived")
    archive = work / "image.tar"
    full_host.mydocker("save", "-o", str(archive), "fd-archived")
    full_host.mydocker("rmi", "fd-archived")
    with disk_full(small_fs, leave=MIB):
        no_space_line(full_host.mydocker("import", str(tar), "fd-imported", check=False), small_fs)
        assert_healthy(full_host)
        no_space_line(full_host.mydocker("load", "-i", str(archive), check=False), small_fs)
        assert_healthy(full_host)
        assert "fd-" not in full_host.mydocker("images").stdout
    # Space freed: both work, with the same services.
    full_host.mydocker("import", str(tar), "fd-imported")
    full_host.mydocker("load", "-i", str(archive))
    full_host.mydocker("run", "--rm", "fd-archived", "/bin/sh", "-c", "test -s /data")
    full_host.mydocker("rmi", "fd-imported", "fd-archived")
    assert_healthy(full_host)


def test_load_whose_layers_do_not_fit_once_unpacked(full_host: Host, small_fs: Path, work: Path) -> None:
    """The archive and its blobs fit (gzip of zeros), the unpacked layers do not: the blobs and records go again."""
    tars = [tar_bytes({f"zeros{i}": bytes(6 * MIB)}) for i in range(2)]
    image = HandImage(tars, [compress(t, "gzip") for t in tars], imagetools.image_config([sha256(t) for t in tars]))
    archive = write_tar(work / "zeros.tar", docker_archive_members(image, ["fd-zeros:1"]))
    with disk_full(small_fs, leave=4 * MIB):
        line = no_space_line(full_host.mydocker("load", "-i", str(archive), check=False), small_fs)
        assert "while unpacking layer" in line, line
        assert "fd-zeros" not in full_host.mydocker("images").stdout
        assert_healthy(full_host)
    full_host.mydocker("load", "-i", str(archive))
    full_host.mydocker("rmi", "fd-zeros:1")
    assert_healthy(full_host)


def test_pull_bigger_than_the_free_space(full_host: Host, small_fs: Path, work: Path) -> None:
    partials = Path(full_host.env["MYDOCKER_ROOT"]) / "blobs" / "tmp"
    with docker_registry() as registry:
        name = f"{registry.host}/fd/big:1"
        full_host.mydocker("import", str(rootfs_tar(work / "rootfs.tar", 3 * MIB)), name)
        full_host.mydocker("push", name)
        full_host.mydocker("rmi", name)
        with disk_full(small_fs, leave=MIB):
            no_space_line(full_host.mydocker("pull", "-q", name, check=False), small_fs)
            # A partial download stays to be resumed (blobs/tmp/*.partial); no blob without its image.
            assert list(partials.glob("*.partial"))
            assert_healthy(full_host)
        full_host.mydocker("pull", name)
        assert not list(partials.glob("*.partial"))
        full_host.mydocker("run", "--rm", name, "/bin/sh", "-c", "test -s /data")
        full_host.mydocker("rmi", name)
    assert_healthy(full_host)


# -- containers ------------------------------------------------------------------------------------


def test_run_without_room_for_the_record_or_the_rootfs(full_host: Host, small_fs: Path, work: Path) -> None:
    root = Path(full_host.env["MYDOCKER_ROOT"])
    with disk_full(small_fs, leave=0):
        # No room even for the record: the state database refuses, nothing is made.
        line = no_space_line(full_host.mydocker("run", "--rm", "busybox", "true", check=False), small_fs)
        assert "state database" in line, line
        assert_healthy(full_host)

    # Room for the record but not for the rootfs: its layer (deleted by hand, as someone making room would)
    # must be unpacked again from the blob, which does not fit; the record is taken back.
    full_host.mydocker("import", str(rootfs_tar(work / "rootfs.tar", 3 * MIB)), "fd-unpack")
    shutil.rmtree(root / "layers" / "sha256" / _top_layer(full_host, "fd-unpack"))
    with disk_full(small_fs, leave=MIB):
        run = full_host.mydocker("run", "--rm", "fd-unpack", "/bin/sh", "-c", "true", check=False)
        line = no_space_line(run, small_fs)
        assert "preparing the rootfs" in line and 'while unpacking layer' in line, line
        assert full_host.mydocker("ps", "-a", "-q").stdout == ""
        assert_healthy(full_host)
    full_host.mydocker("run", "--rm", "fd-unpack", "/bin/sh", "-c", "test -s /data")
    full_host.mydocker("rmi", "fd-unpack")
    assert_healthy(full_host)


def _top_layer(host: Host, image: str) -> str:
    layers = json.loads(host.mydocker("image", "inspect", image).stdout)[0]["layers"]
    return layers[-1]["diff_id"].removeprefix("sha256:")


def test_commit_of_an_upper_bigger_than_the_free_space(full_host: Host, small_fs: Path) -> None:
    name = f"fd-commit-{uuid.uuid4().hex[:6]}"
    full_host.mydocker("run", "-d", "--name", name, "busybox", "sh", "-c",
                       "head -c 3000000 /dev/urandom > /data && touch /ready && sleep 600")
    wait_until(lambda: exists_inside(full_host, name, "/ready"), WAIT, "the upper written")
    try:
        # No room for the layer blob; then room for the blob but not for unpacking it (its undo runs).
        for leave, step in ((MIB, "writing the new layer"), (4 * MIB, "unpacking the new layer")):
            with disk_full(small_fs, leave=leave):
                line = no_space_line(full_host.mydocker("commit", name, "fd-committed", check=False), small_fs)
                assert step in line, line
                assert "fd-committed" not in full_host.mydocker("images").stdout
                assert_healthy(full_host)
        full_host.mydocker("commit", name, "fd-committed")
        full_host.mydocker("run", "--rm", "fd-committed", "sh", "-c", "test -s /data")
    finally:
        full_host.mydocker("rm", "-f", name, check=False)
        full_host.mydocker("rmi", "fd-committed", check=False)
    assert_healthy(full_host)


def test_a_thin_tag_file_is_completed_once_space_is_freed(full_host: Host, small_fs: Path) -> None:
    """commit fits, but the complete tag file (the parent's blobs copied in) does not: it stays thin, usable here,
    and the storage service completes it by itself once there is room."""
    root = Path(full_host.env["MYDOCKER_ROOT"])
    name = f"fd-thin-{uuid.uuid4().hex[:6]}"
    full_host.mydocker("run", "-d", "--name", name, "busybox", "sh", "-c", "echo changed > /changed && sleep 600")
    wait_until(lambda: exists_inside(full_host, name, "/changed"), WAIT, "the upper written")
    markers = root / "imagedb" / "thin"
    try:
        with disk_full(small_fs, leave=MIB):
            full_host.mydocker("commit", name, "fd-thin")
            assert list(markers.rglob("*.json")), "the tag file is complete already: the disk was not full enough"
            assert full_host.mydocker("run", "--rm", "fd-thin", "cat", "/changed").stdout == "changed\n"
        wait_until(lambda: not list(markers.rglob("*.json")), WAIT, "the tag file completed")
        assert_healthy(full_host)
    finally:
        full_host.mydocker("rm", "-f", name, check=False)
        full_host.mydocker("rmi", "fd-thin", check=False)
    assert_healthy(full_host)


def test_a_container_filling_its_upper_gets_enospc(full_host: Host, small_fs: Path) -> None:
    before = free_bytes(small_fs)
    result = full_host.mydocker("run", "--rm", "busybox", "sh", "-c",
                                "dd if=/dev/zero of=/big bs=1M count=1000; echo rc=$?")
    assert "No space left on device" in result.stdout + result.stderr, result
    assert "rc=1" in result.stdout, result.stdout
    assert_healthy(full_host)
    # --rm took its upper, and with it the space.
    assert free_bytes(small_fs) > before - MIB
    # Detached, and removed while the disk is still full: rm needs no room (the state service's reserve).
    name = f"fd-fill-{uuid.uuid4().hex[:6]}"
    full_host.mydocker("run", "-d", "--name", name, "busybox", "sh", "-c",
                       "dd if=/dev/zero of=/big bs=1M count=1000; touch /done; sleep 600")
    wait_until(lambda: exists_inside(full_host, name, "/done"), WAIT, "the disk filled")
    assert free_bytes(small_fs) < 64 * 1024
    assert name in full_host.mydocker("ps").stdout
    full_host.mydocker("rm", "-f", name)
    assert free_bytes(small_fs) > before - MIB
    assert_healthy(full_host)


def test_log_lines_at_a_full_disk_are_dropped_and_logs_still_work(full_host: Host, small_fs: Path) -> None:
    name = f"fd-logs-{uuid.uuid4().hex[:6]}"
    script = (
        "echo before; until [ -e /go1 ]; do sleep 0.05; done; "
        "i=0; while [ $i -lt 300 ]; do echo while-full-$i-padding-padding-padding-padding-padding; i=$((i+1)); done; "
        "until [ -e /go2 ]; do sleep 0.05; done; echo after; sleep 600"
    )
    container = full_host.mydocker("run", "-d", "--name", name, "busybox", "sh", "-c", script).stdout.strip()
    shim_log = Path(full_host.env["MYDOCKER_RUN"]) / container / "shim.log"
    try:
        wait_until(lambda: "before" in full_host.mydocker("logs", name).stdout, WAIT, "the first line logged")
        with disk_full(small_fs, leave=0):
            full_host.mydocker("exec", name, "touch", "/go1")  # an empty file needs no data page on tmpfs
            wait_until(lambda: shim_log.is_file() and "dropping output" in shim_log.read_text(), WAIT, "the shim noting the drop")
            logs = full_host.mydocker("logs", name)
            assert logs.stdout.startswith("before\n"), logs.stdout[:200]
        full_host.mydocker("exec", name, "touch", "/go2")
        lines = wait_until(lambda: _logged_until(full_host, name, "after"), WAIT, "the line after space was freed")
        # Whole lines only: a line cut by the full disk was taken back, never left half-written.
        whole = [line for line in lines if line.startswith("while-full-") and line.endswith("-padding")]
        assert lines == ["before", *whole, "after"], lines
        assert len(lines) < 302, "some lines must have been dropped"
        assert_healthy(full_host)
        assert full_host.mydocker("inspect", name).stdout  # the shim is alive and answers
        assert "running" in full_host.mydocker("ps").stdout
    finally:
        full_host.mydocker("rm", "-f", name, check=False)
    assert_healthy(full_host)


# -- the state database ----------------------------------------------------------------------------


def test_state_database_write_at_a_full_disk(full_host: Host, small_fs: Path) -> None:
    config = config_of(full_host)
    network = f"fd{uuid.uuid4().hex[:6]}"
    with open_channel(config, "state") as channel:
        stub = state_pb2_grpc.StateServiceStub(channel)
        before = len(stub.ListContainers(state_pb2.ListContainersRequest(), timeout=10).containers)
        with disk_full(small_fs, leave=0):
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateNetwork(state_pb2.CreateNetworkRequest(name=network, subnet="10.231.7.0/24"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
            details = refused.value.details()
            assert "\n" not in details and "state database" in details and str(small_fs) in details, details
            no_space_line(full_host.mydocker("network", "create", "--subnet", "10.231.8.0/24", network, check=False),
                          small_fs)
            # Rolled back, and the service keeps answering.
            assert network not in full_host.mydocker("network", "ls").stdout
            assert len(stub.ListContainers(state_pb2.ListContainersRequest(), timeout=10).containers) == before
            assert_healthy(full_host)
        full_host.mydocker("network", "create", "--subnet", "10.231.7.0/24", network)
        full_host.mydocker("network", "rm", network)
    assert_healthy(full_host)


def test_state_core_undoes_at_a_full_disk_with_its_reserve(small_fs: Path) -> None:
    """The state core alone on the small filesystem: inserts fail (rolled back), deletes still commit."""
    directory = small_fs / f"state-{uuid.uuid4().hex[:8]}"
    store = Store(directory / "state.db")
    reserve = directory / "state.db.reserve"
    try:
        core = StateCore(store)
        kept = core.create_container(ContainerSpec(image="busybox", command=["true"], name="kept"))
        undone = [core.create_container(ContainerSpec(image="busybox", command=["true"], name=f"undo{i}")).id
                  for i in range(3)]
        assert reserve.stat().st_size == RESERVE_BYTES
        with disk_full(small_fs, leave=0):
            with pytest.raises(NoSpace) as full:
                core.create_container(ContainerSpec(image="busybox", command=["true"], name="refused"))
            assert "writing the state database" in str(full.value) and str(small_fs) in str(full.value)
            # A failed run's record must go even now (the CLI's undo): the reserve gives the WAL its room.
            for container_id in undone:
                core.delete_container(container_id)
            assert not reserve.exists()
            assert [c.id for c in core.list_containers()] == [kept.id]
        # Space freed: writes work again, and the reserve is back for the next full disk.
        core.create_container(ContainerSpec(image="busybox", command=["true"], name="later"))
        assert reserve.stat().st_size == RESERVE_BYTES
        assert sorted(c.name for c in core.list_containers()) == ["kept", "later"]
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)
