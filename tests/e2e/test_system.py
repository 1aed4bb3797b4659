"""system check [--repair], system df, system prune and container prune against the real services.

Each inconsistency is injected the way a crash leaves it (through the services' own APIs, or by
killing processes), then `system check` must report it and `system check --repair` fix it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from protos.state.v1 import state_pb2 as st
from protos.state.v1 import state_pb2_grpc
from protos.storage.v1 import storage_pb2 as sto
from protos.storage.v1 import storage_pb2_grpc
from services.common import procinfo
from services.common.config import Config, unix_target
from services.executor.cgroup_layout import CgroupLayout
from tests.e2e.conftest import both_cli_modes
from tests.waiting import wait_gone, wait_until

# Every test twice: through the CLI server, and with the CLI in-process.
pytestmark = [pytest.mark.root, both_cli_modes]


def config_of(host) -> Config:
    return Config(root=Path(host.env["MYDOCKER_ROOT"]), run=Path(host.env["MYDOCKER_RUN"]))


def stub(host, service: str):
    channel = grpc.insecure_channel(unix_target(config_of(host).socket_path(service)))
    return {"state": state_pb2_grpc.StateServiceStub, "storage": storage_pb2_grpc.StorageServiceStub}[service](channel)


def dead_owner() -> st.Owner:
    """A process that existed and is gone: what a killed CLI leaves as a record's owner."""
    child = subprocess.Popen(["sleep", "30"])
    start = procinfo.proc_start_time(child.pid)
    child.kill()
    child.wait()
    return st.Owner(pid=child.pid, pid_start_time=start)


def wait_exited(host, container_id: str) -> None:
    """Until `ps -a` (which records exits it finds) shows the container as exited."""

    def exited() -> bool:
        rows = [line for line in host.mydocker("ps", "-a").stdout.splitlines() if line.startswith(container_id)]
        return bool(rows) and " exited" in rows[0]

    wait_until(exited, what=f"container {container_id} to exit")


def check(host, *flags: str) -> subprocess.CompletedProcess[str]:
    return host.mydocker("system", "check", *flags, check=False)


def assert_found_then_repaired(host, fragment: str) -> None:
    found = check(host)
    assert found.returncode == 1 and fragment in found.stdout, found.stdout + found.stderr
    repaired = check(host, "--repair")
    assert repaired.returncode == 0 and "repaired" in repaired.stdout, repaired.stdout + repaired.stderr
    clean = check(host)
    assert (clean.returncode, clean.stdout.strip()) == (0, "no problems found"), clean.stdout + clean.stderr


def test_a_consistent_host_checks_clean(host) -> None:
    host.mydocker("run", "-d", "--name", "up", "busybox", "top")
    host.mydocker("run", "--name", "done", "busybox", "true")
    result = check(host)
    assert (result.returncode, result.stdout) == (0, "no problems found\n")
    assert check(host, "--quiet").stdout == ""


def test_half_created_record_and_rootfs_are_removed(host) -> None:
    state, storage = stub(host, "state"), stub(host, "storage")
    record = state.CreateContainer(
        st.CreateContainerRequest(name="half", image="busybox", command=["top"], owner=dead_owner()), timeout=10
    ).container
    storage.PrepareRootfs(sto.PrepareRootfsRequest(container_id=record.id, image="busybox"), timeout=60)
    assert_found_then_repaired(host, f"{record.id} (half): half-created")
    assert host.mydocker("ps", "-a", "-q").stdout.split() == []
    assert not (config_of(host).root / "overlay2" / record.id).exists()


def test_work_in_progress_is_not_touched(host) -> None:
    """A record whose owner lives (here: this test process) is someone's run in progress."""
    state = stub(host, "state")
    me = st.Owner(pid=os.getpid(), pid_start_time=procinfo.proc_start_time(os.getpid()))
    record = state.CreateContainer(st.CreateContainerRequest(image="busybox", command=["top"], owner=me), timeout=10).container
    assert check(host, "--repair").returncode == 0
    assert record.id in host.mydocker("ps", "-a", "-q").stdout.split()
    state.DeleteContainer(st.DeleteContainerRequest(id=record.id), timeout=10)


def test_half_removed_container_is_finished(host) -> None:
    container_id = host.mydocker("run", "-d", "busybox", "true").stdout.strip()
    wait_exited(host, container_id)
    state = stub(host, "state")
    state.UpdateContainerStatus(
        st.UpdateContainerStatusRequest(id=container_id, status=st.CONTAINER_STATUS_REMOVING, owner=dead_owner()), timeout=10
    )
    assert_found_then_repaired(host, "half-removed")
    assert container_id not in host.mydocker("ps", "-a", "-q").stdout.split()
    assert not (config_of(host).root / "overlay2" / container_id).exists()


def test_orphan_rootfs_and_cgroup_are_removed(host) -> None:
    storage = stub(host, "storage")
    storage.PrepareRootfs(sto.PrepareRootfsRequest(container_id="9999999999", image="busybox"), timeout=60)
    layout = CgroupLayout.from_host(parent=host.env["MYDOCKER_CGROUP_PARENT"])
    orphan = layout.container("8888888888")
    orphan.create()
    assert_found_then_repaired(host, "9999999999: a mounted rootfs without a record")
    assert not (config_of(host).root / "overlay2" / "9999999999").exists()
    assert not any(directory.exists() for directory in orphan.dirs())


