"""Fault injection for the crash tests: MYDOCKER_FAULT makes a service SIGKILL itself at a chosen RPC."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc

from services.common.config import SERVICES

log = logging.getLogger(__name__)

ENV_VAR = "MYDOCKER_FAULT"
BEFORE = "before"
AFTER = "after"
POINTS = (BEFORE, AFTER)
# A step inside an RPC's work ("at-blobs-stored"), reached where the service calls step(): a kill
# between two writes of one RPC, not only around it.
STEP_PREFIX = "at-"
SYNTAX = "<service>.<Method>:<before|after|at-STEP>[:<n>], e.g. executor.CreateContainer:after"
_METHOD = re.compile(r"[A-Z][A-Za-z0-9]*")
_STEP = re.compile(r"at-[a-z][a-z-]*")
# Steps armed in this process (a service process serves one service): (method, step) -> faults.
_armed: dict[tuple[str, str], list[Fault]] = {}
_step_counts: dict[tuple[str, str], int] = {}
_step_lock = threading.Lock()


class FaultSpecError(ValueError):
    """MYDOCKER_FAULT cannot be honoured; the message names the variable and the entry at fault."""


@dataclass(frozen=True)
class Fault:
    """Kill `service` when the `call`-th call of `method` since its start arrives (before) or has run (after)."""

    service: str
    method: str
    point: str
    # 1 is the first call: a command that makes the same call twice (run --rm updates the status
    # three times) can be killed at each of them.
    call: int = 1

    def __str__(self) -> str:
        suffix = f":{self.call}" if self.call != 1 else ""
        return f"{self.service}.{self.method}:{self.point}{suffix}"


def _bad(text: str, entry: str, why: str) -> FaultSpecError:
    return FaultSpecError(f"{ENV_VAR}={text!r}: {why} in {entry!r}; expected {SYNTAX}")


def parse_entry(text: str, entry: str, services: tuple[str, ...] = SERVICES) -> Fault:
    """One `<service>.<Method>:<point>[:<n>]`; `text` is the whole variable, for the message."""
    target, _, rest = entry.partition(":")
    service, dot, method = target.partition(".")
    if not dot:
        raise _bad(text, entry, "no '.' between service and method")
    if service not in services:
        raise _bad(text, entry, f"unknown service {service!r} (choose from {', '.join(services)})")
    if not _METHOD.fullmatch(method):
        raise _bad(text, entry, f"{method!r} is not an RPC method name (CamelCase, as in the .proto)")
    point, _, call_text = rest.partition(":")
    if point not in POINTS and not _STEP.fullmatch(point):
        raise _bad(text, entry, f"unknown point {point!r} (choose from {', '.join(POINTS)} or at-STEP)")
    call = 1
    if call_text:
        if not call_text.isdigit() or int(call_text) < 1:
            raise _bad(text, entry, f"call number {call_text!r} is not a positive integer")
        call = int(call_text)
    return Fault(service, method, point, call)


def parse_faults(text: str, services: tuple[str, ...] = SERVICES) -> tuple[Fault, ...]:
    """Every fault of a MYDOCKER_FAULT value, in order; empty for an empty value. FaultSpecError for a bad one."""
    if not text.strip():
        return ()
    faults = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            raise _bad(text, raw, "empty entry")
        faults.append(parse_entry(text, entry, services))
    return tuple(faults)


def check_methods(faults: tuple[Fault, ...], full_name: str, streaming_response: Mapping[str, bool]) -> None:
    """Refuse a method the service lacks, and `after` on a streaming response (its reply is many messages).

    `streaming_response` maps each method of the service to whether its response is a stream.
    """
    for fault in faults:
        if fault.method not in streaming_response:
            known = ", ".join(sorted(streaming_response))
            raise FaultSpecError(f"{ENV_VAR}: {full_name} has no method {fault.method!r} (in {str(fault)!r}); it has {known}")
        if fault.point == AFTER and streaming_response[fault.method]:
            raise FaultSpecError(
                f"{ENV_VAR}: {str(fault)!r}: {fault.method} streams its response, so there is no single "
                f"moment after it ran and before it answered; use {fault.service}.{fault.method}:{BEFORE}"
            )


def streaming_responses(full_name: str) -> dict[str, bool]:
    """Method name -> whether its response streams, from the generated code's descriptors (already imported)."""
    from google.protobuf import descriptor_pool

    try:
        service = descriptor_pool.Default().FindServiceByName(full_name)
    except KeyError:
        raise FaultSpecError(f"{ENV_VAR}: no descriptor for service {full_name}: cannot check its methods") from None
    return {method.name: method.server_streaming for method in service.methods}


