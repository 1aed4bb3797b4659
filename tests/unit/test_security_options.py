"""The security options as asked for: capability arithmetic, parsers, checks, storage as dicts and the CLI's flags."""

from __future__ import annotations

import json
import re

import pytest

from cli.security_options import SecurityFlags, security_options
from cli.services import CliError
from services.common.errors import InvalidArgument
from services.common.security import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    RLIM_INFINITY,
    DeviceMapping,
    SecurityOptions,
    TmpfsMount,
    Ulimit,
    capability_mask,
    capability_names,
    check_options,
    check_user,
    effective_capabilities,
    normalize_capability,
    parse_tmpfs,
    parse_ulimit,
    security_from_dict,
    security_to_dict,
)
from services.common.security_convert import security_from_proto, security_to_proto

DOCKER_DEFAULT_MASK = 0xA80425FB


def test_docker_default_capabilities_are_mask_a80425fb():
    assert capability_mask(DEFAULT_CAPABILITIES) == DOCKER_DEFAULT_MASK
    assert set(capability_names(DOCKER_DEFAULT_MASK)) == set(DEFAULT_CAPABILITIES)
    assert effective_capabilities((), (), False) == tuple(c for c in CAPABILITIES if c in DEFAULT_CAPABILITIES)


@pytest.mark.parametrize("spelling", ["sys_admin", "SYS_ADMIN", "CAP_SYS_ADMIN", "cap_sys_admin", " Cap_Sys_Admin "])
def test_capability_names_with_or_without_the_prefix_in_any_case(spelling):
    assert normalize_capability(spelling) == "SYS_ADMIN"


def test_unknown_capability_is_one_line_naming_it():
    with pytest.raises(InvalidArgument, match=r'unknown capability "NOPE"'):
        normalize_capability("NOPE")


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        (["NET_ADMIN"], [], set(DEFAULT_CAPABILITIES) | {"NET_ADMIN"}),
        ([], ["CHOWN", "cap_kill"], set(DEFAULT_CAPABILITIES) - {"CHOWN", "KILL"}),
        ([], ["ALL"], set()),
        (["NET_BIND_SERVICE"], ["ALL"], {"NET_BIND_SERVICE"}),
        # Docker: dropped and added is added.
        (["CHOWN"], ["CHOWN"], set(DEFAULT_CAPABILITIES)),
        (["ALL"], [], set(CAPABILITIES)),
        (["ALL"], ["SYS_ADMIN", "MKNOD"], set(CAPABILITIES) - {"SYS_ADMIN", "MKNOD"}),
    ],
)
def test_cap_add_and_cap_drop_as_docker_combines_them(add, drop, expected):
    assert set(effective_capabilities(add, drop, False)) == expected


def test_privileged_is_everything_available_and_add_past_it_is_refused():
    available = tuple(c for c in CAPABILITIES if c != "SYS_RESOURCE")
    assert effective_capabilities((), ["ALL"], True, available) == available
    with pytest.raises(InvalidArgument, match="SYS_RESOURCE is not available on this host"):
        effective_capabilities(["SYS_RESOURCE"], (), False, available)


@pytest.mark.parametrize("user", ["0", "1000", "nobody", "1000:1000", "www-data:adm", "user:0"])
def test_good_users(user):
    check_user(user)


@pytest.mark.parametrize("user", [":1000", "1000:", "a:b:c", "-1", "a b", "x/y", "a:-1"])
def test_bad_users_are_one_line(user):
    with pytest.raises(InvalidArgument, match="invalid user|is not a user"):
        check_user(user)


def test_ulimits_parse_like_docker():
    assert parse_ulimit("nofile=1024:2048") == Ulimit("nofile", 1024, 2048)
    assert parse_ulimit("nproc=100") == Ulimit("nproc", 100, 100)
    assert parse_ulimit("core=-1") == Ulimit("core", RLIM_INFINITY, RLIM_INFINITY)
    assert parse_ulimit("memlock=unlimited:unlimited").hard == RLIM_INFINITY


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nofile", "use NAME=SOFT[:HARD]"),
        ("nofile=abc", '"abc" is not a number'),
        ("nofile=2048:1024", "soft limit 2048 is above hard limit 1024"),
        ("files=10", 'unknown ulimit "files"'),
        ("nofile=-5", "is negative"),
    ],
)
def test_bad_ulimits(text, fragment):
    with pytest.raises(InvalidArgument, match=re.escape(fragment)):
        parse_ulimit(text)


