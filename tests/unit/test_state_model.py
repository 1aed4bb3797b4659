"""Unit tests of the state service's state machine and create-request validation."""

import dataclasses
import itertools

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, InvalidTransition
from services.state import model
from services.state.model import (
    ALLOWED_TRANSITIONS,
    ContainerSpec,
    ContainerStatus,
    PortMapping,
    Resources,
    Volume,
)

S = ContainerStatus
LEGAL_MOVES = {
    (S.CREATED, S.RUNNING), (S.CREATED, S.EXITED), (S.CREATED, S.REMOVING),
    (S.RUNNING, S.STOPPED), (S.RUNNING, S.EXITED),
    (S.STOPPED, S.RUNNING), (S.STOPPED, S.REMOVING),
    (S.EXITED, S.RUNNING), (S.EXITED, S.REMOVING),
}


def test_transition_table_is_exactly_the_documented_one():
    table_moves = {(current, target) for current, targets in ALLOWED_TRANSITIONS.items() for target in targets}
    assert table_moves == LEGAL_MOVES
    assert set(ALLOWED_TRANSITIONS) == set(ContainerStatus)


@pytest.mark.parametrize("current,target", sorted(LEGAL_MOVES))
def test_allowed_transitions_pass(current, target):
    model.check_transition(current, target)


ILLEGAL_MOVES = sorted(set(itertools.product(ContainerStatus, repeat=2)) - LEGAL_MOVES)


@pytest.mark.parametrize("current,target", ILLEGAL_MOVES)
def test_illegal_transitions_raise(current, target):
    with pytest.raises(InvalidTransition) as raised:
        model.check_transition(current, target, "container 1234567890")
    assert isinstance(raised.value, FailedPrecondition)
    assert str(raised.value) == (
        f"container 1234567890: invalid state transition from {current.value} to {target.value}"
    )


def test_illegal_moves_include_the_notable_ones():
    for move in [(S.RUNNING, S.REMOVING), (S.REMOVING, S.RUNNING), (S.RUNNING, S.RUNNING), (S.CREATED, S.STOPPED)]:
        assert move in ILLEGAL_MOVES


def test_status_values_are_lowercase_strings():
    assert [status.value for status in ContainerStatus] == ["created", "running", "stopped", "exited", "removing"]
    assert ContainerStatus("running") is S.RUNNING
    assert str(S.EXITED) == "exited"


@pytest.mark.parametrize("name", ["a", "web", "Web-1", "my_app.v2", "0abc", "x" * 128])
def test_good_container_names(name):
    model.validate_container_name(name)


@pytest.mark.parametrize("name", ["", "-web", "_web", ".web", "a/b", "a b", "é", "x" * 129, "web\n"])
def test_bad_container_names(name):
    with pytest.raises(InvalidArgument, match="invalid container name"):
        model.validate_container_name(name)


@pytest.mark.parametrize("name", ["net", "br-1", "a.b_c", "x" * 64])
def test_good_network_names(name):
    model.validate_network_name(name)


@pytest.mark.parametrize("name", ["", "-net", "x" * 65, "a/b", "a:b"])
def test_bad_network_names(name):
    with pytest.raises(InvalidArgument, match="invalid network name"):
        model.validate_network_name(name)


@pytest.mark.parametrize("image", ["busybox", "busybox:latest", "alpine_3.19", "a", "my-image:1.0", "x" * 128])
def test_good_image_names(image):
    model.validate_image_name(image)


@pytest.mark.parametrize("image", ["", "library//busybox", "../etc", "a..b", ":latest", "x" * 321, "a b", "/abs"])
def test_bad_image_names(image):
    with pytest.raises(InvalidArgument, match="invalid image reference"):
        model.validate_image_name(image)


@pytest.mark.parametrize(
    "image", ["busybox", "library/busybox", "localhost:5000/team/app:v1", "app@sha256:" + "a" * 64, "sha256:" + "b" * 64]
)
def test_good_image_references(image):
    model.validate_image_name(image)


@pytest.mark.parametrize("command", [["sh"], ["/bin/sh", "-c", "echo hi"], ("top", "")])
def test_good_commands(command):
    model.validate_command(command)


@pytest.mark.parametrize("command", [[], [""], ["sh", "a\0b"], ["\0"]])
def test_bad_commands(command):
    with pytest.raises(InvalidArgument):
        model.validate_command(command)


@pytest.mark.parametrize("env", [[], ["A=1"], ["A="], ["PATH=/bin:/usr/bin", "X=a=b"]])
def test_good_env(env):
    model.validate_env(env)


