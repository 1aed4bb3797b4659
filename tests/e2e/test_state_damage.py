"""A damaged or deleted state database against the real services: the state service refuses it with one line, and
`system check --repair --rebuild-state` sets it aside and rebuilds every record from the executor and storage."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import grpc
import pytest

from protos.storage.v1 import storage_pb2 as sto
from protos.storage.v1 import storage_pb2_grpc
from services.common.config import Config, unix_target
from services.common.ctl import REPO
from services.executor import statefiles
from tests.e2e.conftest import one_line_error, scripts_up
from tests.netutil import free_port, free_subnets
from tests.waiting import wait_until

pytestmark = pytest.mark.root

REPAIR = "run 'mydocker system check --repair --rebuild-state'"
# Fields of a record that a rebuild cannot give back as they were: when the state service heard of the
# start or the exit (the rebuild dates them from the process itself).
REBUILT_TIMES = ("started_at", "finished_at")


def config_of(host) -> Config:
    return Config(root=Path(host.env["MYDOCKER_ROOT"]), run=Path(host.env["MYDOCKER_RUN"]))


def ctl(host, action: str, *services: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv/bin/python"), "-m", "services.common.ctl", action, *services],
        env=host.env, cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )


def stop_state_and_checkpoint(host) -> Path:
    """The state service down and its database one whole file (no WAL), as after a clean shutdown."""
    assert ctl(host, "down", "state").returncode == 0
    path = config_of(host).state_db_path()
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def corrupt_middle(path: Path) -> None:
    """Overwrite the middle third of the file, as torn writes or bad disk blocks would."""
    data = bytearray(path.read_bytes())
    start, end = len(data) // 3, 2 * len(data) // 3
    data[start:end] = (b"\xde\xad\xbe\xef" * (end - start))[: end - start]
    path.write_bytes(bytes(data))


def assert_up_refuses(host, path: Path) -> str:
    """scripts/up fails and shows the state service's one line, naming the file and the repair."""
    up = scripts_up(host.env)
    assert up.returncode != 0, up.stdout + up.stderr
    lines = [line for line in up.stderr.splitlines() if line.startswith("mydocker-state: ")]
    assert lines, up.stderr
    assert lines[0].startswith(f"mydocker-state: state database {path} is damaged (") and lines[0].endswith(REPAIR), lines[0]
    return lines[0]


