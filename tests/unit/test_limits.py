"""Input limits: execve's sizes checked up front, status messages cut short, bad timestamps and non-UTF-8 refused."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cli.argv import check_utf8
from cli.services import CliError
from protos.executor.v1 import executor_pb2 as ex
from services.common.errors import InvalidArgument
from services.common.grpc_errors import MAX_DETAILS_BYTES, short_details
from services.common.limits import ARG_MAX, MAX_ARG_STRLEN, check_exec_size
from services.executor import convert as executor_convert
from services.executor.plan import build_plan, validate
from services.state import convert as state_convert
from services.state import model
from services.state.model import ContainerSpec

LONGEST = "a" * (MAX_ARG_STRLEN - 1)


def test_an_argument_of_exactly_max_arg_strlen_with_its_nul_passes():
    check_exec_size(["sh", LONGEST], [f"A={'b' * (MAX_ARG_STRLEN - 3)}"])


@pytest.mark.parametrize("where", ["args", "env"])
def test_one_byte_more_is_refused_naming_the_kernel_limit(where):
    too_long = LONGEST + "a"
    args, env = (["sh", too_long], []) if where == "args" else (["sh"], ["A" * 2 + "=" + too_long])
    with pytest.raises(InvalidArgument, match="MAX_ARG_STRLEN") as refused:
        check_exec_size(args, env)
    assert str(MAX_ARG_STRLEN - 1) in str(refused.value)
    assert len(str(refused.value)) < 300  # the value is quoted cut short


def test_multibyte_characters_count_in_bytes():
    with pytest.raises(InvalidArgument, match="MAX_ARG_STRLEN"):
        check_exec_size(["sh", "é" * (MAX_ARG_STRLEN // 2)], [])


def test_ten_thousand_environment_entries_pass_and_too_many_bytes_in_all_do_not():
    check_exec_size(["sh"], [f"VAR_{i}=value_{i}" for i in range(10_000)])
    with pytest.raises(InvalidArgument, match="ARG_MAX") as refused:
        check_exec_size(["sh"], [f"V{i}={'x' * 100_000}" for i in range(ARG_MAX // 100_000 + 1)])
    assert "environment entries" in str(refused.value)


def test_the_state_service_refuses_a_one_mebibyte_argument_before_any_record():
    spec = ContainerSpec(image="busybox", command=["echo", "a" * 1024 * 1024])
    with pytest.raises(InvalidArgument, match="MAX_ARG_STRLEN"):
        model.validate_spec(spec)


def test_the_executor_plan_refuses_a_one_mebibyte_argument():
    plan = build_plan("0123456789", "host", "/tmp/rootfs", ["echo", "a" * 1024 * 1024], ["PATH=/bin"])
    with pytest.raises(InvalidArgument, match="MAX_ARG_STRLEN"):
        validate(plan)


def test_short_details_keep_short_messages_and_both_ends_of_long_ones():
    assert short_details("no such container: x") == "no such container: x"
    long = "invalid name " + "é" * 100_000 + ": use letters and digits"
    short = short_details(long)
    assert len(short.encode()) <= MAX_DETAILS_BYTES + 40
    assert short.startswith("invalid name ") and short.endswith(": use letters and digits")
    assert "bytes cut" in short


@pytest.mark.parametrize(("seconds", "nanos"), [(-(2**63), 0), (2**63 - 1, 0), (253402300799, 0), (0, -1), (0, 10**9)])
def test_a_restored_record_with_a_timestamp_protobuf_cannot_carry_is_refused(seconds, nanos):
    with pytest.raises(InvalidArgument, match="invalid timestamp"):
        state_convert.seconds(Timestamp(seconds=seconds, nanos=nanos))


def test_timestamps_at_the_ends_of_the_range_round_trip():
    for stamp in (Timestamp(seconds=-62135596800), Timestamp(seconds=253402300798, nanos=999999999)):
        assert state_convert.timestamp(state_convert.seconds(stamp)) is not None


def test_a_logs_since_time_out_of_range_is_invalid_argument():
    assert executor_convert.since_nanoseconds(ex.LogsRequest(id="x")) == 0
    assert executor_convert.since_nanoseconds(ex.LogsRequest(since=Timestamp(seconds=2))) == 2_000_000_000
    with pytest.raises(InvalidArgument, match="since"):
        executor_convert.since_nanoseconds(ex.LogsRequest(since=Timestamp(seconds=-(2**63))))


def test_cli_arguments_that_are_not_utf8_are_named():
    check_utf8(["run", "--name", "é…", "busybox"])
    argv = ["run", "-e", b"A=\xff\xfe".decode("utf-8", "surrogateescape"), "busybox"]
    with pytest.raises(CliError, match=r"argument 3 'A=\\xff\\xfe' is not valid UTF-8"):
        check_utf8(argv)
