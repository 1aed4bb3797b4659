"""Registry settings under ROOT: credentials (auth.json), insecure registries, per-host CAs; WWW-Authenticate parsing."""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import os
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.storage.fsutil import flocked, write_json_atomic

AUTH_FILE = "auth.json"
REGISTRIES_FILE = "registries.json"
CERTS_DIR = "certs.d"
DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# host, or host:port, or [ipv6]:port: what may name a registry (and a certs.d directory).
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def normalize_host(host: str) -> str:
    """The key a registry's settings are stored under: no scheme or path, lower case, Docker Hub's aliases as docker.io."""
    value = host.strip()
    for prefix in ("https://", "http://"):
        if value.lower().startswith(prefix):
            value = value[len(prefix):]
    # Docker writes Hub credentials as "https://index.docker.io/v1/": the path is not part of the host.
    value = value.split("/", 1)[0].lower()
    return DOCKER_HUB if value in _HUB_ALIASES else value


def checked_host(host: str) -> str:
    """normalize_host, refusing what could not be a registry (and could escape certs.d)."""
    value = normalize_host(host)
    if not _HOST_RE.match(value) or ".." in value:
        raise InvalidArgument(f"invalid registry host {host!r}: expected a name like registry.example.com:5000")
    return value


def split_host_port(host: str) -> tuple[str, int | None]:
    """("name", port or None) of "name[:port]" or "[ipv6][:port]"; brackets are removed."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


# --- credentials -------------------------------------------------------------------------------------------


def _read_auth_file(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {"auths": {}}
    except (ValueError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"credentials file {path} is not valid JSON ({exc}): fix or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise FailedPrecondition(f"credentials file {path} has no \"auths\" object: fix or remove it")
    data.setdefault("auths", {})
    return data


def _write_private_json(path: Path, data: dict) -> None:
    """Write JSON that only root may read: a 0600 temp file, fsynced, renamed over `path`."""
    write_json_atomic(path, data, mode=0o600)


def _lock_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def encode_auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def decode_auth(value: str) -> tuple[str, str] | None:
    """(user, password) from base64("user:password"), or None when it is not that."""
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and user else None


def load_credentials(path: Path, host: str) -> tuple[str, str] | None:
    """The (user, password) stored for `host` (any spelling of it), or None."""
    wanted = normalize_host(host)
    for key, entry in _read_auth_file(path)["auths"].items():
        if normalize_host(key) == wanted and isinstance(entry, dict) and isinstance(entry.get("auth"), str):
            pair = decode_auth(entry["auth"])
            if pair is None:
                raise FailedPrecondition(f"credentials for {wanted} in {path} are not base64 user:password: "
                                         f"run mydocker login {wanted} again")
            return pair
    return None


def store_credentials(path: Path, host: str, user: str, password: str) -> None:
    """Save (user, password) for `host`, replacing every other spelling of it; the file stays 0600."""
    key = checked_host(host)
    if not user or ":" in user:
        raise InvalidArgument(f"invalid user name {user!r} for {key}: it must be non-empty and without ':'")
    with flocked(_lock_for(path)):
        data = _read_auth_file(path)
        auths = {k: v for k, v in data["auths"].items() if normalize_host(k) != key}
        auths[key] = {"auth": encode_auth(user, password)}
        data["auths"] = auths
        _write_private_json(path, data)


def remove_credentials(path: Path, host: str) -> bool:
    """Forget `host`'s credentials; False when there were none."""
    key = normalize_host(host)
    with flocked(_lock_for(path)):
        data = _read_auth_file(path)
        auths = {k: v for k, v in data["auths"].items() if normalize_host(k) != key}
        if len(auths) == len(data["auths"]):
            return False
        data["auths"] = auths
        _write_private_json(path, data)
    return True


# --- transport: scheme and TLS ------------------------------------------------------------------------------


def insecure_entry(entry: str) -> str:
    """An insecure_registries entry as compared: a CIDR ("10.0.0.0/8") as is, a host normalized."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_network(entry.strip(), strict=False))
    return normalize_host(entry)


def load_insecure_registries(path: Path) -> frozenset[str]:
    """The hosts of `registries.json`'s "insecure_registries" (normalized); a missing file lists none."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return frozenset()
    except (ValueError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"{path} is not valid JSON ({exc}): fix or remove it") from None
    hosts = data.get("insecure_registries", []) if isinstance(data, dict) else None
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise FailedPrecondition(f"{path}: \"insecure_registries\" must be a list of \"host:port\" strings")
    return frozenset(insecure_entry(h) for h in hosts)


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1, with or without a port."""
    name, _port = split_host_port(normalize_host(host))
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _in_listed_network(host: str, listed: Iterable[str]) -> bool:
    """Whether `host` is an IP address inside a CIDR entry ("10.0.0.0/8"), as Docker's insecure-registries allow."""
    try:
        address = ipaddress.ip_address(split_host_port(host)[0])
    except ValueError:
        return False
    for entry in listed:
        with contextlib.suppress(ValueError):
            if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                return True
    return False