def rebuild(host) -> subprocess.CompletedProcess[str]:
    result = host.mydocker("system", "check", "--repair", "--rebuild-state", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def inspect(host, *references: str) -> dict[str, dict]:
    records = json.loads(host.mydocker("inspect", *references).stdout)
    for record in records:
        for field in REBUILT_TIMES:
            record.pop(field, None)
    return {record["id"]: record for record in records}


def set_aside_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


def test_a_file_that_is_not_a_database_keeps_the_state_service_down_until_rebuilt(host):
    # A rootfs whose container left no executor state (as after a reboot): its record cannot come back.
    storage = storage_pb2_grpc.StorageServiceStub(grpc.insecure_channel(unix_target(config_of(host).socket_path("storage"))))
    storage.PrepareRootfs(sto.PrepareRootfsRequest(container_id="9999999999", image="busybox"), timeout=60)
    path = stop_state_and_checkpoint(host)
    path.write_bytes(b"not a database\n" * 500)
    line = assert_up_refuses(host, path)
    assert "(file is not a database)" in line
    assert "the state service is not" in one_line_error(host.mydocker("ps", check=False))

    result = host.mydocker("system", "check", "--repair", "--rebuild-state", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    (moved,) = set_aside_files(path)
    assert moved.read_bytes().startswith(b"not a database"), "the damaged file is kept, only moved"
    assert f"moved the damaged database to {moved}" in result.stdout
    assert "9999999999: only its rootfs is left (no executor state), so its record cannot be rebuilt: kept" in result.stdout
    assert (config_of(host).root / "overlay2" / "9999999999").exists()
    assert host.mydocker("ps", "-a", "-q").stdout == ""
    assert scripts_up(host.env).returncode == 0, "scripts/up serves again (and its repair removes the orphan rootfs)"
    assert not (config_of(host).root / "overlay2" / "9999999999").exists()


def test_a_database_with_overwritten_pages_is_refused(host):
    for index in range(3):
        host.mydocker("run", "-d", "--name", f"c{index}-{uuid.uuid4().hex[:6]}", "busybox", "top")
    path = stop_state_and_checkpoint(host)
    corrupt_middle(path)
    assert_up_refuses(host, path)
    rebuild(host)
    assert len(host.mydocker("ps", "-q").stdout.split()) == 3


@pytest.mark.parametrize("damage", ["deleted while running", "corrupted while down"])
def test_every_container_and_network_comes_back(host, tmp_path, damage):
    tag = uuid.uuid4().hex[:6]
    net, (subnet,), port = f"rb{tag}", free_subnets(1), free_port()
    volume = tmp_path / "vol"
    volume.mkdir()
    (volume / "hello").write_text("from the host\n")
    host.mydocker("network", "create", "--subnet", subnet, net)
    web = host.mydocker(
        "run", "-d", "--name", f"web-{tag}", "--network", net, "-p", f"{port}:80", "-e", "GREETING=hi there",
        "-m", "64m", "-v", f"{volume}:/data", "busybox", "sh", "-c", "exec httpd -f -p 80 -h /data",
    ).stdout.strip()
    worker = host.mydocker("run", "-d", "--name", f"worker-{tag}", "--pids-limit", "50", "busybox", "top").stdout.strip()
    done = host.mydocker("run", "-d", "--name", f"done-{tag}", "busybox", "sh", "-c", "exit 3").stdout.strip()
    wait_until(lambda: "exited (3)" in host.mydocker("ps", "-a").stdout, what="the third container to exit")
    ps_before = host.mydocker("ps", "-a").stdout
    ids = host.mydocker("ps", "-a", "-q").stdout.split()
    assert len(ids) == 3, ps_before
    before = inspect(host, *ids)
    network_before = json.loads(host.mydocker("network", "inspect", net).stdout)[0]

    path = config_of(host).state_db_path()
    if damage == "deleted while running":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        line = one_line_error(host.mydocker("ps", "-a", check=False))
        assert line == f"mydocker: state database {path} was deleted while the state service ran: {REPAIR}"
        assert not path.exists(), "the service must not go on in a new file"
    else:
        path = stop_state_and_checkpoint(host)
        corrupt_middle(path)
        assert_up_refuses(host, path)

    result = rebuild(host)
    for container in ids:
        assert f"{container} (" in result.stdout and "record rebuilt from its saved record" in result.stdout, result.stdout
    assert f"network {net}: record rebuilt ({subnet})" in result.stdout
    assert host.mydocker("ps", "-a").stdout == ps_before
    after = inspect(host, *ids)
    assert after == before
    network_after = json.loads(host.mydocker("network", "inspect", net).stdout)[0]
    assert network_after["allocations"] == network_before["allocations"]
    assert {k: network_after[k] for k in ("name", "subnet", "gateway", "bridge")} == {
        k: network_before[k] for k in ("name", "subnet", "gateway", "bridge")
    }
    assert host.mydocker("system", "check").stdout == "no problems found\n"

    # The running ones are still whole: exec, their published port, stop and rm -f, with nothing left behind.
    assert host.mydocker("exec", web, "sh", "-c", "echo $GREETING; cat /data/hello").stdout == "hi there\nfrom the host\n"
    fetched = wait_until(
        lambda: subprocess.run(["curl", "-s", "-m", "2", f"http://127.0.0.1:{port}/hello"], capture_output=True, text=True).stdout,
        what="the published port to answer",
    )
    assert fetched == "from the host\n"
    assert host.mydocker("exec", worker, "true").returncode == 0
    host.mydocker("stop", "-t", "1", worker)
    host.mydocker("rm", "-f", web, worker, done)
    host.mydocker("network", "rm", net)
    assert host.mydocker("ps", "-a", "-q").stdout == ""
    assert host.mydocker("system", "check").stdout == "no problems found\n"
    run = config_of(host).run
    assert not [entry for entry in os.listdir(run) if entry.isdigit()], os.listdir(run)
    assert not (config_of(host).root / "overlay2").exists() or not [
        entry for entry in os.listdir(config_of(host).root / "overlay2") if entry in ids
    ]
    assert net not in subprocess.run(["iptables-save"], capture_output=True, text=True).stdout


def test_a_container_of_an_older_version_gets_back_what_its_state_dir_tells(host, tmp_path):
    """No saved record (request.pb) in its state dir: argv, env, limits, image and volumes come back; the name is the id."""
    volume = tmp_path / "vol"
    volume.mkdir()
    old = host.mydocker(
        "run", "-d", "-e", "OLD=yes", "-m", "32m", "-v", f"{volume}:/data", "busybox", "sh", "-c", "exec top",
    ).stdout.strip()
    (config_of(host).run / old / "request.pb").unlink()
    path = config_of(host).state_db_path()
    path.unlink()
    result = rebuild(host)
    assert f"{old} ({old}): record rebuilt from the plan of an older version, running" in result.stdout, result.stdout
    (record,) = inspect(host, old).values()
    assert (record["name"], record["command"], record["status"]) == (old, ["sh", "-c", "exec top"], "CONTAINER_STATUS_RUNNING")
    assert "OLD=yes" in record["env"] and record["resources"]["memory_bytes"] == str(32 << 20)
    assert [(v["host_path"], v["container_path"]) for v in record["volumes"]] == [(str(volume), "/data")]
    assert host.mydocker("exec", old, "sh", "-c", "echo $OLD").stdout == "yes\n"
    host.mydocker("rm", "-f", old)
    assert host.mydocker("system", "check").stdout == "no problems found\n"


def test_a_database_deleted_while_the_services_were_down_loses_no_container(host):
    # The state service starts on an empty database, and scripts/up runs `system check --repair`: the
    # containers whose records are gone must stay (running and exited) until --rebuild-state.
    worker = host.mydocker("run", "-d", "busybox", "top").stdout.strip()
    done = host.mydocker("run", "-d", "busybox", "sh", "-c", "exit 3").stdout.strip()
    wait_until(lambda: "exited (3)" in host.mydocker("ps", "-a").stdout, what="the second container to exit")
    before = inspect(host, worker, done)
    pid, start = before[worker]["live"]["pid"], before[worker]["live"]["pid_start_time"]
    assert ctl(host, "down").returncode == 0
    path = config_of(host).state_db_path()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    up = scripts_up(host.env)
    assert up.returncode != 0, "the repair must say it left something: " + up.stdout + up.stderr
    for container in (worker, done):
        assert f"check: {container}: a container (" in up.stdout and "--rebuild-state" in up.stdout, up.stdout
    assert statefiles.is_alive(int(pid), int(start)), "the running container was killed"
    assert host.mydocker("ps", "-a", "-q").stdout == ""

    rebuild(host)
    assert inspect(host, worker, done) == before
    assert host.mydocker("exec", worker, "true").returncode == 0
    host.mydocker("rm", "-f", worker, done)
    assert host.mydocker("system", "check").stdout == "no problems found\n"
