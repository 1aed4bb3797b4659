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
