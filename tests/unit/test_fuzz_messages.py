"""The descriptor-driven request strategies of tests/fuzz_messages.py build what they claim to."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.executor.v1 import executor_pb2 as ex
from protos.state.v1 import state_pb2 as sta
from protos.storage.v1 import storage_pb2 as sto
from tests.fuzz_messages import SERVICE_MODULES, all_rpcs, message_strategy, mutation_strategy, request_strategy

QUICK = settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))


def test_every_rpc_of_every_service_is_listed():
    for service, module in SERVICE_MODULES.items():
        (descriptor,) = module.DESCRIPTOR.services_by_name.values()
        listed = [rpc.method.name for rpc in all_rpcs((service,))]
        assert listed == [method.name for method in descriptor.methods]
    names = {rpc.name for rpc in all_rpcs()}
    assert {"StateService/CreateContainer", "StorageService/ImportImage", "ExecutorService/Exec"} <= names


@QUICK
@given(st.data())
def test_each_request_type_is_built_and_serializes(data):
    rpc = data.draw(st.sampled_from(all_rpcs()))
    request = data.draw(request_strategy(rpc))
    messages = request if rpc.method.client_streaming else [request]
    assert len(messages) <= 3
    for message in messages:
        assert isinstance(message, rpc.request_class)
        assert rpc.request_class.FromString(message.SerializeToString()) == message


@QUICK
@given(message_strategy(ex.ExecRequest.DESCRIPTOR))
def test_at_most_one_member_of_a_oneof_is_set(message):
    set_fields = [field.name for field, _ in message.ListFields()]
    assert len(set_fields) <= 1


@QUICK
@given(message_strategy(sta.CreateContainerRequest.DESCRIPTOR, {"mydocker.types.v1.Volume.host_path": st.just("/x")}))
def test_overrides_reach_nested_and_repeated_fields(message):
    # Unset (""), or the override: never a generated path.
    assert all(volume.host_path in ("", "/x") for volume in message.volumes)
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in message.labels.items())


def test_maps_enums_and_big_numbers_are_generated():
    seen = {"labels": False, "unknown enum": False, "huge": False}

    @settings(max_examples=200, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(message_strategy(sta.UpdateContainerStatusRequest.DESCRIPTOR), message_strategy(sta.ListContainersRequest.DESCRIPTOR))
    def look(update, listing):
        seen["labels"] |= bool(listing.labels)
        seen["unknown enum"] |= update.status not in sta.ContainerStatus.values()
        seen["huge"] |= update.pid_start_time > 2**32

    look()
    assert all(seen.values()), seen


SEED = sta.ListContainersRequest(statuses=[sta.CONTAINER_STATUS_RUNNING], image="i", network="n", labels={"k": "v"})


@QUICK
@given(mutation_strategy(SEED))
def test_a_mutation_changes_at_most_two_fields_of_its_seed(message):
    kept = [
        list(message.statuses) == list(SEED.statuses),
        message.image == SEED.image,
        message.network == SEED.network,
        dict(message.labels) == dict(SEED.labels),
    ]
    assert sum(kept) >= 2


def test_a_seeded_client_stream_keeps_its_later_messages():
    rpc = next(rpc for rpc in all_rpcs(("storage",)) if rpc.method.name == "ImportImage")
    seed = [sto.ImportImageRequest(header=sto.ImportImageHeader(name="a")), sto.ImportImageRequest(chunk=b"tar")]
    found = []

    @settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(request_strategy(rpc, seeds=[seed]))
    def look(request):
        if len(request) == 2 and request[1] == seed[1]:
            found.append(request)

    look()
    assert found
