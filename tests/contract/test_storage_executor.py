"""Storage and executor through their gRPC APIs: GetInfo and health answer; the executor's networking RPCs say UNIMPLEMENTED.

Every storage RPC is implemented now; tests/contract/test_storage.py covers them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.executor.v1 import executor_pb2, executor_pb2_grpc
from protos.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.config import VERSION
from services.executor.__main__ import build as build_executor
from services.executor.cgroup_layout import CgroupLayout
from services.storage.__main__ import build as build_storage


# The executor's networking RPCs come with issue #5; every other executor RPC is implemented.
NETWORKING_RPCS = {"CreateBridge", "RemoveBridge", "ConnectContainer", "DisconnectContainer"}


@pytest.fixture(autouse=True)
def cgroup_parent(monkeypatch) -> Iterator[str]:
    # The executor reconciles its cgroup parent on start: give it one of its own, never the shared default.
    parent = f"mdk-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("MYDOCKER_CGROUP_PARENT", parent)
    yield parent
    assert CgroupLayout.from_host(parent=parent).remove_parent()


def rpc_names(pb_module, service: str) -> list[str]:
    return [method.name for method in pb_module.DESCRIPTOR.services_by_name[service].methods]


def empty_call(stub, pb_module, service: str, name: str):
    """Call `name` with an empty request of the right shape, whatever its streaming kind."""
    method = pb_module.DESCRIPTOR.services_by_name[service].methods_by_name[name]
    request_class = getattr(pb_module, method.input_type.name)
    call = getattr(stub, name)
    request = request_class()
    if method.client_streaming:
        request = iter([request])
    result = call(request, timeout=5)
    if method.server_streaming:
        return list(result)
    return result


def test_storage_info(start_server, temp_config):
    (temp_config.root / "image").mkdir(parents=True)
    (temp_config.root / "image" / "busybox.tar").write_bytes(b"")
    _, channel = start_server(build_storage(temp_config))
    info = storage_pb2_grpc.StorageServiceStub(channel).GetInfo(storage_pb2.GetInfoRequest(), timeout=5)
    assert info.version == VERSION
    assert info.root == str(temp_config.root)
    assert info.driver == "overlay2"
    assert info.images == 1
    assert info.pid > 0


def test_executor_info(start_server, temp_config):
    temp_config.run.mkdir(parents=True, exist_ok=True)
    # A state dir without a live shim is debris, not a running container (test_executor.py counts live ones).
    (temp_config.run / "5341624332").mkdir()
    _, channel = start_server(build_executor(temp_config))
    info = executor_pb2_grpc.ExecutorServiceStub(channel).GetInfo(executor_pb2.GetInfoRequest(), timeout=5)
    assert info.version == VERSION
    assert info.run_root == str(temp_config.run)
    assert info.cgroup_version in ("v1", "v2", "hybrid")
    assert info.kernel
    assert info.containers_running == 0


def test_networking_rpcs_refuse_empty_requests_never_fake_success(start_server, temp_config):
    _, channel = start_server(build_executor(temp_config))
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    names = [name for name in rpc_names(executor_pb2, "ExecutorService") if name in NETWORKING_RPCS]
    assert sorted(names) == sorted(NETWORKING_RPCS), "the contract lists the networking RPCs of issue #5"
    for name in names:
        with pytest.raises(grpc.RpcError) as caught:
            empty_call(stub, executor_pb2, "ExecutorService", name)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, caught.value.details())


@pytest.mark.parametrize("build", [build_storage, build_executor])
def test_health_reports_serving(start_server, temp_config, build):
    definition = build(temp_config)
    _, channel = start_server(definition)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", definition.full_name):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