def scheme_for(host: str, insecure: Iterable[str]) -> str:
    """"http" for loopback hosts and those listed (exactly as host[:port], or by CIDR), else "https"."""
    key = normalize_host(host)
    listed = {insecure_entry(h) for h in insecure}
    if is_loopback_host(key) or key in listed or _in_listed_network(key, listed):
        return "http"
    return "https"


def endpoint_host(host: str) -> str:
    """Where a registry's API is served: Docker Hub's is registry-1.docker.io, everyone else's is the host."""
    key = normalize_host(host)
    return "registry-1.docker.io" if key == DOCKER_HUB else key


def ca_file_for(certs_dir: Path, host: str) -> Path | None:
    """certs.d/<host>/ca.crt when it exists (Docker's layout: the directory is named host or host:port)."""
    candidate = certs_dir / checked_host(host) / "ca.crt"
    return candidate if candidate.is_file() else None


def tls_context(ca_file: str | os.PathLike | None) -> ssl.SSLContext:
    """The system CA store, plus `ca_file`'s certificates when given; hostnames always checked."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=os.fspath(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise FailedPrecondition(f"cannot load the CA certificates in {ca_file}: {exc}") from None
    return context


@dataclass(frozen=True)
class RegistrySettings:
    """What a RegistryClient needs to reach one host, read from ROOT's files (host: the settings' key)."""

    host: str
    endpoint: str
    scheme: str
    credentials: tuple[str, str] | None
    ca_file: str | None


def registry_settings(root: Path, host: str) -> RegistrySettings:
    """`host`'s scheme, credentials and CA file from ROOT/auth.json, ROOT/registries.json and ROOT/certs.d."""
    key = checked_host(host)
    ca_file = ca_file_for(root / CERTS_DIR, key)
    # A CA given for the host says it speaks TLS, even where plain HTTP is the default (loopback, insecure).
    scheme = "https" if ca_file else scheme_for(key, load_insecure_registries(root / REGISTRIES_FILE))
    return RegistrySettings(
        host=key,
        endpoint=endpoint_host(key),
        scheme=scheme,
        credentials=load_credentials(root / AUTH_FILE, key),
        ca_file=os.fspath(ca_file) if ca_file else None,
    )


# --- WWW-Authenticate ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One auth challenge: its scheme in lower case, its parameters with lower-case names."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_SPACE_RE = re.compile(r"[ \t]*")
_BARE_VALUE_RE = re.compile(r"[^,\s]*")


def _quoted(header: str, pos: int) -> tuple[str, int]:
    """The value of the quoted-string starting at header[pos] == '"', and the position after it."""
    out = []
    pos += 1
    while pos < len(header):
        char = header[pos]
        if char == "\\" and pos + 1 < len(header):
            out.append(header[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    return "".join(out), pos  # unterminated: take the rest, as lenient clients do


def _param_at(header: str, pos: int) -> tuple[str, int] | None:
    """(name, position after '=') when an auth-param starts at `pos`, else None (a new challenge starts)."""
    name = _TOKEN_RE.match(header, pos)
    if not name:
        return None
    after = _SPACE_RE.match(header, name.end()).end()
    if after < len(header) and header[after] == "=":
        return name.group().lower(), _SPACE_RE.match(header, after + 1).end()
    return None


def _token68_at(header: str, pos: int) -> tuple[str, int] | None:
    """(token68, position after it) when the challenge at `pos` carries one ("Negotiate abc==") instead of params."""
    match = _TOKEN68_RE.match(header, pos)
    if not match:
        return None
    after = _SPACE_RE.match(header, match.end()).end()
    if after < len(header) and header[after] != ",":
        return None
    # "abc==" also reads as the param abc with a value starting "=": a padded token68 wins, as RFC 7235 says.
    if match.group().endswith("=") or _param_at(header, pos) is None:
        return match.group(), after
    return None


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Every challenge of a WWW-Authenticate value (RFC 7235): quoted values may hold commas and escapes.

    Several WWW-Authenticate headers are parsed the same once joined with ", ". Unparsable bits are skipped.
    """
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        while pos < len(header) and header[pos] in " \t,":
            pos += 1
        scheme = _TOKEN_RE.match(header, pos)
        if not scheme:
            pos += 1  # garbage: skip a character and look for the next challenge
            continue
        params: dict[str, str] = {}
        pos = _SPACE_RE.match(header, scheme.end()).end()
        token68 = _token68_at(header, pos)
        if token68 is not None:
            params["token68"], pos = token68
        while (found := _param_at(header, pos)) is not None:
            name, pos = found
            if pos < len(header) and header[pos] == '"':
                value, pos = _quoted(header, pos)
            else:
                match = _BARE_VALUE_RE.match(header, pos)
                value, pos = match.group(), match.end()
            params.setdefault(name, value)
            pos = _SPACE_RE.match(header, pos).end()
            if pos < len(header) and header[pos] == ",":
                pos = _SPACE_RE.match(header, pos + 1).end()
                while pos < len(header) and header[pos] == ",":  # empty list elements are allowed
                    pos = _SPACE_RE.match(header, pos + 1).end()
        challenges.append(Challenge(scheme.group().lower(), params))
    return challenges