@pytest.mark.parametrize("env", [["A"], ["=1"], ["="], ["A=1", "B"], ["A=\0"]])
def test_bad_env(env):
    with pytest.raises(InvalidArgument, match="environment entry"):
        model.validate_env(env)


def test_good_volumes():
    model.validate_volumes([Volume("/srv/data", "/data"), Volume("/srv/logs", "/logs", read_only=True)])
    model.validate_volumes([])


@pytest.mark.parametrize(
    "volumes",
    [
        [Volume("relative", "/data")],
        [Volume("/srv", "data")],
        [Volume("/srv\0x", "/data")],
        [Volume("/srv", "/")],
        [Volume("/a", "/data"), Volume("/b", "/data")],
        [Volume("/a", "/data"), Volume("/b", "/data/")],
    ],
)
def test_bad_volumes(volumes):
    with pytest.raises(InvalidArgument):
        model.validate_volumes(volumes)


def test_good_resources():
    model.validate_resources(Resources())
    model.validate_resources(
        Resources(memory_bytes=64 << 20, nano_cpus=1_500_000_000, cpuset_cpus="0-1,3", pids_limit=10)
    )


@pytest.mark.parametrize(
    "resources",
    [Resources(memory_bytes=-1), Resources(nano_cpus=-1), Resources(pids_limit=-5), Resources(cpuset_cpus="0-")],
)
def test_bad_resources(resources):
    with pytest.raises(InvalidArgument):
        model.validate_resources(resources)


def test_good_ports():
    model.validate_ports(
        [PortMapping(8080, 80), PortMapping(8080, 80, "udp"), PortMapping(65535, 1, host_ip="127.0.0.1")]
    )


@pytest.mark.parametrize(
    "ports",
    [
        [PortMapping(0, 80)],
        [PortMapping(80, 0)],
        [PortMapping(65536, 80)],
        [PortMapping(80, 80, "sctp")],
        [PortMapping(80, 80, host_ip="localhost")],
        [PortMapping(8080, 80), PortMapping(8080, 81)],
    ],
)
def test_bad_ports(ports):
    with pytest.raises(InvalidArgument):
        model.validate_ports(ports)


@pytest.mark.parametrize("hostname", ["web", "web-1.example", "a", "x" * 63])
def test_good_hostnames(hostname):
    model.validate_hostname(hostname)


@pytest.mark.parametrize("hostname", ["-web", "x" * 64, "a b", "a/b"])
def test_bad_hostnames(hostname):
    with pytest.raises(InvalidArgument, match="invalid hostname"):
        model.validate_hostname(hostname)


def test_working_dir():
    model.validate_working_dir("/srv/app")
    for bad in ["srv", "./x", "/a\0b"]:
        with pytest.raises(InvalidArgument, match="invalid working directory"):
            model.validate_working_dir(bad)


GOOD_SPEC = ContainerSpec(
    image="busybox",
    command=["sh", "-c", "true"],
    name="web",
    env=["A=1"],
    volumes=[Volume("/srv", "/srv")],
    resources=Resources(memory_bytes=1 << 20),
    network="net1",
    ports=[PortMapping(8080, 80)],
    labels={"tier": "front"},
    hostname="web",
    working_dir="/srv",
)


def test_validate_spec_accepts_good_and_minimal_specs():
    model.validate_spec(GOOD_SPEC)
    model.validate_spec(ContainerSpec(image="busybox", command=["sh"]))


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"name": "-x"}, "container name"),
        ({"image": ""}, "image reference"),
        ({"command": []}, "command is empty"),
        ({"env": ["X"]}, "environment entry"),
        ({"volumes": [Volume("x", "/x")]}, "volume path"),
        ({"resources": Resources(pids_limit=-1)}, "pids_limit"),
        ({"network": "bad/net"}, "network name"),
        ({"ports": [PortMapping(0, 1)]}, "host_port"),
        ({"hostname": "-h"}, "hostname"),
        ({"working_dir": "rel"}, "working directory"),
    ],
)
def test_validate_spec_reports_each_bad_field(changes, message):
    with pytest.raises(InvalidArgument, match=message):
        model.validate_spec(dataclasses.replace(GOOD_SPEC, **changes))


def test_error_messages_are_one_line():
    with pytest.raises(InvalidArgument) as raised:
        model.validate_env(["NOEQUALS"])
    assert "\n" not in str(raised.value)
    assert "NOEQUALS" in str(raised.value)
