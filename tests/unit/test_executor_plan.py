"""The container plan: built from a request, validated by small checks, serialized for init; and PATH lookup."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.common.errors import InvalidArgument
from services.common import linux
from services.executor.cgroups import Limits
from services.executor.init import ExecError, InitError, resolve_executable, safe_target
from services.executor.plan import (
    DEFAULT_PATH,
    ContainerPlan,
    MountSpec,
    build_plan,
    container_env,
    merge_env,
    validate,
)


def plan(**overrides) -> ContainerPlan:
    fields = {
        "container_id": "1234567890",
        "hostname": "box",
        "rootfs": "/var/lib/mydocker/overlay2/1234567890/merged",
        "args": ["sh", "-c", "echo a b"],
        "env": ["FOO=bar"],
    }
    fields.update(overrides)
    return build_plan(**fields)


def test_environment_is_exactly_path_hostname_term_and_given():
    assert container_env("box", False, ["A=1"]) == (f"PATH={DEFAULT_PATH}", "HOSTNAME=box", "A=1")
    assert container_env("box", True, []) == (f"PATH={DEFAULT_PATH}", "HOSTNAME=box", "TERM=xterm")
    # A user value replaces the default in place.
    assert container_env("box", False, ["PATH=/bin", "HOSTNAME=x"]) == ("PATH=/bin", "HOSTNAME=x")


def test_merge_env_later_wins():
    assert merge_env(["A=1", "B=2"], ["B=3", "C=4=5"]) == ("A=1", "B=3", "C=4=5")


def test_build_plan_keeps_argv_a_list_and_sets_the_mounts():
    built = plan()
    assert built.args == ("sh", "-c", "echo a b")
    assert built.cwd == "/"
    assert built.namespaces == ("mnt", "uts", "ipc", "net", "cgroup")
    targets = [m.target for m in built.mounts]
    assert targets == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]
    sysfs = built.mounts[-1]
    assert sysfs.flags & linux.MS_RDONLY and sysfs.fallback_bind == "/sys"
    devpts = built.mounts[2]
    assert "newinstance" in devpts.data and "ptmxmode=0666" in devpts.data
    assert "mode=755" in built.mounts[1].data
    assert {d.path for d in built.devices} == {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}
    assert ("/dev/ptmx", "pts/ptmx") in built.symlinks
    assert ("/dev/fd", "/proc/self/fd") in built.symlinks
    assert "cgroup" not in plan(cgroup_namespace=False).namespaces


def test_plan_round_trips_through_json():
    built = plan(limits=Limits(memory_bytes=64 << 20, pids_limit=5), cgroup_procs=["/sys/fs/cgroup/x/cgroup.procs"], terminal=True)
    assert ContainerPlan.from_json(built.to_json()) == built
    # init reads the same JSON as plain data.
    raw = json.loads(built.to_json())
    proc = raw["mounts"][0]
    assert proc == {
        "source": "proc",
        "target": "/proc",
        "fstype": "proc",
        "flags": proc["flags"],
        "data": "",
        "fallback_bind": "",
        "target_is_file": False,
    }
    assert "TERM=xterm" in raw["env"]


def test_extra_mounts_follow_the_defaults_and_round_trip():
    hosts = MountSpec("/run/mydocker/1234567890/hosts", "/etc/hosts", "bind", linux.MS_BIND, target_is_file=True)
    built = plan(extra_mounts=[hosts])
    assert built.mounts[-1] == hosts and built.mounts[:-1] == plan().mounts
    again = ContainerPlan.from_json(built.to_json())
    assert again == built and again.mounts[-1].target_is_file
    assert json.loads(built.to_json())["mounts"][-1]["target_is_file"] is True


def test_plan_json_without_file_targets_still_loads():
    # plan.json written before target_is_file existed: every mount is a directory mount.
    raw = json.loads(plan().to_json())
    for mount in raw["mounts"]:
        del mount["target_is_file"]
    loaded = ContainerPlan.from_json(json.dumps(raw))
    assert loaded == plan()
    assert not any(m.target_is_file for m in loaded.mounts)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"container_id": "../x"}, "invalid container id"),
        ({"container_id": ""}, "invalid container id"),
        ({"container_id": "shims"}, "uses that name itself"),
        ({"container_id": "network"}, "uses that name itself"),
        ({"container_id": "pycache"}, "uses that name itself"),
        ({"hostname": ""}, "hostname is empty"),
        ({"hostname": "bad_name!"}, "invalid hostname"),
        ({"hostname": "a" * 65}, "invalid hostname"),
        ({"rootfs": ""}, "rootfs_path is empty"),
        ({"rootfs": "relative/path"}, "absolute"),
        ({"rootfs": "/a/../b"}, "normalised"),
        ({"rootfs": "/"}, "other than /"),
        ({"args": []}, "command is empty"),
        ({"args": [""]}, "command is empty"),
        ({"args": ["a\0b"]}, "NUL"),
        ({"env": ["NOVALUE"]}, "KEY=VALUE"),
        ({"env": ["=x"]}, "KEY=VALUE"),
        ({"cwd": "relative"}, "must be absolute"),
        ({"stdio_mode": "tty"}, "stdio mode"),
        ({"limits": Limits(memory_bytes=100)}, "too small"),
    ],
)
def test_validation_rejects(overrides, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        validate(plan(**overrides))


def test_validation_accepts_a_good_plan():
    good = plan(cwd="/tmp", limits=Limits(memory_bytes=64 << 20, nano_cpus=500_000_000))
    assert validate(good) is good
    # Container names are default hostnames: the state service's alphabet passes.
    validate(plan(hostname="my_web.1-a"))


def test_validation_rejects_mount_targets_escaping():
    from services.executor.plan import MountSpec

    bad = replace(plan(), mounts=(MountSpec("proc", "/../proc", "proc"),))
    with pytest.raises(InvalidArgument, match="mount target"):
        validate(bad)


@pytest.fixture
def bin_dirs(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    (first / "tool").write_text("not executable")
    (first / "tool").chmod(0o644)
    (first / "adir").mkdir()
    return first, second


def test_resolve_finds_the_first_executable_in_path(bin_dirs):
    first, second = bin_dirs
    env = [f"PATH={first}:{second}"]
    assert resolve_executable("tool", env) == str(second / "tool")


def test_resolve_errors_are_dockers(bin_dirs):
    first, second = bin_dirs
    env = [f"PATH={first}:{second}"]
    with pytest.raises(ExecError) as caught:
        resolve_executable("nosuchcmd", env)
    assert str(caught.value) == 'exec: "nosuchcmd": executable file not found in $PATH'
    assert caught.value.exit_code == 127 and caught.value.kind == "invalid"
    with pytest.raises(ExecError, match="permission denied") as caught:
        resolve_executable(str(first / "tool"), env)
    assert caught.value.exit_code == 126
    with pytest.raises(ExecError, match="no such file or directory"):
        resolve_executable(str(first / "missing"), env)
    with pytest.raises(ExecError, match="permission denied"):
        resolve_executable(str(first / "adir"), env)
    assert resolve_executable(str(second / "tool"), []) == str(second / "tool")


def test_mount_targets_may_not_be_symlinks_in_the_image(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc").symlink_to("/etc")
    assert safe_target(str(tmp_path), "/etc/x") == str(tmp_path / "etc" / "x")
    with pytest.raises(InitError, match="symbolic link"):
        safe_target(str(tmp_path), "/proc")


def test_device_numbers_are_the_kernels():
    devices = {d.path: (d.major, d.minor, d.mode) for d in plan().devices}
    assert devices["/dev/null"] == (1, 3, 0o666)
    assert devices["/dev/urandom"] == (1, 9, 0o666)
    assert devices["/dev/tty"] == (5, 0, 0o666)
