"""The executor's side of a security profile: building it, users from /etc files, tmpfs mounts, the setup step."""

from __future__ import annotations

import json

import pytest

from services.common import linux
from services.common.errors import InvalidArgument
from services.common.security import CAPABILITIES, RLIM_INFINITY, RLIMITS, DeviceMapping, SecurityOptions, TmpfsMount, Ulimit
from services.executor import users
from services.executor.plan import ContainerPlan, build_plan, tmpfs_mount
from services.executor.profile import (
    DEFAULT_NOFILE,
    MASKED_PATHS,
    READONLY_PATHS,
    SECCOMP_DEFAULT,
    SECCOMP_UNCONFINED,
    HostFacts,
    SecurityProfile,
    build_profile,
    exec_profile,
)
from services.executor.security_setup import SecuritySetup

NOFILE = RLIMITS["nofile"]


def host(available=CAPABILITIES, nr_open=1048576, nofile_hard=1048576) -> HostFacts:
    hard = {number: RLIM_INFINITY for number in RLIMITS.values()}
    hard[NOFILE] = nofile_hard
    return HostFacts(tuple(available), nr_open, hard)


def test_default_profile_is_dockers():
    profile = build_profile(SecurityOptions(), host())
    assert profile.capability_mask == 0xA80425FB
    assert profile.seccomp == SECCOMP_DEFAULT and not profile.no_new_privileges
    assert profile.masked_paths == MASKED_PATHS and profile.readonly_paths == READONLY_PATHS
    assert "/proc/keys" in MASKED_PATHS and "/proc/sys" in READONLY_PATHS
    assert profile.rlimits == ((NOFILE, DEFAULT_NOFILE, DEFAULT_NOFILE),)
    assert not profile.sysfs_writable and not profile.read_only_rootfs


def test_privileged_has_everything_and_nothing_masked():
    available = tuple(c for c in CAPABILITIES if c != "SYS_RESOURCE")
    profile = build_profile(SecurityOptions(privileged=True), host(available), device_rules=("c 1:3 rwm",))
    assert profile.capabilities == available
    assert profile.seccomp == SECCOMP_UNCONFINED
    assert profile.masked_paths == () and profile.readonly_paths == () and profile.device_rules == ()
    assert profile.sysfs_writable


def test_seccomp_labels():
    assert build_profile(SecurityOptions(seccomp_unconfined=True), host()).seccomp == SECCOMP_UNCONFINED
    custom = build_profile(SecurityOptions(seccomp_profile='{"defaultAction":"SCMP_ACT_ALLOW"}'), host()).seccomp
    assert custom.startswith("custom sha256:") and len(custom) == len("custom sha256:") + 64


def test_nofile_default_falls_back_to_our_hard_limit_when_we_cannot_raise_it():
    without_resource = tuple(c for c in CAPABILITIES if c != "SYS_RESOURCE")
    limited = build_profile(SecurityOptions(), host(without_resource, nofile_hard=20000))
    assert limited.rlimits == ((NOFILE, 20000, 20000),)
    # With CAP_SYS_RESOURCE the default is Docker's, whatever our own limit.
    assert build_profile(SecurityOptions(), host(nofile_hard=20000)).rlimits == ((NOFILE, DEFAULT_NOFILE, DEFAULT_NOFILE),)
    # A kernel whose fs.nr_open is lower keeps our own.
    assert build_profile(SecurityOptions(), host(nr_open=65536, nofile_hard=4096)).rlimits == ((NOFILE, 4096, 4096),)


def test_ulimits_beyond_what_the_host_allows_are_refused_up_front():
    without_resource = tuple(c for c in CAPABILITIES if c != "SYS_RESOURCE")
    options = SecurityOptions(ulimits=(Ulimit("nofile", 100, 30000),))
    with pytest.raises(InvalidArgument, match="above the services' own"):
        build_profile(options, host(without_resource, nofile_hard=20000))
    with pytest.raises(InvalidArgument, match="fs.nr_open"):
        build_profile(SecurityOptions(ulimits=(Ulimit("nofile", 1, 2_000_000),)), host())
    given = build_profile(SecurityOptions(ulimits=(Ulimit("nproc", 10, 20),)), host())
    assert given.rlimits == ((RLIMITS["nproc"], 10, 20), (NOFILE, DEFAULT_NOFILE, DEFAULT_NOFILE))


def test_a_lower_oom_score_than_ours_needs_cap_sys_resource():
    without_resource = tuple(c for c in CAPABILITIES if c != "SYS_RESOURCE")
    with pytest.raises(InvalidArgument, match="lack CAP_SYS_RESOURCE to lower it"):
        build_profile(SecurityOptions(oom_score_adj=-500), host(without_resource))
    assert build_profile(SecurityOptions(oom_score_adj=500), host(without_resource)).oom_score_adj == 500
    assert build_profile(SecurityOptions(oom_score_adj=-500), host()).oom_score_adj == -500


def test_exec_profile_overrides_user_and_privilege_only():
    container = build_profile(SecurityOptions(user="1000", group_add=("audio",)), host())
    assert exec_profile(container, "", False, host()) == container
    other = exec_profile(container, "nobody", False, host())
    assert other.user == "nobody" and other.group_add == () and other.capabilities == container.capabilities
    privileged = exec_profile(container, "", True, host())
    assert privileged.capabilities == CAPABILITIES and privileged.seccomp == SECCOMP_UNCONFINED and not privileged.seccomp_file


def test_profile_round_trips_through_the_plan():
    profile = build_profile(SecurityOptions(user="1:2", read_only_rootfs=True), host(), ("c 1:3 rwm",))
    assert SecurityProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    plan = build_plan("1234567890", "box", "/r/merged", ["sh"], [], security=profile)
    assert ContainerPlan.from_json(plan.to_json()) == plan
    assert json.loads(plan.to_json())["security"]["capability_mask"] == 0xA80425FB


