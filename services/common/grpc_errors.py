"""The one place where domain errors become gRPC status codes, as a server interceptor."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import grpc

from services.common import errors
from services.common.client import DOMAIN_ERROR_KEY

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[errors.MydockerError], grpc.StatusCode], ...] = (
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.NoSpace, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_for(error: errors.MydockerError) -> grpc.StatusCode:
    for error_class, code in STATUS_BY_ERROR:
        if isinstance(error, error_class):
            return code
    return grpc.StatusCode.UNKNOWN


def _aborted(context: grpc.ServicerContext) -> bool:
    """Whether the servicer already chose the status (context.abort raises a bare Exception after setting it)."""
    code = getattr(context, "code", None)
    return callable(code) and code() is not None


# The status message travels percent-encoded in a trailer, and clients drop trailers past 16 KiB
# (RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"): a message that quotes a huge
# argument keeps its start and its end (which says what to do), and at most this many bytes.
MAX_DETAILS_BYTES = 2000


def short_details(message: str, limit: int = MAX_DETAILS_BYTES) -> str:
    raw = message.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return message
    keep = limit // 2
    head = raw[:keep].decode("utf-8", "ignore")
    tail = raw[-keep:].decode("utf-8", "ignore")
    return f"{head}… ({len(raw) - 2 * keep} bytes cut) …{tail}"


def _abort_for(method: str, exc: BaseException, context: grpc.ServicerContext) -> None:
    """Abort the call with the status that `exc` stands for; context.abort raises."""
    if isinstance(exc, errors.MydockerError):
        # Marked, so a client tells "the registry is unreachable" from "this service is unreachable".
        context.set_trailing_metadata(((DOMAIN_ERROR_KEY, type(exc).__name__),))
        context.abort(status_for(exc), short_details(str(exc)))
    if isinstance(exc, NotImplementedError):
        # The generated base servicer raises this for RPCs a later issue implements.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
    log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, short_details(f"internal error in {method}: {type(exc).__name__}: {exc}"))


class _Undecodable:
    """A request whose bytes did not parse (bad wire format, a string that is not UTF-8).

    grpc answers INTERNAL when a deserializer raises; handing the handler this instead lets it
    answer INVALID_ARGUMENT: the client sent something wrong, the service is fine.
    """

    def __init__(self, error: Exception):
        self.error = error


def _lenient(deserializer: Callable | None) -> Callable | None:
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError and whatever else a parser raises: reported, not swallowed
            return _Undecodable(exc)

    return parse


def _check_decoded(method: str, request) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(f"{method}: the request is not a valid message ({request.error}): strings must be UTF-8")


def _checked_stream(method: str, requests: Iterator) -> Iterator:
    for request in requests:
        _check_decoded(method, request)
        yield request


def _decoded(method: str, request_or_iterator, streaming: bool):
    if streaming:
        return _checked_stream(method, request_or_iterator)
    _check_decoded(method, request_or_iterator)
    return request_or_iterator


def _wrap_unary_response(method: str, behavior: Callable, streaming_request: bool = False) -> Callable:
    def wrapped(request_or_iterator, context):
        try:
            return behavior(_decoded(method, request_or_iterator, streaming_request), context)
        except Exception as exc:  # noqa: BLE001 - every error is turned into a status, never swallowed
            if _aborted(context):
                raise  # the servicer's own context.abort(): its status stands
            _abort_for(method, exc, context)

    return wrapped


def _wrap_stream_response(method: str, behavior: Callable, streaming_request: bool = False) -> Callable:
    def wrapped(request_or_iterator, context) -> Iterator:
        try:
            yield from behavior(_decoded(method, request_or_iterator, streaming_request), context)
        except Exception as exc:  # noqa: BLE001 - every error is turned into a status, never swallowed
            if _aborted(context):
                raise  # the servicer's own context.abort(): its status stands
            _abort_for(method, exc, context)

    return wrapped


class DomainErrorInterceptor(grpc.ServerInterceptor):
    """Maps exceptions raised by mydocker servicers to status codes; other services pass through."""

    def __init__(self, package_prefix: str = "/mydocker."):
        self._prefix = package_prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        common = {
            "request_deserializer": _lenient(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary_response(method, handler.unary_unary), **common)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(method, handler.stream_unary, streaming_request=True), **common
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream_response(method, handler.unary_stream), **common)
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(method, handler.stream_stream, streaming_request=True), **common
        )
