"""Kernel interface names derived from network names and container ids: at most 15 bytes, never colliding."""

from __future__ import annotations

import hashlib
import re

from services.common.errors import InvalidArgument

# IFNAMSIZ is 16 bytes with the terminating NUL.
IFNAME_MAX = 15
NETWORK_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
CONTAINER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# A literal and a hash get different prefixes, so a short name can never spell some long name's hash.
BRIDGE_PREFIX = "mdb-"
BRIDGE_HASH_PREFIX = "mdh-"
VETH_PREFIX = "mdv"
VETH_HASH_PREFIX = "mdw"
# Every link mydocker creates on the host starts with one of these: what reconcile may look at.
PREFIXES = (BRIDGE_PREFIX, BRIDGE_HASH_PREFIX, VETH_PREFIX, VETH_HASH_PREFIX)


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _derive(value: str, prefix: str, hash_prefix: str) -> str:
    room = IFNAME_MAX - len(prefix)
    if len(value) <= room:
        return prefix + value
    return hash_prefix + _digest(value, IFNAME_MAX - len(hash_prefix))


def bridge_name(network: str, instance: str = "") -> str:
    """The bridge of network `network`: `mdb-NAME` for names up to 11 characters, else `mdh-` and a hash.

    Another instance than the default one (`Config.instance`) always gets `mdh-` and a hash of
    instance and name, so two instances' networks of the same name never share a bridge.
    """
    if not NETWORK_PATTERN.fullmatch(network or ""):
        raise InvalidArgument(f'invalid network name "{network}": use 1-64 letters, digits, "_", "." or "-"')
    if instance:
        return BRIDGE_HASH_PREFIX + _digest(f"{instance}/{network}", IFNAME_MAX - len(BRIDGE_HASH_PREFIX))
    return _derive(network, BRIDGE_PREFIX, BRIDGE_HASH_PREFIX)


def link_alias(instance: str) -> str:
    """The alias (IFLA_IFALIAS) of every link an instance makes: how it tells its links from another instance's."""
    return f"mydocker {instance or 'default'}"


def veth_name(container_id: str) -> str:
    """The host end of container `container_id`'s veth pair: `mdvID` for ids up to 12 characters, else `mdw` and a hash."""
    if not CONTAINER_ID_PATTERN.fullmatch(container_id or ""):
        raise InvalidArgument(f'invalid container id "{container_id}": use 1-64 letters, digits, "_" or "-"')
    return _derive(container_id, VETH_PREFIX, VETH_HASH_PREFIX)