def test_plan_of_an_older_executor_reads_as_unconfined():
    raw = json.loads(build_plan("1234567890", "box", "/r/merged", ["sh"], []).to_json())
    del raw["security"]
    assert ContainerPlan.from_json(json.dumps(raw)).security is None


def test_sysfs_is_writable_only_when_privileged():
    def sysfs_flags(profile):
        plan = build_plan("1234567890", "box", "/r/merged", ["sh"], [], security=profile)
        return next(m.flags for m in plan.mounts if m.target == "/sys")

    assert sysfs_flags(build_profile(SecurityOptions(), host())) & linux.MS_RDONLY
    assert not sysfs_flags(build_profile(SecurityOptions(privileged=True), host())) & linux.MS_RDONLY


def test_tmpfs_mounts_are_noexec_nosuid_nodev_unless_asked():
    default = tmpfs_mount(TmpfsMount("/run/", "size=64m,mode=1777"))
    assert (default.source, default.target, default.fstype, default.data) == ("tmpfs", "/run", "tmpfs", "size=64m,mode=1777")
    assert default.flags == linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
    execable = tmpfs_mount(TmpfsMount("/x", "exec,ro,noatime"))
    assert execable.flags == linux.MS_NOSUID | linux.MS_NODEV | linux.MS_RDONLY and execable.data == ""


PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
# a comment
broken line
app:x:1000:1000:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
wheel:x:10:root,app
audio:x:29:app
app:x:1000:
staff:x:50:
"""


@pytest.mark.parametrize(
    ("user", "group_add", "expected"),
    [
        ("", (), users.Identity(0, 0, (10,), "/root")),
        ("app", (), users.Identity(1000, 1000, (10, 29), "/home/app")),
        ("1000", (), users.Identity(1000, 1000, (10, 29), "/home/app")),
        # An explicit group is exactly that group: no memberships from /etc/group, as runc.
        ("app:staff", (), users.Identity(1000, 50, (), "/home/app")),
        ("app:50", ("audio", "777"), users.Identity(1000, 50, (29, 777), "/home/app")),
        # A number the image does not know: gid 0 and home /, as Docker.
        ("4242", (), users.Identity(4242, 0, (), "/")),
        ("4242:4242", ("staff",), users.Identity(4242, 4242, (50,), "/")),
        ("nobody", (), users.Identity(65534, 65534, (), "/nonexistent")),
    ],
)
def test_users_resolve_like_docker(user, group_add, expected):
    assert users.resolve(user, group_add, PASSWD, GROUP) == expected


@pytest.mark.parametrize(
    ("user", "group_add", "fragment"),
    [
        ("nosuch", (), 'unable to find user "nosuch"'),
        ("app:nogroup", (), 'unable to find group "nogroup" (--user app:nogroup)'),
        ("app", ("nogroup",), 'unable to find group "nogroup" (--group-add)'),
        ("99999999999", (), "out of range"),
    ],
)
def test_unknown_users_and_groups(user, group_add, fragment):
    with pytest.raises(users.UserError) as caught:
        users.resolve(user, group_add, PASSWD, GROUP)
    assert fragment in str(caught.value)


def test_an_image_without_etc_files_still_runs_numbers():
    assert users.resolve("123:456", (), "", "") == users.Identity(123, 456, (), "/")
    with pytest.raises(users.UserError):
        users.resolve("app", (), "", "")


@pytest.fixture
def setup(tmp_path) -> SecuritySetup:
    return SecuritySetup(tmp_path / "seccomp", host())


def test_setup_compiles_the_default_filter_once_and_shares_it(setup):
    first = setup.container(SecurityOptions())
    second = setup.container(SecurityOptions(user="1000"))
    assert first.profile.seccomp_file and first.profile.seccomp_file == second.profile.seccomp_file
    assert first.device_rules and first.device_nodes == ()
    # Another capability set is another filter (CAP_SYS_ADMIN opens mount, unshare, ...).
    assert setup.container(SecurityOptions(cap_add=("SYS_ADMIN",))).profile.seccomp_file != first.profile.seccomp_file
    assert setup.container(SecurityOptions(seccomp_unconfined=True)).profile.seccomp_file == ""


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (SecurityOptions(cap_add=("NOPE",)), 'unknown capability "NOPE"'),
        (SecurityOptions(seccomp_profile="{not json"), "not valid JSON"),
        (SecurityOptions(seccomp_profile='{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["nosuchcall"],"action":"SCMP_ACT_ALLOW"}]}'), "nosuchcall"),
        (SecurityOptions(devices=(DeviceMapping("/etc/hostname", "/dev/x", "rwm"),)), "/etc/hostname"),
    ],
)
def test_setup_refuses_bad_input_with_one_line(setup, options, fragment):
    with pytest.raises(InvalidArgument) as caught:
        setup.container(options)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_device_option_adds_its_node_and_rule(setup):
    confinement = setup.container(SecurityOptions(devices=(DeviceMapping("/dev/null", "/dev/mynull", "r"),)))
    (node,) = confinement.device_nodes
    assert (node.path, node.kind, node.major, node.minor) == ("/dev/mynull", "c", 1, 3)
    assert confinement.profile.device_rules[-1] == "c 1:3 r"


def test_exec_of_a_container_of_an_older_plan_stays_unconfined(setup):
    assert setup.exec(None, "nobody", False) is None
    profile = setup.container(SecurityOptions()).profile
    assert setup.exec(profile.to_dict(), "nobody", False)["user"] == "nobody"
