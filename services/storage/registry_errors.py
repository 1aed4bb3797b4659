"""The registry client's own errors, and the few words that say why a connection failed."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

from services.common import errors


# The client's errors are the shared domain errors, so the gRPC map gives each its own status code.
Unauthenticated = errors.Unauthenticated
PermissionDenied = errors.PermissionDenied
Unreachable = errors.Unavailable


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, and so on (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def transport_reason(exc: BaseException) -> str:
    """A few words for why a connection failed, from the OS or TLS error under httpx's."""
    for inner in cause_chain(exc):
        if isinstance(inner, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {inner.verify_message}"
        if isinstance(inner, ssl.SSLError):
            reason = getattr(inner, "reason", None)  # OpenSSL's name for it, like WRONG_VERSION_NUMBER
            return reason.lower().replace("_", " ") if reason else inner.strerror or str(inner)
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        if isinstance(inner, socket.gaierror):
            return "unknown host name"
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror.lower()
    return str(exc) or type(exc).__name__
