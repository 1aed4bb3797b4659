"""Client side of the services: channels to the unix sockets, health probes, and one-line errors."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import Config, unix_target
from services.common.limits import MAX_MESSAGE_BYTES, MAX_RESPONSE_BYTES

HEALTH_TIMEOUT = 2.0


class ServiceUnreachable(Exception):
    """A service's socket is missing or nobody answers on it."""

    def __init__(self, service: str, socket: str, why: str):
        super().__init__(f"the {service} service is not running ({why} at {socket}): run scripts/up")
        self.service = service


def unreachable_message(service: str, config: Config) -> str:
    """Why nobody answers on a service's socket, and what to do, in one line.

    A live service whose socket was deleted binds a new one within seconds (services/common/runfiles.py):
    then `scripts/up` would only wait for it, so the line says so instead.
    """
    from services.common.ctl import service_pid

    socket = config.socket_path(service)
    present = socket.exists()
    pid = service_pid(config, service)
    if pid is None:
        return str(ServiceUnreachable(service, str(socket), "nobody answers on the socket" if present else "no socket"))
    if present:
        return f"the {service} service (pid {pid}) does not answer on {socket}: see {config.log_path(service)}"
    return (
        f"the {service} service (pid {pid}) has no socket at {socket}: it binds a new one within seconds; "
        f"if it does not, see {config.log_path(service)}"
    )


def open_channel(config: Config, service: str) -> grpc.Channel:
    """A channel to a service's socket; it connects lazily, on the first call."""
    return grpc.insecure_channel(
        unix_target(config.socket_path(service)), options=(("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),)
    )


def start_connecting(channel: grpc.Channel) -> None:
    """Have an idle channel start connecting now, without waiting and without a thread.

    grpc's public way (subscribe with try_to_connect) starts a polling thread per channel; the
    core channel's own check does the same in one call. A grpcio without it leaves the channel
    to connect on its first call, as it would anyway (tests/unit/test_common.py notices).
    """
    core = getattr(channel, "_channel", None)
    check = getattr(core, "check_connectivity_state", None)
    if check is not None:
        check(True)


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
        return unreachable_message(service, config)
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not is_domain_error(err):
        # grpc's own refusal of an oversized message: its details read "Received message larger than max (...)".
        return (
            f"a message to or from the {service} service is over gRPC's size limit ({err.details()}; requests may "
            f"take {MAX_MESSAGE_BYTES} bytes, replies {MAX_RESPONSE_BYTES}): give fewer or shorter arguments, "
            "environment entries or labels"
        )
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the {service} service did not answer in time ({err.details()}): see {config.log_path(service)}"
    return err.details() or err.code().name
