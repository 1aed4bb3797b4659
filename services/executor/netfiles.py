"""A container's /etc/hosts, /etc/hostname and /etc/resolv.conf: pure text builders, and the files bind-mounted from its state dir."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from services.common import linux
from services.executor.plan import MountSpec

HOSTS = "hosts"
HOSTNAME = "hostname"
RESOLV_CONF = "resolv.conf"
FILE_MODE = 0o644
# systemd-resolved's list of the real upstream servers, used when the host's own resolv.conf names only
# its loopback stub (127.0.0.53), which answers nothing from a container's netns.
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"
# File in the state dir -> path inside the container.
TARGETS = ((HOSTS, "/etc/hosts"), (HOSTNAME, "/etc/hostname"), (RESOLV_CONF, "/etc/resolv.conf"))


def hosts_text(hostname: str, address: str = "") -> str:
    """localhost for IPv4 and IPv6, then the container's own name on its address when it has one."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if address:
        lines.append(f"{address}\t{hostname}")
    return "\n".join(lines) + "\n"


def hostname_text(hostname: str) -> str:
    return f"{hostname}\n"


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        # A scoped address such as fe80::1%eth0 is not loopback, and neither is anything unparsable.
        return False


def resolv_conf_text(host_text: str) -> str:
    """The host's resolv.conf without loopback nameservers, which answer nothing from another netns.

    search, options and every other line are kept. With no nameserver left there is none at all: the
    resolver then tries the container's own loopback and fails, which beats a public server nobody chose.
    """
    kept = []
    for line in host_text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and _is_loopback(fields[1]):
            continue
        kept.append(line)
    return "".join(f"{line}\n" for line in kept)


def _write(path: Path, text: str) -> None:
    # In place rather than by rename: once bind-mounted, the container sees this inode, so a later
    # rewrite (a new network, a renamed host) must keep it. fchmod, because the umask would trim the mode.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def has_nameserver(text: str) -> bool:
    return any(line.split()[:1] == ["nameserver"] for line in text.splitlines())


def container_resolv_conf(host_text: str, upstream_text: str | None) -> str:
    """The host's resolv.conf for a container; systemd-resolved's upstream list when the host's is only its stub."""
    text = resolv_conf_text(host_text)
    if not has_nameserver(text) and upstream_text is not None:
        return resolv_conf_text(upstream_text)
    return text


def _read_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None


def write_network_files(
    directory: Path,
    hostname: str,
    address: str = "",
    host_resolv_path: str = "/etc/resolv.conf",
    upstream_resolv_path: str = RESOLVED_UPSTREAM,
) -> tuple[MountSpec, ...]:
    """Write hosts, hostname and resolv.conf into `directory` (the container's state dir).

    Returns the bind mounts that put them at /etc/hosts, /etc/hostname and /etc/resolv.conf.
    """
    host_resolv = _read_or_none(host_resolv_path) or ""
    texts = {
        HOSTS: hosts_text(hostname, address),
        HOSTNAME: hostname_text(hostname),
        RESOLV_CONF: container_resolv_conf(host_resolv, _read_or_none(upstream_resolv_path)),
    }
    for name, text in texts.items():
        _write(directory / name, text)
    return tuple(
        MountSpec(str(directory / name), target, "bind", linux.MS_BIND, target_is_file=True) for name, target in TARGETS
    )
