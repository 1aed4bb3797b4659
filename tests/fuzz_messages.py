"""Hypothesis strategies that build any protobuf request from its descriptor, and every RPC of every service."""

from __future__ import annotations

import collections
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from protos.executor.v1 import executor_pb2
from protos.state.v1 import state_pb2
from protos.storage.v1 import storage_pb2

# Short name of each service -> its generated module: a new RPC in a .proto is fuzzed without an edit here.
SERVICE_MODULES = {"state": state_pb2, "storage": storage_pb2, "executor": executor_pb2}

F = FieldDescriptor
INT_BOUNDS = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
# Deeper than this, a message field is left unset: recursion ends, and requests stay small.
MAX_DEPTH = 3
MAX_REPEATED = 4

# Values that broke parsers before, in other programs: empty, dots, separators, path tricks,
# unicode that is not ASCII (names like 'é…'), right-to-left marks, a BOM, emoji, control
# characters, a NUL, and strings at and past the limits of names and ids.
ODD_TEXT = (
    "", " ", ".", "..", "/", "//", "-", "_", ":", "@", "=", "A=", "=B", "a=b", "../..", "/../../etc/passwd",
    "é…", "名前", "\u202eabc", "\ufeff", "\U0001f600", "\t", "\n", "\r\n", "\x7f", "a\x00b", "\x00",
    "%s%n", "${HOME}", "*", "?", "[", "0", "-1", "1e309", "NaN", "0x10", "9" * 30,
    "a" * 64, "a" * 65, "a" * 129, "a" * 256, "A" * 4096, "0" * 10, "0" * 64,
    "sha256:" + "0" * 64, "sha256:" + "f" * 63, "busybox", "busybox:latest", "localhost/a:b",
    "10.0.0.0/8", "0.0.0.0/0", "10.20.0.1", "255.255.255.255", "::1", "SIGKILL", "SIGTERM", "99",
)
ID_ALPHABET = string.ascii_letters + string.digits + "_-."
# Characters of every category but surrogates, which no UTF-8 string can hold.
ANY_CHARACTER = st.characters(blacklist_categories=("Cs",))


def text_strategy() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD_TEXT),
        st.text(ANY_CHARACTER, max_size=24),
        st.text(ID_ALPHABET, min_size=1, max_size=70),
        # Long strings, up to a few hundred KiB: past every name limit, and past execve's per-string limit.
        st.tuples(st.sampled_from("a/é\x00"), st.integers(1, 300_000)).map(lambda pair: pair[0] * pair[1]),
    )


def bytes_strategy() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"", b"\x00" * 1024, b"\x1f\x8b\x08\x00", b"\x28\xb5\x2f\xfd", b"ustar\x00", b"\xff" * 512]),
        st.integers(1, 200_000).map(lambda size: b"\x00" * size),
    )


EDGE_INTS = (0, 1, -1, 10, 255, 65535, 65536, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)


