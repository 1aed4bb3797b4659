"""Client side of the services: channels to the unix sockets, health probes, and one-line errors."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import Config, unix_target

HEALTH_TIMEOUT = 2.0


class ServiceUnreachable(Exception):
    """A service's socket is missing or nobody answers on it."""

    def __init__(self, service: str, socket: str, why: str):
        super().__init__(
            f"the {service} service is not reachable at {socket} ({why}): run scripts/up to start it"
        )
        self.service = service


def open_channel(config: Config, service: str) -> grpc.Channel:
    """A channel to a service's socket; it connects lazily, on the first call."""
    return grpc.insecure_channel(unix_target(config.socket_path(service)))


@dataclass(frozen=True)
class Health:
    service: str
    socket: str
    # "SERVING", "NOT_SERVING", or "UNREACHABLE".
    status: str
    detail: str = ""


def check_health(config: Config, service: str, timeout: float = HEALTH_TIMEOUT) -> Health:
    """Ask a service's grpc.health.v1 endpoint for its overall status; never raises for an absent service."""
    socket = config.socket_path(service)
    if not socket.exists():
        return Health(service, str(socket), "UNREACHABLE", "no socket")
    with open_channel(config, service) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as err:
            return Health(service, str(socket), "UNREACHABLE", f"{err.code().name}: {err.details()}")
    return Health(service, str(socket), health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


DOMAIN_ERROR_KEY = "mydocker-error"


def is_domain_error(err: grpc.RpcError) -> bool:
    """True when the service itself chose the status (a registry it could not reach), not the transport."""
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    return any(key == DOMAIN_ERROR_KEY for key, _ in trailing or ())


def describe_rpc_error(service: str, config: Config, err: grpc.RpcError) -> str:
    """One line for a failed call; an unreachable service names its socket and how to start it."""
    if err.code() == grpc.StatusCode.UNAVAILABLE and not is_domain_error(err):
        socket = config.socket_path(service)
        why = "nobody answers on it" if socket.exists() else "no socket"
        return str(ServiceUnreachable(service, str(socket), why))
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {service} service did not answer in time ({err.details()}): see {config.log_path(service)}"
    return err.details() or err.code().name
