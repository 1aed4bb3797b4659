"""Pure parsers for run's option values: sizes, CPU shares, volumes, environment entries and port mappings."""

from __future__ import annotations

import re
from dataclasses import dataclass

SIZE_PATTERN = re.compile(r"(\d+(?:\.\d+)?)([bkmg]?)b?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
NANO = 1_000_000_000


class BadValue(ValueError):
    """An option value that cannot be parsed; the message is one line for the user."""


def parse_size(text: str, option: str = "--memory") -> int:
    """'64m' -> 67108864, '1g', '512k', or plain bytes; units are powers of 1024 as in docker."""
    match = SIZE_PATTERN.fullmatch(text.strip())
    if not match:
        raise BadValue(f'invalid {option} value "{text}": use bytes or a number with k, m or g (e.g. 64m, 1g)')
    number, unit = match.groups()
    value = int(float(number) * SIZE_UNITS[unit.lower()])
    if value <= 0:
        raise BadValue(f'invalid {option} value "{text}": it must be more than 0')
    return value


def percent_to_nano_cpus(text: str) -> int:
    """The seed's `-cpu 20`: a percent of one CPU (20 -> 0.2 CPU), as nano-CPUs."""
    try:
        percent = float(text)
    except ValueError:
        raise BadValue(f'invalid --cpu value "{text}": use a percent of one CPU, e.g. 20 or 150') from None
    if percent <= 0:
        raise BadValue(f'invalid --cpu value "{text}": it must be more than 0')
    return int(percent * NANO / 100)


def cpus_to_nano_cpus(text: str) -> int:
    """docker's `--cpus 1.5`: a number of CPUs, as nano-CPUs."""
    try:
        cpus = float(text)
    except ValueError:
        raise BadValue(f'invalid --cpus value "{text}": use a number of CPUs, e.g. 0.5 or 1.5') from None
    if cpus <= 0:
        raise BadValue(f'invalid --cpus value "{text}": it must be more than 0')
    return int(cpus * NANO)


@dataclass(frozen=True)
class VolumeSpec:
    host_path: str
    container_path: str
    read_only: bool


def parse_volume(text: str) -> VolumeSpec:
    """`host:container[:ro|rw]` with absolute paths."""
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw"):
        raise BadValue(f'invalid volume "{text}": use -v /host/dir:/container/dir[:ro]')
    host, container = parts
    if not host.startswith("/") or not container.startswith("/"):
        raise BadValue(f'invalid volume "{text}": both paths must be absolute')
    return VolumeSpec(host, container, mode == "ro")


def parse_env(text: str, lookup: dict[str, str]) -> str:
    """`-e KEY=VALUE`, or `-e KEY` to pass the CLI's own value of KEY, as docker does."""
    key, sep, _ = text.partition("=")
    if not key:
        raise BadValue(f'invalid environment entry "{text}": use -e KEY=VALUE')
    if sep:
        return text
    if key not in lookup:
        raise BadValue(f'environment variable "{key}" is not set here: use -e {key}=VALUE')
    return f"{key}={lookup[key]}"


@dataclass(frozen=True)
class PortSpec:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str


PORT_PATTERN = re.compile(r"(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d+):(\d+)(?:/([a-z]+))?")


def parse_port(text: str) -> PortSpec:
    """docker's `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, e.g. 8080:80 or 8053:53/udp."""
    usage = f'invalid port mapping "{text}": use -p HOST_PORT:CONTAINER_PORT[/tcp|/udp], e.g. -p 8080:80'
    match = PORT_PATTERN.fullmatch(text.strip())
    if not match:
        raise BadValue(usage)
    host_ip, host_port, container_port, protocol = match.groups()
    protocol = protocol or "tcp"
    if protocol not in ("tcp", "udp"):
        raise BadValue(f'invalid port mapping "{text}": the protocol must be tcp or udp')
    if host_ip and any(int(part) > 255 for part in host_ip.split(".")):
        raise BadValue(f'invalid port mapping "{text}": {host_ip} is not an IPv4 address')
    for port in (host_port, container_port):
        if not 1 <= int(port) <= 65535:
            raise BadValue(f'invalid port mapping "{text}": ports must be from 1 to 65535')
    return PortSpec(host_ip or "", int(host_port), int(container_port), protocol)


def free_host_port(protocol: str) -> int:
    """A port the kernel says is free now, from its ephemeral range, as docker's -P picks one."""
    import socket

    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]