def step(method: str, name: str, kill: Callable[[Fault], None] | None = None) -> None:
    """Mark that `method`'s work reached step `name`: the process dies here if MYDOCKER_FAULT armed it.

    Costs one dict lookup when nothing is armed.
    """
    key = (method, STEP_PREFIX + name)
    if key not in _armed:
        return
    with _step_lock:
        _step_counts[key] = count = _step_counts.get(key, 0) + 1
    for fault in _armed[key]:
        if fault.call == count:
            (kill or kill_self)(fault)


def arm_steps(faults: tuple[Fault, ...]) -> None:
    """Arm the at-STEP faults of this process's service (the others are the interceptor's)."""
    for fault in faults:
        if fault.point.startswith(STEP_PREFIX):
            _armed.setdefault((fault.method, fault.point), []).append(fault)


def kill_self(fault: Fault) -> None:
    log.warning("%s: fault injected, SIGKILL to pid %d", fault, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)
    # Not reached: a SIGKILL sent to ourselves is delivered before kill() returns. Should it ever
    # not be, the servicer must still not run (before) nor answer (after).
    os._exit(137)


class FaultInterceptor(grpc.ServerInterceptor):
    """Kills the process at the faults of one service; counts matching calls from the server's start."""

    def __init__(self, full_name: str, faults: tuple[Fault, ...], kill: Callable[[Fault], None] = kill_self):
        self._by_method = {f"/{full_name}/{fault.method}": fault.method for fault in faults}
        self._faults = faults
        self._kill = kill
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        method = self._by_method.get(handler_call_details.method)
        if method is None:
            return continuation(handler_call_details)
        with self._lock:
            self._counts[method] = count = self._counts.get(method, 0) + 1
        due = [f for f in self._faults if f.method == method and f.call == count]
        for fault in due:
            if fault.point == BEFORE:
                self._kill(fault)
        handler = continuation(handler_call_details)
        after = next((f for f in due if f.point == AFTER), None)
        if after is None or handler is None:
            return handler
        return _kill_after(handler, after, self._kill)


def _kill_after(handler: grpc.RpcMethodHandler, fault: Fault, kill: Callable[[Fault], None]) -> grpc.RpcMethodHandler:
    """The handler, killing the process once the servicer returned or raised, before the reply goes out."""

    def wrap(behavior: Callable) -> Callable:
        def wrapped(request_or_iterator, context):
            try:
                return behavior(request_or_iterator, context)
            finally:
                kill(fault)

        return wrapped

    common = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **common)
    # check_methods refused `after` for streaming responses at start.
    raise FaultSpecError(f"{ENV_VAR}: {fault}: cannot kill after a streaming response")


def interceptor_for(service: str, full_name: str, env: Mapping[str, str] | None = None) -> FaultInterceptor | None:
    """The interceptor for `service` when MYDOCKER_FAULT names it, else None (no cost on any call).

    FaultSpecError for a bad value, even one that names only other services: a typo never goes unnoticed.
    """
    env = os.environ if env is None else env
    faults = tuple(f for f in parse_faults(env.get(ENV_VAR, "")) if f.service == service)
    if not faults:
        return None
    check_methods(faults, full_name, streaming_responses(full_name))
    arm_steps(faults)
    log.warning("%s=%s: this %s service will kill itself at %s", ENV_VAR, env[ENV_VAR], service, ", ".join(map(str, faults)))
    return FaultInterceptor(full_name, faults)
