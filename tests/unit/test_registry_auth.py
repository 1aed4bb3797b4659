"""Unit tests of registry settings: credentials file, insecure registries, CA files, WWW-Authenticate parsing."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.storage.registry_auth import (
    Challenge,
    ca_file_for,
    checked_host,
    decode_auth,
    endpoint_host,
    is_loopback_host,
    load_credentials,
    load_insecure_registries,
    normalize_host,
    parse_www_authenticate,
    registry_settings,
    remove_credentials,
    scheme_for,
    split_host_port,
    store_credentials,
    tls_context,
)


@pytest.mark.parametrize(("given", "key"), [
    ("docker.io", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("https://index.docker.io/v1/", "docker.io"),
    ("https://Registry.Example.com:5000", "registry.example.com:5000"),
    ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
    ("  localhost:5000 ", "localhost:5000"),
])
def test_normalize_host(given: str, key: str) -> None:
    assert normalize_host(given) == key


@pytest.mark.parametrize("bad", ["", "a b", "../etc", "host:port", "-host", "ho..st", "[zz]:1"])
def test_checked_host_refuses_what_is_not_a_host(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid registry host"):
        checked_host(bad)


@pytest.mark.parametrize(("host", "parts"), [
    ("example.com", ("example.com", None)),
    ("example.com:443", ("example.com", 443)),
    ("[::1]:5000", ("::1", 5000)),
    ("[::1]", ("::1", None)),
    ("::1", ("::1", None)),
])
def test_split_host_port(host: str, parts: tuple[str, int | None]) -> None:
    assert split_host_port(host) == parts


def test_credentials_round_trip_private_file_and_aliases(tmp_path: Path) -> None:
    path = tmp_path / "root" / "auth.json"
    assert load_credentials(path, "docker.io") is None
    store_credentials(path, "https://index.docker.io/v1/", "alice", "p:ss wörd")
    store_credentials(path, "127.0.0.1:5000", "bob", "secret")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_credentials(path, "registry-1.docker.io") == ("alice", "p:ss wörd")
    assert load_credentials(path, "http://127.0.0.1:5000") == ("bob", "secret")
    data = json.loads(path.read_text())
    assert set(data["auths"]) == {"docker.io", "127.0.0.1:5000"}
    assert base64.b64decode(data["auths"]["127.0.0.1:5000"]["auth"]) == b"bob:secret"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".auth.json.tmp")] == []


def test_store_replaces_other_spellings_and_keeps_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {"https://index.docker.io/v1/": {"auth": "eDp5"}}, "credsStore": "x"}))
    store_credentials(path, "docker.io", "carol", "pw")
    data = json.loads(path.read_text())
    assert data["credsStore"] == "x"
    assert list(data["auths"]) == ["docker.io"]
    assert load_credentials(path, "index.docker.io") == ("carol", "pw")


def test_remove_credentials(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    store_credentials(path, "localhost:5000", "u", "p")
    assert remove_credentials(path, "http://localhost:5000") is True
    assert remove_credentials(path, "localhost:5000") is False
    assert load_credentials(path, "localhost:5000") is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_concurrent_stores_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    threads = [threading.Thread(target=store_credentials, args=(path, f"reg{i}.example", f"u{i}", "p"))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads(path.read_text())["auths"]) == 8


@pytest.mark.parametrize("user", ["", "a:b"])
def test_store_refuses_bad_user(tmp_path: Path, user: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid user name"):
        store_credentials(tmp_path / "auth.json", "localhost", user, "p")


def test_broken_files_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text("{not json")
    with pytest.raises(FailedPrecondition, match="not valid JSON") as info:
        load_credentials(path, "docker.io")
    assert "\n" not in str(info.value)
    path.write_text(json.dumps({"auths": {"docker.io": {"auth": "%%%"}}}))
    with pytest.raises(FailedPrecondition, match="run mydocker login docker.io"):
        load_credentials(path, "docker.io")


def test_decode_auth() -> None:
    assert decode_auth(base64.b64encode(b"u:p:q").decode()) == ("u", "p:q")
    assert decode_auth(base64.b64encode(b"nocolon").decode()) is None
    assert decode_auth("***") is None


def test_insecure_registries_file(tmp_path: Path) -> None:
    path = tmp_path / "registries.json"
    assert load_insecure_registries(path) == frozenset()
    path.write_text(json.dumps({"insecure_registries": ["Reg.Example:5000", "http://other", "10.0.0.0/8"]}))
    assert load_insecure_registries(path) == {"reg.example:5000", "other", "10.0.0.0/8"}
    path.write_text(json.dumps({"insecure_registries": "reg.example"}))
    with pytest.raises(FailedPrecondition, match="must be a list"):
        load_insecure_registries(path)


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.9.8.7", True),
    ("[::1]:5000", True), ("::1", True), ("128.0.0.1", False), ("localhost.example", False), ("docker.io", False),
])
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_scheme_for() -> None:
    insecure = ["reg.lan:5000", "bare.lan", "10.1.0.0/16", "fd00::/8"]
    assert scheme_for("127.0.0.1:5000", []) == "http"
    assert scheme_for("[::1]:5000", []) == "http"
    assert scheme_for("reg.lan:5000", insecure) == "http"
    assert scheme_for("REG.lan:5000", insecure) == "http"
    assert scheme_for("reg.lan:5001", insecure) == "https"  # as Docker: host:port entries match exactly
    assert scheme_for("bare.lan", insecure) == "http"
    assert scheme_for("bare.lan:8443", insecure) == "https"
    assert scheme_for("10.1.2.3:5000", insecure) == "http"  # CIDR entries cover their addresses, any port
    assert scheme_for("[fd00::5]:5000", insecure) == "http"
    assert scheme_for("10.2.0.1:5000", insecure) == "https"
    assert scheme_for("docker.io", insecure) == "https"


def test_endpoint_host() -> None:
    assert endpoint_host("index.docker.io") == "registry-1.docker.io"
    assert endpoint_host("localhost:5000") == "localhost:5000"


def test_ca_file_and_settings(tmp_path: Path) -> None:
    assert ca_file_for(tmp_path / "certs.d", "reg.example:5000") is None
    ca = tmp_path / "certs.d" / "reg.example:5000" / "ca.crt"
    ca.parent.mkdir(parents=True)
    ca.write_text("x")
    assert ca_file_for(tmp_path / "certs.d", "https://reg.example:5000") == ca
    store_credentials(tmp_path / "auth.json", "reg.example:5000", "u", "p")
    settings = registry_settings(tmp_path, "reg.example:5000")
    assert (settings.scheme, settings.credentials, settings.ca_file) == ("https", ("u", "p"), str(ca))
    assert settings.endpoint == "reg.example:5000"
    assert registry_settings(tmp_path, "index.docker.io").endpoint == "registry-1.docker.io"
    assert registry_settings(tmp_path, "localhost:5000").scheme == "http"
    with pytest.raises(InvalidArgument):
        registry_settings(tmp_path, "../../etc")


def test_a_ca_file_means_https_even_for_loopback_and_insecure_hosts(tmp_path: Path) -> None:
    (tmp_path / "registries.json").write_text(json.dumps({"insecure_registries": ["reg.lan:5000"]}))
    for host in ("127.0.0.1:5443", "localhost:5443", "reg.lan:5000"):
        assert registry_settings(tmp_path, host).scheme == "http"
        ca = tmp_path / "certs.d" / host / "ca.crt"
        ca.parent.mkdir(parents=True)
        ca.write_text("x")
        assert (registry_settings(tmp_path, host).scheme, registry_settings(tmp_path, host).ca_file) == ("https", str(ca))


def test_tls_context_with_an_unreadable_ca_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(FailedPrecondition, match="cannot load the CA certificates"):
        tls_context(bad)
    assert tls_context(None).verify_mode.name == "CERT_REQUIRED"


@pytest.mark.parametrize(("header", "challenges"), [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
     [Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                           "scope": "repository:library/busybox:pull"})]),
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    # A quoted value holding commas and '=' (several scopes), and an escaped quote.
    ('Bearer realm="http://h/token", scope="repository:a:pull,push repository:b:pull", error="x \\"y\\""',
     [Challenge("bearer", {"realm": "http://h/token", "scope": "repository:a:pull,push repository:b:pull",
                           "error": 'x "y"'})]),
    # Two challenges in one header; unquoted values; case-insensitive names.
    ('Basic realm=foo, BEARER Realm="r",Service=s',
     [Challenge("basic", {"realm": "foo"}), Challenge("bearer", {"realm": "r", "service": "s"})]),
    ('Negotiate, Basic realm="x"', [Challenge("negotiate", {}), Challenge("basic", {"realm": "x"})]),
    ("Negotiate YIIabc==, Basic realm=x",
     [Challenge("negotiate", {"token68": "YIIabc=="}), Challenge("basic", {"realm": "x"})]),
    ("", []),
    (", ,Bearer realm=\"r\",,", [Challenge("bearer", {"realm": "r"})]),
    ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
])
def test_parse_www_authenticate(header: str, challenges: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == challenges
