"""MYDOCKER_FAULT: parsing, the checks against a service's methods, and when the interceptor kills."""

from collections import namedtuple

import grpc
import pytest

from services.common import faults
from services.common.faults import AFTER, BEFORE, Fault, FaultInterceptor, FaultSpecError, parse_faults

EXECUTOR = "mydocker.executor.v1.ExecutorService"
Details = namedtuple("Details", "method invocation_metadata")


class Killed(Exception):
    """Stands for the SIGKILL: stops the call where the real one would end the process."""


def test_parse_one_and_several_entries():
    assert parse_faults("executor.CreateContainer:after") == (Fault("executor", "CreateContainer", AFTER),)
    assert parse_faults(" state.CreateContainer:before , storage.PrepareRootfs:after:3 ") == (
        Fault("state", "CreateContainer", BEFORE),
        Fault("storage", "PrepareRootfs", AFTER, 3),
    )


def test_unset_or_blank_means_no_fault():
    assert parse_faults("") == ()
    assert parse_faults("   ") == ()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("executor", "no '.'"),
        ("executor.CreateContainer", "unknown point ''"),
        ("executor.CreateContainer:during", "unknown point 'during'"),
        ("network.CreateContainer:before", "unknown service 'network'"),
        ("executor.createContainer:before", "not an RPC method name"),
        ("executor.:before", "not an RPC method name"),
        ("executor.CreateContainer:before:0", "not a positive integer"),
        ("executor.CreateContainer:before:x", "not a positive integer"),
        ("executor.CreateContainer:before,", "empty entry"),
        ("state.GetInfo:before,,state.GetInfo:after", "empty entry"),
    ],
)
def test_a_bad_spec_is_an_error_naming_the_variable_and_the_entry(text, why):
    with pytest.raises(FaultSpecError, match=why) as raised:
        parse_faults(text)
    assert str(raised.value).startswith("MYDOCKER_FAULT=")
    assert "expected <service>.<Method>:<before|after|at-STEP>" in str(raised.value)


def test_str_round_trips():
    for text in ("executor.CreateContainer:after", "state.UpdateContainerStatus:before:2"):
        assert str(parse_faults(text)[0]) == text


def test_unknown_method_and_after_on_a_stream_are_refused():
    methods = {"CreateContainer": False, "Attach": True}
    faults.check_methods((Fault("executor", "CreateContainer", AFTER), Fault("executor", "Attach", BEFORE)), EXECUTOR, methods)
    with pytest.raises(FaultSpecError, match="MYDOCKER_FAULT: .* has no method 'Nope'"):
        faults.check_methods((Fault("executor", "Nope", BEFORE),), EXECUTOR, methods)
    with pytest.raises(FaultSpecError, match="MYDOCKER_FAULT: .*Attach streams its response.*executor.Attach:before"):
        faults.check_methods((Fault("executor", "Attach", AFTER),), EXECUTOR, methods)


def test_interceptor_only_for_the_service_named():
    import protos.executor.v1.executor_pb2  # noqa: F401 - registers the descriptors the check reads

    assert faults.interceptor_for("executor", EXECUTOR, {}) is None
    assert faults.interceptor_for("executor", EXECUTOR, {"MYDOCKER_FAULT": "state.GetInfo:before"}) is None
    assert faults.interceptor_for("executor", EXECUTOR, {"MYDOCKER_FAULT": "executor.GetInfo:before"}) is not None
    # Real descriptors: Exec and Logs stream their responses.
    with pytest.raises(FaultSpecError, match="Logs streams"):
        faults.interceptor_for("executor", EXECUTOR, {"MYDOCKER_FAULT": "executor.Logs:after"})
    # A typo for another service is still an error here: it must not silently test nothing.
    with pytest.raises(FaultSpecError, match="unknown point"):
        faults.interceptor_for("executor", EXECUTOR, {"MYDOCKER_FAULT": "state.GetInfo:bfore"})


