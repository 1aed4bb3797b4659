"""The real grpcurl binary, with no proto files, finds and calls every service through reflection alone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from protos.executor.v1 import executor_pb2
from protos.state.v1 import state_pb2
from protos.storage.v1 import storage_pb2
from services.common.config import VERSION, Config
from services.common.ctl import read_pidfile

REPO = Path(__file__).resolve().parents[2]
GRPCURL = REPO / ".venv" / "bin" / "grpcurl"
SERVICES = {
    "state": state_pb2.DESCRIPTOR.services_by_name["StateService"],
    "storage": storage_pb2.DESCRIPTOR.services_by_name["StorageService"],
    "executor": executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"],
}


def grpcurl(config: Config, service: str, *verb: str, data: str | None = None) -> str:
    """Run `grpcurl ... <socket> <verb>` on a service's socket; fails the test with grpcurl's output on error."""
    if not GRPCURL.exists():
        pytest.fail(f"{GRPCURL} is missing: run scripts/test (it installs requirements.txt)")
    flags = ["-d", data] if data is not None else []
    command = [str(GRPCURL), "-plaintext", "-unix", *flags, str(config.socket_path(service)), *verb]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("service", SERVICES)
def test_list_shows_the_service_health_and_reflection(live_services: Config, service: str) -> None:
    listed = grpcurl(live_services, service, "list").split()
    assert SERVICES[service].full_name in listed
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1alpha.ServerReflection" in listed


@pytest.mark.parametrize("service", SERVICES)
def test_describe_shows_every_rpc(live_services: Config, service: str) -> None:
    descriptor = SERVICES[service]
    described = grpcurl(live_services, service, "describe", descriptor.full_name)
    for method in descriptor.methods:
        assert f"rpc {method.name} (" in described


@pytest.mark.parametrize("service", SERVICES)
def test_get_info(live_services: Config, service: str) -> None:
    info = json.loads(grpcurl(live_services, service, f"{SERVICES[service].full_name}/GetInfo"))
    assert info["version"] == VERSION
    assert info["pid"] == read_pidfile(live_services.pid_path(service))
    if service == "state":
        assert info["database_path"] == str(live_services.state_db_path())
    elif service == "storage":
        assert info["root"] == str(live_services.root)
    else:
        assert info["run_root"] == str(live_services.run)


@pytest.mark.parametrize("service", SERVICES)
def test_health_check_is_serving(live_services: Config, service: str) -> None:
    overall = json.loads(grpcurl(live_services, service, "grpc.health.v1.Health/Check"))
    assert overall == {"status": "SERVING"}
    request = json.dumps({"service": SERVICES[service].full_name})
    named = json.loads(grpcurl(live_services, service, "grpc.health.v1.Health/Check", data=request))
    assert named == {"status": "SERVING"}