def test_tmpfs_parse_and_check():
    assert parse_tmpfs("/run:size=64m,mode=1777") == TmpfsMount("/run", "size=64m,mode=1777")
    assert parse_tmpfs("/scratch") == TmpfsMount("/scratch", "")
    for bad, fragment in [("relative", "must be absolute"), ("/", 'cannot be mounted on "/"'), ("/x:bogus", 'unknown option "bogus"')]:
        with pytest.raises(InvalidArgument, match=fragment):
            parse_tmpfs(bad)


def test_check_options_refuses_duplicates_and_contradictions():
    with pytest.raises(InvalidArgument, match="not both"):
        check_options(SecurityOptions(seccomp_unconfined=True, seccomp_profile="{}"))
    with pytest.raises(InvalidArgument, match="given twice"):
        check_options(SecurityOptions(tmpfs=(TmpfsMount("/a"), TmpfsMount("/a/"))))
    with pytest.raises(InvalidArgument, match="given twice"):
        check_options(SecurityOptions(ulimits=(Ulimit("nofile", 1, 1), Ulimit("nofile", 2, 2))))
    with pytest.raises(InvalidArgument, match="outside -1000..1000"):
        check_options(SecurityOptions(oom_score_adj=1001))
    with pytest.raises(InvalidArgument, match="invalid group"):
        check_options(SecurityOptions(group_add=("a:b",)))


FULL = SecurityOptions(
    privileged=False,
    cap_add=("NET_ADMIN",),
    cap_drop=("MKNOD",),
    seccomp_profile='{"defaultAction": "SCMP_ACT_ALLOW"}',
    no_new_privileges=True,
    user="1000:1000",
    group_add=("audio",),
    read_only_rootfs=True,
    tmpfs=(TmpfsMount("/run", "size=1m"),),
    devices=(DeviceMapping("/dev/fuse", "/dev/fuse", "rw"),),
    ulimits=(Ulimit("nofile", 10, 20),),
    oom_score_adj=-5,
)


def test_options_round_trip_through_a_json_column_and_the_proto():
    assert security_to_dict(SecurityOptions()) == {}
    stored = json.loads(json.dumps(security_to_dict(FULL)))
    assert security_from_dict(stored) == FULL
    assert security_from_proto(security_to_proto(FULL)) == FULL
    with pytest.raises(TypeError):
        security_from_dict({"apparmor": "x"})


def test_cli_flags_become_the_message(tmp_path):
    profile = tmp_path / "profile.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    message = security_options(
        SecurityFlags(
            cap_add=["net_admin"],
            security_opt=[f"seccomp={profile}", "no-new-privileges"],
            user="nobody",
            tmpfs=["/run:size=1m"],
            device=["/dev/fuse:rw"],
            ulimit=["nofile=10:20"],
        )
    )
    options = security_from_proto(message)
    assert options.seccomp_profile == profile.read_text()
    assert options.no_new_privileges and options.user == "nobody" and options.cap_add == ("net_admin",)
    assert options.devices == (DeviceMapping("/dev/fuse", "/dev/fuse", "rw"),)
    assert security_from_proto(security_options(SecurityFlags(security_opt=["seccomp=unconfined"]))).seccomp_unconfined
    assert not security_from_proto(security_options(SecurityFlags(security_opt=["no-new-privileges=false"]))).no_new_privileges


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (SecurityFlags(cap_add=["NOPE"]), 'unknown capability "NOPE"'),
        (SecurityFlags(security_opt=["seccomp=/nonexistent/p.json"]), "cannot read seccomp profile /nonexistent/p.json"),
        (SecurityFlags(security_opt=["apparmor=docker-default"]), "apparmor is not supported"),
        (SecurityFlags(security_opt=["bogus"]), 'unknown --security-opt "bogus"'),
        (SecurityFlags(security_opt=["no-new-privileges=maybe"]), "no-new-privileges=true|false"),
        (SecurityFlags(ulimit=["nofile=abc"]), '"abc" is not a number'),
        (SecurityFlags(device=["dev/x"]), "is not absolute"),
        (SecurityFlags(tmpfs=["x"]), "must be absolute"),
        (SecurityFlags(user="a:b:c"), "invalid user"),
    ],
)
def test_cli_flag_errors_are_one_line(flags, fragment):
    with pytest.raises(CliError) as caught:
        security_options(flags)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
