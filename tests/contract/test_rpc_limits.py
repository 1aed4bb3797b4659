"""Requests at and past the limits, through real channels to the real services: clean statuses, services unharmed.

One test per bug the RPC fuzz (test_fuzz_rpcs.py) found, plus the size limits the issue names.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cli.services import CliError, Services
from protos.executor.v1 import executor_pb2 as ex
from protos.executor.v1 import executor_pb2_grpc
from protos.state.v1 import state_pb2 as sta
from protos.state.v1 import state_pb2_grpc
from protos.storage.v1 import storage_pb2_grpc
from services.common.client import check_health, open_channel
from services.common.config import Config
from services.common.ctl import running_services
from services.common.limits import MAX_MESSAGE_BYTES

pytestmark = pytest.mark.root
CODE = grpc.StatusCode
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stubs(live_services: Config):
    channels = {name: open_channel(live_services, name) for name in ("state", "storage", "executor")}
    pids = running_services(live_services)
    yield {
        "config": live_services,
        "channels": channels,
        "state": state_pb2_grpc.StateServiceStub(channels["state"]),
        "storage": storage_pb2_grpc.StorageServiceStub(channels["storage"]),
        "executor": executor_pb2_grpc.ExecutorServiceStub(channels["executor"]),
    }
    for channel in channels.values():
        channel.close()
    # Not one of them crashed or was restarted on the way.
    assert {name: running_services(live_services).get(name) for name in channels} == {name: pids[name] for name in channels}


def refused(call, request, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    return caught.value.details()


def test_a_request_over_the_message_limit_is_refused_and_the_cli_says_so_in_one_line(stubs):
    env = [f"V{i}={'x' * 1000}" for i in range(MAX_MESSAGE_BYTES // 1000 + 100)]
    request = sta.CreateContainerRequest(image="busybox", command=["sh"], env=env)
    assert request.ByteSize() > MAX_MESSAGE_BYTES
    details = refused(stubs["state"].CreateContainer, request, CODE.RESOURCE_EXHAUSTED)
    assert str(MAX_MESSAGE_BYTES) in details

    with pytest.raises(CliError) as caught:
        Services(stubs["config"]).call("state", "CreateContainer", request)
    message = str(caught.value)
    assert "\n" not in message and "state service" in message and str(MAX_MESSAGE_BYTES) in message
    assert check_health(stubs["config"], "state").status == "SERVING"
    assert not stubs["state"].ListContainers(sta.ListContainersRequest(), timeout=5).containers


def test_a_one_mebibyte_argument_is_invalid_argument_naming_the_kernel_limit(stubs):
    big = "a" * MIB
    details = refused(stubs["state"].CreateContainer,
                      sta.CreateContainerRequest(image="busybox", command=["echo", big]), CODE.INVALID_ARGUMENT)
    assert "MAX_ARG_STRLEN" in details and len(details) < 500
    details = refused(stubs["state"].CreateContainer,
                      sta.CreateContainerRequest(image="busybox", command=["sh"], env=[f"A={big}"]), CODE.INVALID_ARGUMENT)
    assert "environment entry 1" in details
    assert not stubs["state"].ListContainers(sta.ListContainersRequest(), timeout=5).containers

    create = ex.CreateContainerRequest(
        id="0123456789", hostname="h", rootfs_path="/nonexistent/rootfs", process=ex.ProcessSpec(args=["echo", big])
    )
    assert "MAX_ARG_STRLEN" in refused(stubs["executor"].CreateContainer, create, CODE.INVALID_ARGUMENT)


def test_ten_thousand_environment_entries_are_stored(stubs):
    env = [f"VAR_{i}=value_{i}" for i in range(10_000)]
    created = stubs["state"].CreateContainer(
        sta.CreateContainerRequest(name="many-env", image="busybox", command=["sh"], env=env), timeout=30
    ).container
    try:
        assert list(created.env) == env
    finally:
        stubs["state"].DeleteContainer(sta.DeleteContainerRequest(id=created.id), timeout=30)


def test_an_error_quoting_a_huge_value_comes_back_cut_short_not_as_resource_exhausted(stubs):
    # Found by the fuzz: the whole value went into the status trailer, which clients drop past 16 KiB.
    details = refused(stubs["state"].GetContainer, sta.GetContainerRequest(reference="é" * 100_000), CODE.NOT_FOUND)
    assert "bytes cut" in details and len(details.encode()) < 4096


@pytest.mark.parametrize(
    ("service", "method", "streaming"),
    [("state", "GetContainer", False), ("storage", "ImportImage", True), ("executor", "Exec", True)],
)
def test_bytes_that_are_not_a_message_are_invalid_argument(stubs, service, method, streaming):
    # Found by the fuzz: grpc answers INTERNAL when a request does not parse (here a string that is not UTF-8).
    full = {"state": "mydocker.state.v1.StateService", "storage": "mydocker.storage.v1.StorageService",
            "executor": "mydocker.executor.v1.ExecutorService"}[service]
    channel = stubs["channels"][service]
    kind = "stream_stream" if method == "Exec" else ("stream_unary" if streaming else "unary_unary")
    call = getattr(channel, kind)(f"/{full}/{method}", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    payload = b"\x0a\x03\x0a\x01\xff" if method == "Exec" else b"\x0a\x01\xff"
    with pytest.raises(grpc.RpcError) as caught:
        result = call(iter([payload]) if streaming else payload, timeout=30)
        if method == "Exec":
            list(result)
    assert caught.value.code() == CODE.INVALID_ARGUMENT, caught.value.details()
    assert "UTF-8" in caught.value.details()


def test_a_restored_record_with_an_impossible_time_is_refused_and_not_stored(stubs):
    # Found by the fuzz: the record was stored, then could not be sent back (INTERNAL), and every listing failed.
    container = sta.Container(
        id="0123456789", name="restored", image="busybox", command=["sh"], status=sta.CONTAINER_STATUS_EXITED,
        created_at=Timestamp(seconds=-(2**63)),
    )
    details = refused(stubs["state"].RestoreContainer, sta.RestoreContainerRequest(container=container), CODE.INVALID_ARGUMENT)
    assert "invalid timestamp" in details
    assert not stubs["state"].ListContainers(sta.ListContainersRequest(), timeout=5).containers


def test_logs_since_an_impossible_time_is_invalid_argument(stubs):
    # Found by the fuzz: Timestamp.ToNanoseconds raised ValueError, which became INTERNAL.
    request = ex.LogsRequest(id="0123456789", since=Timestamp(seconds=-(2**63)))
    with pytest.raises(grpc.RpcError) as caught:
        list(stubs["executor"].Logs(request, timeout=30))
    assert caught.value.code() == CODE.INVALID_ARGUMENT, caught.value.details()