def int_strategy(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers of the field's range, its ends and the usual edges more often than by chance."""
    edges = sorted({value for value in (low, high, *EDGE_INTS) if low <= value <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


# Field overrides: "package.Message.field" -> strategy, for the fields that name host resources.
Overrides = dict[str, st.SearchStrategy]


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    kind = field.type
    if kind in INT_BOUNDS:
        return int_strategy(*INT_BOUNDS[kind])
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_STRING:
        return text_strategy()
    if kind == F.TYPE_BYTES:
        return bytes_strategy()
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if kind == F.TYPE_DOUBLE else 32)
    if kind == F.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        # proto3 enums are open: a number the server does not know arrives as is.
        return st.one_of(st.sampled_from(known), int_strategy(-(2**31), 2**31 - 1))
    raise TypeError(f"no strategy for field type {kind} of {field.full_name}")


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _single(field: FieldDescriptor, overrides: Overrides, depth: int) -> st.SearchStrategy:
    if field.full_name in overrides:
        return overrides[field.full_name]
    if field.message_type is not None:
        return message_strategy(field.message_type, overrides, depth + 1)
    return _scalar(field)


def _field_value(field: FieldDescriptor, overrides: Overrides, depth: int) -> st.SearchStrategy:
    if _is_map(field):
        key = field.message_type.fields_by_name["key"]
        value = field.message_type.fields_by_name["value"]
        return st.dictionaries(_single(key, overrides, depth), _single(value, overrides, depth), max_size=MAX_REPEATED)
    if field.is_repeated:
        return st.lists(_single(field, overrides, depth), max_size=MAX_REPEATED)
    return _single(field, overrides, depth)


def _set(message: Message, field: FieldDescriptor, value) -> None:
    if _is_map(field):
        target = getattr(message, field.name)
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.message_type is not None:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def message_strategy(descriptor: Descriptor, overrides: Overrides | None = None, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type: any subset of its fields set, at most one member of each oneof."""
    overrides = overrides or {}
    cls = message_factory.GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(cls())
    plain = {f.name: _field_value(f, overrides, depth) for f in descriptor.fields if f.containing_oneof is None}
    oneofs = [
        st.one_of(st.just({}), *[_field_value(f, overrides, depth).map(lambda v, n=f.name: {n: v}) for f in oneof.fields])
        for oneof in descriptor.oneofs
    ]

    def build(parts) -> Message:
        values = dict(parts[0])
        for chosen in parts[1:]:
            values.update(chosen)
        message = cls()
        for name, value in values.items():
            _set(message, descriptor.fields_by_name[name], value)
        return message

    return st.tuples(st.fixed_dictionaries({}, optional=plain), *oneofs).map(build)


@dataclass(frozen=True)
class Rpc:
    """One method of one service, enough to call it through a generic channel."""

    service: str
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return f"{self.method.containing_service.name}/{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def all_rpcs(services: tuple[str, ...] = tuple(SERVICE_MODULES)) -> list[Rpc]:
    """Every RPC of the named services, from the generated descriptors, in .proto order."""
    found = []
    for service in services:
        for descriptor in SERVICE_MODULES[service].DESCRIPTOR.services_by_name.values():
            found.extend(Rpc(service, method) for method in descriptor.methods)
    return found


def mutation_strategy(base: Message, overrides: Overrides | None = None) -> st.SearchStrategy[Message]:
    """Copies of a valid `base` with any subset of its fields replaced by generated values: deep paths, not just validation."""
    overrides = overrides or {}
    descriptor = base.DESCRIPTOR
    fields = {f.name: _field_value(f, overrides, 1) for f in descriptor.fields}

    def build(values) -> Message:
        message = type(base)()
        message.CopyFrom(base)
        for name, value in values.items():
            message.ClearField(name)
            _set(message, descriptor.fields_by_name[name], value)
        return message

    # One or two fields at a time: the rest stays valid, so the call gets past validation.
    chosen = st.lists(st.sampled_from(sorted(fields)), max_size=2, unique=True)
    return chosen.flatmap(lambda names: st.fixed_dictionaries({name: fields[name] for name in names})).map(build)


def _mutated_stream(seed: list[Message], overrides: Overrides | None) -> st.SearchStrategy[list[Message]]:
    return mutation_strategy(seed[0], overrides).map(lambda first: [first, *seed[1:]])


def request_strategy(rpc: Rpc, overrides: Overrides | None = None, seeds: list | tuple = ()) -> st.SearchStrategy:
    """One request, or for a client-streaming RPC a list of 0-3 (the first one generated like any other).

    `seeds` are valid requests (lists for a client stream): half the cases are mutations of one of them.
    """
    single = message_strategy(rpc.method.input_type, overrides)
    generated = st.lists(single, max_size=3) if rpc.method.client_streaming else single
    if not seeds:
        return generated
    mutate = _mutated_stream if rpc.method.client_streaming else mutation_strategy
    mutated = st.one_of(*[mutate(seed, overrides) for seed in seeds])
    return st.one_of(generated, mutated)


def call(channel, rpc: Rpc, request, timeout: float, max_responses: int = 50):
    """Call `rpc` with `request` (a list for a client stream); returns the responses read (at most `max_responses`).

    Raises grpc.RpcError as the stub would.
    """
    serialize = lambda message: message.SerializeToString()  # noqa: E731
    deserialize = rpc.response_class.FromString
    kind = ("stream" if rpc.method.client_streaming else "unary") + "_" + ("stream" if rpc.method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(rpc.path, request_serializer=serialize, response_deserializer=deserialize)
    argument = iter(request) if rpc.method.client_streaming else request
    if not rpc.method.server_streaming:
        return [callable_(argument, timeout=timeout)]
    responses = []
    stream = callable_(argument, timeout=timeout)
    try:
        for response in stream:
            responses.append(response)
            if len(responses) >= max_responses:
                break
    finally:
        stream.cancel()
    return responses


def call_raw(channel, rpc: Rpc, payloads: list[bytes], timeout: float) -> None:
    """Send raw bytes as the request(s) of `rpc`, whatever they parse to; raises grpc.RpcError."""
    kind = ("stream" if rpc.method.client_streaming else "unary") + "_" + ("stream" if rpc.method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(rpc.path, request_serializer=lambda data: data, response_deserializer=lambda data: data)
    argument = iter(payloads) if rpc.method.client_streaming else payloads[0]
    if not rpc.method.server_streaming:
        callable_(argument, timeout=timeout)
        return
    stream = callable_(argument, timeout=timeout)
    try:
        for _ in zip(range(50), stream):
            pass
    finally:
        stream.cancel()


class CaseCounter:
    """Generated cases per RPC and the status codes they got, for the terminal summary."""

    def __init__(self) -> None:
        self.cases: collections.Counter[str] = collections.Counter()
        self.codes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def note(self, rpc_name: str, code: str) -> None:
        self.cases[rpc_name] += 1
        self.codes[rpc_name][code] += 1

    def report(self) -> Iterator[str]:
        if not self.cases:
            return
        yield f"{'RPC':<42} {'cases':>6}  status codes"
        per_service: collections.Counter[str] = collections.Counter()
        for name in sorted(self.cases):
            per_service[name.split("/")[0]] += self.cases[name]
            codes = ", ".join(f"{code} {count}" for code, count in self.codes[name].most_common())
            yield f"{name:<42} {self.cases[name]:>6}  {codes}"
        for service, total in sorted(per_service.items()):
            yield f"{service + ' total':<42} {total:>6}"


COUNTER = CaseCounter()


def report_lines() -> list[str]:
    return list(COUNTER.report())


Sanitizer = Callable[[Message], None]