def test_a_running_record_whose_process_died_gets_its_exit(host) -> None:
    container_id = host.mydocker("run", "-d", "busybox", "top").stdout.strip()
    record = stub(host, "state").GetContainer(st.GetContainerRequest(reference=container_id), timeout=10).container
    os.kill(record.shim_pid, signal.SIGKILL)
    os.kill(record.pid, signal.SIGKILL)
    wait_gone(record.shim_pid, record.pid)
    assert_found_then_repaired(host, "recorded as running")
    status = stub(host, "state").GetContainer(st.GetContainerRequest(reference=container_id), timeout=10).container.status
    assert status == st.CONTAINER_STATUS_EXITED


def test_df_reports_images_layers_containers_and_volumes(host, tmp_path: Path) -> None:
    host.mydocker("run", "-d", "-v", f"{tmp_path}/vol:/data", "busybox", "sh", "-c", "echo hi > /data/f; top")
    lines = host.mydocker("system", "df").stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert lines[0].split()[:3] == ["TYPE", "COUNT", "SIZE"]
    assert rows["Images"][1] == "1" and rows["Layers"][1] == "1" and rows["Containers"][1] == "1"
    assert rows["Volumes"][1] == "1"
    assert lines[-1].startswith("Total: ")


def test_container_prune_removes_stopped_containers_only(host) -> None:
    running = host.mydocker("run", "-d", "busybox", "top").stdout.strip()
    exited = host.mydocker("run", "-d", "busybox", "true").stdout.strip()
    wait_exited(host, exited)
    refused = host.mydocker("container", "prune", check=False)
    assert refused.returncode == 1 and "nothing removed" in refused.stderr
    assert sorted(host.mydocker("ps", "-a", "-q").stdout.split()) == sorted([running, exited])
    assert host.mydocker("container", "prune", "-f").stdout.split() == [exited]
    assert host.mydocker("ps", "-a", "-q").stdout.split() == [running]


def test_system_prune_removes_stopped_containers_and_unused_layers(host) -> None:
    image = config_of(host).root / "image"
    (image / "copy.tar").write_bytes((image / "busybox.tar").read_bytes() + b"\0" * 1024)
    host.mydocker("run", "--rm", "copy", "true")
    exited = host.mydocker("run", "-d", "busybox", "true").stdout.strip()
    wait_exited(host, exited)
    layers = config_of(host).root / "layers" / "sha256"
    assert len([p for p in layers.iterdir() if p.is_dir()]) == 2
    # rmi deletes the image's layer at once: no container uses it and no other image has it.
    host.mydocker("rmi", "copy")
    assert len([p for p in layers.iterdir() if p.is_dir()]) == 1
    pruned = host.mydocker("system", "prune", "-f").stdout
    assert f"deleted container {exited}" in pruned
    assert "Total reclaimed space:" in pruned
    assert len([p for p in layers.iterdir() if p.is_dir()]) == 1
    assert host.mydocker("run", "--rm", "busybox", "echo", "still").stdout == "still\n"


# -- networks (issue #5) --------------------------------------------------------------------------


def test_a_bridge_lost_to_a_reboot_is_made_again(host) -> None:
    from tests.netutil import free_subnets

    host.mydocker("network", "create", "--subnet", free_subnets(1)[0], "lost")
    subprocess.run(["ip", "link", "del", host.bridge("lost")], check=True)
    assert_found_then_repaired(host, f"network lost: its bridge {host.bridge('lost')} is missing")
    assert os.path.exists(f"/sys/class/net/{host.bridge('lost')}")


def test_a_bridge_without_a_record_is_removed_with_its_rules(host) -> None:
    from tests.netutil import free_subnets, iptables_save

    host.mydocker("network", "create", "--subnet", free_subnets(1)[0], "orphan")
    # What a `network create` killed after its bridge, whose undo deleted the record, leaves.
    stub(host, "state").DeleteNetwork(st.DeleteNetworkRequest(name="orphan"), timeout=10)
    assert_found_then_repaired(host, f"network orphan: its bridge {host.bridge('orphan')} exists without a network record")
    assert not os.path.exists(f"/sys/class/net/{host.bridge('orphan')}")
    assert "mydocker net=orphan" not in iptables_save()


def test_a_networked_container_that_died_is_unplugged_and_its_address_freed(host) -> None:
    from tests.netutil import free_port, free_subnets, iptables_save

    host.mydocker("network", "create", "--subnet", free_subnets(1)[0], "died")
    container_id = host.mydocker("run", "-d", "--network", "died", "-p", f"{free_port()}:80", "busybox", "top").stdout.strip()
    record = stub(host, "state").GetContainer(st.GetContainerRequest(reference=container_id), timeout=10).container
    os.kill(record.shim_pid, signal.SIGKILL)
    os.kill(record.pid, signal.SIGKILL)
    wait_gone(record.shim_pid, record.pid)
    assert f"ctr={container_id}" in iptables_save()
    assert_found_then_repaired(host, "recorded as running")
    assert f"ctr={container_id}" not in iptables_save()
    allocations = stub(host, "state").ListAddresses(st.ListAddressesRequest(network="died"), timeout=10).allocations
    assert [a.owner for a in allocations] == ["gateway"]
