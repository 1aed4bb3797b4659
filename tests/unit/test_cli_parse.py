"""Parsers for run's option values."""

import pytest

from cli import parse

from cli.parse import (
    BadValue,
    VolumeSpec,
    cpus_to_nano_cpus,
    parse_env,
    parse_size,
    parse_volume,
    percent_to_nano_cpus,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("100", 100), ("1.5g", 3 << 29), ("64MB", 64 << 20)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "m", "-5m", "0", "12x", "1t"])
def test_bad_sizes_name_the_option(text):
    with pytest.raises(BadValue, match="--memory"):
        parse_size(text)


def test_cpu_percent_and_cpus():
    assert percent_to_nano_cpus("20") == 200_000_000
    assert percent_to_nano_cpus("150") == 1_500_000_000
    assert cpus_to_nano_cpus("1.5") == 1_500_000_000
    for bad in ("0", "-1", "x"):
        with pytest.raises(BadValue):
            percent_to_nano_cpus(bad)
        with pytest.raises(BadValue):
            cpus_to_nano_cpus(bad)


def test_volumes():
    assert parse_volume("/srv:/data") == VolumeSpec("/srv", "/data", False)
    assert parse_volume("/srv:/data:ro") == VolumeSpec("/srv", "/data", True)
    assert parse_volume("/srv:/data:rw") == VolumeSpec("/srv", "/data", False)
    for bad in ("/srv", "srv:/data", "/srv:data", "/a:/b:rx", "/a:/b:ro:x"):
        with pytest.raises(BadValue, match="volume"):
            parse_volume(bad)


def test_env():
    assert parse_env("A=1", {}) == "A=1"
    assert parse_env("A=", {}) == "A="
    assert parse_env("HOME", {"HOME": "/root"}) == "HOME=/root"
    with pytest.raises(BadValue, match="not set"):
        parse_env("NOPE", {})
    with pytest.raises(BadValue):
        parse_env("=x", {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", parse.PortSpec("", 8080, 80, "tcp")),
        ("8053:53/udp", parse.PortSpec("", 8053, 53, "udp")),
        ("8080:80/tcp", parse.PortSpec("", 8080, 80, "tcp")),
        ("127.0.0.1:8080:80", parse.PortSpec("127.0.0.1", 8080, 80, "tcp")),
        ("65535:1", parse.PortSpec("", 65535, 1, "tcp")),
    ],
)
def test_parse_port(text, expected):
    assert parse.parse_port(text) == expected


@pytest.mark.parametrize(
    "text", ["80", "8080:", ":80", "a:b", "8080:80/sctp", "0:80", "8080:70000", "300.1.1.1:80:80", "8080-8081:80"]
)
def test_parse_port_refuses_bad_specs_in_one_line(text):
    with pytest.raises(parse.BadValue) as caught:
        parse.parse_port(text)
    assert text in str(caught.value) and "\n" not in str(caught.value)


def test_publish_all_maps_each_exposed_port_not_published_yet():
    from cli.image_run import exposed_port_mappings
    from protos.types.v1 import types_pb2

    published = [types_pb2.PortMapping(host_port=8080, container_port=80, protocol=types_pb2.PROTOCOL_TCP)]
    mappings = exposed_port_mappings(("53/udp", "80/tcp", "443", "9000-9001/tcp", "1/sctp"), published)
    assert [(m.container_port, m.protocol) for m in mappings] == [(53, types_pb2.PROTOCOL_UDP), (443, types_pb2.PROTOCOL_TCP)]
    assert all(1024 < m.host_port < 65536 for m in mappings)


def test_free_host_port_is_bindable():
    import socket

    from cli.parse import free_host_port

    for protocol, kind in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
        port = free_host_port(protocol)
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", port))


def test_commit_splits_a_container_argv_into_entrypoint_and_cmd_as_docker_keeps_them():
    from cli.image_run import split_command

    assert split_command(["sleep", "60"], None) == (None, ["sleep", "60"])
    assert split_command(["/bin/sh", "-c", "x"], ["/bin/sh", "-c"]) == (None, ["x"])
    # Run with --entrypoint: the argv no longer starts with the image's entrypoint; it says it all.
    assert split_command(["/bin/echo", "hi"], ["/bin/sh", "-c"]) == ([], ["/bin/echo", "hi"])