class Recorder:
    """A servicer method and a kill switch that log, in order, what happened."""

    def __init__(self, fail: bool = False):
        self.events: list[str] = []
        self.fail = fail

    def behavior(self, request, context):
        self.events.append(f"ran {request}")
        if self.fail:
            raise RuntimeError("servicer failed")
        return f"reply {request}"

    def kill(self, fault: Fault) -> None:
        self.events.append(f"killed at {fault}")
        raise Killed()


def _intercept(interceptor: FaultInterceptor, recorder: Recorder, method: str):
    handler = grpc.unary_unary_rpc_method_handler(recorder.behavior)
    return interceptor.intercept_service(lambda details: handler, Details(f"/{EXECUTOR}/{method}", ()))


def test_before_kills_as_the_call_arrives_and_the_servicer_never_runs():
    recorder = Recorder()
    interceptor = FaultInterceptor(EXECUTOR, (Fault("executor", "CreateContainer", BEFORE),), kill=recorder.kill)
    with pytest.raises(Killed):
        _intercept(interceptor, recorder, "CreateContainer")
    assert recorder.events == ["killed at executor.CreateContainer:before"]


def test_after_runs_the_servicer_then_kills_before_the_reply():
    recorder = Recorder()
    interceptor = FaultInterceptor(EXECUTOR, (Fault("executor", "CreateContainer", AFTER),), kill=recorder.kill)
    handler = _intercept(interceptor, recorder, "CreateContainer")
    with pytest.raises(Killed):
        handler.unary_unary("r1", None)
    assert recorder.events == ["ran r1", "killed at executor.CreateContainer:after"]


def test_after_kills_even_when_the_servicer_raises():
    recorder = Recorder(fail=True)
    interceptor = FaultInterceptor(EXECUTOR, (Fault("executor", "CreateContainer", AFTER),), kill=recorder.kill)
    with pytest.raises(Killed):
        _intercept(interceptor, recorder, "CreateContainer").unary_unary("r1", None)
    assert recorder.events == ["ran r1", "killed at executor.CreateContainer:after"]


def test_the_nth_call_kills_and_other_methods_pass_through_untouched():
    recorder = Recorder()
    interceptor = FaultInterceptor(EXECUTOR, (Fault("executor", "KillContainer", BEFORE, 2),), kill=recorder.kill)
    handler = grpc.unary_unary_rpc_method_handler(recorder.behavior)
    other = interceptor.intercept_service(lambda details: handler, Details(f"/{EXECUTOR}/WaitContainer", ()))
    assert other is handler
    assert _intercept(interceptor, recorder, "KillContainer").unary_unary("first", None) == "reply first"
    with pytest.raises(Killed):
        _intercept(interceptor, recorder, "KillContainer")
    assert recorder.events == ["ran first", "killed at executor.KillContainer:before:2"]


def test_health_and_other_services_are_never_matched():
    recorder = Recorder()
    interceptor = FaultInterceptor(EXECUTOR, (Fault("executor", "Check", BEFORE),), kill=recorder.kill)
    handler = grpc.unary_unary_rpc_method_handler(recorder.behavior)
    assert interceptor.intercept_service(lambda details: handler, Details("/grpc.health.v1.Health/Check", ())) is handler
    assert recorder.events == []


def test_a_step_fault_kills_at_its_call_of_the_step_only():
    from services.common import faults

    (fault,) = faults.parse_faults("storage.LoadImage:at-stored:2")
    assert (fault.method, fault.point, fault.call) == ("LoadImage", "at-stored", 2)
    killed = []
    faults.arm_steps((fault,))
    try:
        faults.step("LoadImage", "unpacked", kill=killed.append)
        faults.step("LoadImage", "stored", kill=killed.append)
        assert killed == []
        faults.step("LoadImage", "stored", kill=killed.append)
        assert killed == [fault]
    finally:
        faults._armed.clear()
        faults._step_counts.clear()


@pytest.mark.parametrize("point", ["at-", "at-Stored", "at-1", "atstored"])
def test_bad_step_names_are_refused(point):
    from services.common import faults

    with pytest.raises(faults.FaultSpecError, match="unknown point"):
        faults.parse_faults(f"storage.LoadImage:{point}")
