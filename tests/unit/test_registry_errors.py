"""Unit tests of why-a-connection-failed wording: the OS or TLS error found under the HTTP library's."""

from __future__ import annotations

import socket
import ssl

import pytest

from services.common.errors import FailedPrecondition
from services.storage.registry_errors import PermissionDenied, Unauthenticated, Unreachable, transport_reason


def wrapped(inner: BaseException) -> Exception:
    """An outer error caused by `inner`, as httpx raises its ConnectError from httpcore's from the OS's."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("[Errno 111] outer text") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(("inner", "reason"), [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (socket.gaierror(-2, "Name or service not known"), "unknown host name"),
    (OSError(113, "No route to host"), "no route to host"),
    (ssl.SSLError(1, "[SSL] unknown"), "[SSL] unknown"),
])
def test_transport_reason(inner: BaseException, reason: str) -> None:
    assert transport_reason(wrapped(inner)) == reason


def test_transport_reason_names_openssl_reasons() -> None:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:992)")
    error.reason = "WRONG_VERSION_NUMBER"
    assert transport_reason(wrapped(error)) == "wrong version number"


def test_transport_reason_of_a_certificate_error_and_of_nothing_known() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "self-signed certificate"
    assert transport_reason(wrapped(error)) == "certificate verify failed: self-signed certificate"
    assert transport_reason(ValueError("odd")) == "odd"
    assert transport_reason(ValueError()) == "ValueError"


def test_error_classes_have_their_own_grpc_status() -> None:
    import grpc

    from services.common.grpc_errors import status_for

    assert status_for(Unauthenticated("x")) == grpc.StatusCode.UNAUTHENTICATED
    assert status_for(PermissionDenied("x")) == grpc.StatusCode.PERMISSION_DENIED
    assert status_for(Unreachable("x")) == grpc.StatusCode.UNAVAILABLE
    assert not issubclass(Unauthenticated, FailedPrecondition)
