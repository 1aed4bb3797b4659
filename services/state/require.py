"""Argument checks and record lookups shared by the state service's RPCs, failing with the domain errors they report."""

from __future__ import annotations

from services.common.errors import InvalidArgument, NotFound
from services.state.model import Container, Network
from services.state.store import Transaction


def require(value: str, what: str) -> None:
    if not value:
        raise InvalidArgument(f"{what} is empty: it is required")


def require_container(transaction: Transaction, container_id: str) -> Container:
    container = transaction.get_container(container_id)
    if container is None:
        raise NotFound(f"no such container: {container_id}")
    return container


def require_network(transaction: Transaction, name: str) -> Network:
    network = transaction.get_network(name)
    if network is None:
        raise NotFound(f"no such network: {name}")
    return network
