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


def _abort_for(method: str, exc: BaseException, context: grpc.ServicerContext) -> None:
    """Abort the call with the status that `exc` stands for; context.abort raises."""
    if isinstance(exc, errors.MydockerError):
        # Marked, so a client tells "the registry is unreachable" from "this service is unreachable".
        context.set_trailing_metadata(((DOMAIN_ERROR_KEY, type(exc).__name__),))
        context.abort(status_for(exc), str(exc))
    if isinstance(exc, NotImplementedError):
        # The generated base servicer raises this for RPCs a later issue implements.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
    log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}: {exc}")


def _wrap_unary_response(method: str, behavior: Callable) -> Callable:
    def wrapped(request_or_iterator, context):
        try:
            return behavior(request_or_iterator, context)
        except Exception as exc:  # noqa: BLE001 - every error is turned into a status, never swallowed
            if _aborted(context):
                raise  # the servicer's own context.abort(): its status stands
            _abort_for(method, exc, context)

    return wrapped


def _wrap_stream_response(method: str, behavior: Callable) -> Callable:
    def wrapped(request_or_iterator, context) -> Iterator:
        try:
            yield from behavior(request_or_iterator, context)
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
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary_response(method, handler.unary_unary), **common)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary_response(method, handler.stream_unary), **common)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream_response(method, handler.unary_stream), **common)
        return grpc.stream_stream_rpc_method_handler(_wrap_stream_response(method, handler.stream_stream), **common)
