"""Seccomp profiles: Docker JSON parsed or refused in one line, rules narrowed like moby, BPF compiled and cached."""

from __future__ import annotations

import json
import marshal
import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.executor import seccomp, seccomp_profile
from services.executor.seccomp import ArgRule, Condition, Profile, SyscallRule, SeccompCache
from services.executor.seccomp_default import default_profile

REPO = Path(__file__).resolve().parents[2]
NO_CAPS: frozenset[str] = frozenset()
SYS_ADMIN = frozenset({"CAP_SYS_ADMIN"})
NEW_KERNEL = (6, 1)


def to_docker_json(profile: Profile) -> str:
    """The Docker JSON of a Profile, written the way moby's default.json is."""

    def condition(value: Condition) -> dict:
        written = {"caps": list(value.caps), "arches": list(value.arches)}
        return written | ({"minKernel": "%d.%d" % value.min_kernel} if value.min_kernel else {})

    def rule(value: SyscallRule) -> dict:
        written = {
            "names": list(value.names),
            "action": value.action,
            "args": [{"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op} for a in value.args],
            "includes": condition(value.includes),
            "excludes": condition(value.excludes),
            "comment": "ignored",
        }
        return written | ({"errnoRet": value.errno_ret} if value.errno_ret is not None else {})

    return json.dumps({
        "defaultAction": profile.default_action,
        "defaultErrnoRet": profile.default_errno,
        "archMap": [{"architecture": arch, "subArchitectures": list(subs) or None} for arch, subs in profile.arch_map],
        "syscalls": [rule(r) for r in profile.syscalls],
    }, indent=1)


def profile_text(**fields) -> str:
    return json.dumps({"defaultAction": "SCMP_ACT_ERRNO", **fields})


def allowed(profile: Profile, caps: frozenset[str], machine: str = "x86_64", kernel=NEW_KERNEL) -> set[str]:
    """Names allowed without argument conditions."""
    rules = seccomp.effective_rules(profile, caps, machine, kernel)
    return {name for rule in rules if rule.action == "SCMP_ACT_ALLOW" and not rule.args for name in rule.names}


def rules_for(name: str, profile: Profile, caps: frozenset[str], machine: str = "x86_64") -> list[SyscallRule]:
    return [rule for rule in seccomp.effective_rules(profile, caps, machine, NEW_KERNEL) if name in rule.names]


# ---- parsing -------------------------------------------------------------------------------------------------------


def test_the_default_profile_round_trips_through_docker_json():
    assert seccomp.parse_profile(to_docker_json(default_profile())) == default_profile()


def test_parse_reads_every_field():
    text = profile_text(
        defaultErrnoRet=38,
        archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        syscalls=[
            {
                "names": ["clone"],
                "action": "SCMP_ACT_TRACE",
                "errnoRet": 7,
                "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
                "includes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["amd64"], "minKernel": "5.4"},
                "excludes": {"arches": ["s390x"]},
                "comment": "comments are ignored",
            },
            {"name": "read", "action": "SCMP_ACT_ALLOW", "args": None, "includes": {}},
        ],
    )
    assert seccomp.parse_profile(text) == Profile(
        default_action="SCMP_ACT_ERRNO",
        default_errno=38,
        arch_map=(("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86",)),),
        syscalls=(
            SyscallRule(
                names=("clone",),
                action="SCMP_ACT_TRACE",
                errno_ret=7,
                args=(ArgRule(0, 0x7E020000, 0, "SCMP_CMP_MASKED_EQ"),),
                includes=Condition(("CAP_SYS_ADMIN",), ("amd64",), (5, 4)),
                excludes=Condition(arches=("s390x",)),
            ),
            SyscallRule(names=("read",), action="SCMP_ACT_ALLOW"),
        ),
    )


def test_parse_reads_the_legacy_name_and_architectures():
    parsed = seccomp.parse_profile(profile_text(
        architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        syscalls=[{"name": "getpid", "action": "SCMP_ACT_ALLOW"}],
    ))
    assert parsed.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")
    assert parsed.syscalls == (SyscallRule(names=("getpid",), action="SCMP_ACT_ALLOW"),)


def syscall(**fields) -> list[dict]:
    return [{"names": ["read"], "action": "SCMP_ACT_ALLOW", **fields}]


PARSE_ERRORS = [
    ('{"defaultAction": "SCMP_ACT_ERRNO",\n "syscalls": [\n    oops]}',
     "seccomp profile is not valid JSON: line 3 column 5: Expecting value"),
    ("[]", "seccomp profile is a list, not an object"),
    ("{}", "seccomp profile: defaultAction is missing (use SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, "),
    (profile_text(syscalls=syscall() * 3 + syscall(action="SCMP_ACT_FOO")),
     'seccomp profile: syscalls[3].action "SCMP_ACT_FOO" is not an action (use SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, '),
    (profile_text(syscalls=syscall(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_SAME"}])),
     'seccomp profile: syscalls[0].args[0].op "SCMP_CMP_SAME" is not an operator (use SCMP_CMP_NE, '),
    (profile_text(syscalls=syscall(args=[{"index": 0, "value": 1}])), "seccomp profile: syscalls[0].args[0].op is missing"),
    (profile_text(syscalls=syscall(args=[{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}])),
     "seccomp profile: syscalls[0].args[0].index 6 is outside 0-5"),
    (profile_text(syscalls=syscall(args=[{"index": -1, "value": 1, "op": "SCMP_CMP_EQ"}])),
     "seccomp profile: syscalls[0].args[0].index -1 is outside 0-5"),
    (profile_text(syscalls=syscall(args=[{"value": 1, "op": "SCMP_CMP_EQ"}])),
     "seccomp profile: syscalls[0].args[0].index is missing (use 0-5)"),
    (profile_text(syscalls=syscall(args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}])),
     "seccomp profile: syscalls[0].args[0].value -1 is outside 0-18446744073709551615"),
    (profile_text(syscalls=syscall(args=[{"index": "0", "op": "SCMP_CMP_EQ"}])),
     "seccomp profile: syscalls[0].args[0].index is a string, not a whole number"),
    (profile_text(archMap=[{"architecture": "SCMP_ARCH_VAX"}]),
     'seccomp profile: archMap[0].architecture "SCMP_ARCH_VAX" is not an architecture libseccomp knows (use '),
    (profile_text(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X87"]}]),
     'seccomp profile: archMap[0].subArchitectures[0] "SCMP_ARCH_X87" is not an architecture libseccomp knows'),
    (profile_text(architectures=["SCMP_ARCH_X86_64", "x86"]),
     'seccomp profile: architectures[1] "x86" is not an architecture libseccomp knows'),
    (profile_text(syscalls=syscall(includes={"arches": ["amd65"]})),
     'seccomp profile: syscalls[0].includes.arches[0] "amd65" is not an architecture name (use 386, '),
    (profile_text(architectures=["SCMP_ARCH_X86"], archMap=[{"architecture": "SCMP_ARCH_X86_64"}]),
     "seccomp profile: give either architectures or archMap, not both"),
    (profile_text(syscalls=syscall(action="SCMP_ACT_NOTIFY")),
     'seccomp profile: syscalls[0].action "SCMP_ACT_NOTIFY" is not supported: mydocker runs no seccomp notification'),
    (profile_text(listenerPath="/run/seccomp.sock"),
     "seccomp profile: listenerPath is not supported: mydocker runs no seccomp notification listener"),
    (profile_text(flags=["SECCOMP_FILTER_FLAG_LOG"]),
     'seccomp profile: flags[0] "SECCOMP_FILTER_FLAG_LOG" is not supported: filters are installed with prctl'),
    (profile_text(flags=["SECCOMP_FILTER_FLAG_FAST"]),
     'seccomp profile: flags[0] "SECCOMP_FILTER_FLAG_FAST" is not a seccomp filter flag'),
    (profile_text(syscalls=syscall(name="write")), 'seccomp profile: syscalls[0] gives both "name" and "names": use one'),
    (profile_text(syscalls=syscall(names=[])), "seccomp profile: syscalls[0].names is missing or empty"),
    (profile_text(syscalls=syscall(names="read")), "seccomp profile: syscalls[0].names is a string, not a list of strings"),
    (profile_text(syscalls=syscall(names=["read", 3])), "seccomp profile: syscalls[0].names[1] is a number, not a string"),
    (profile_text(syscalls=syscall(errnoRet=1)),
     "seccomp profile: syscalls[0].errnoRet is only for SCMP_ACT_ERRNO and SCMP_ACT_TRACE, not SCMP_ACT_ALLOW"),
    (profile_text(defaultErrnoRet=70000), "seccomp profile: defaultErrnoRet 70000 is outside 0-65535"),
    (profile_text(syscalls=syscall(includes={"minKernel": "4"})),
     'seccomp profile: syscalls[0].includes.minKernel "4" is not a kernel version (use "X.Y", like "4.8")'),
    (profile_text(syscalls=syscall(excludes={"caps": ["SYS_ADMIN"]})),
     'seccomp profile: syscalls[0].excludes.caps[0] "SYS_ADMIN" is not a capability name (like CAP_SYS_ADMIN)'),
    (profile_text(syscalls=[["read"]]), "seccomp profile: syscalls[0] is a list, not an object"),
    (profile_text(syscalls=syscall(includes=["CAP_SYS_ADMIN"])),
     "seccomp profile: syscalls[0].includes is a list, not an object"),
]


@pytest.mark.parametrize("text, message", PARSE_ERRORS)
def test_parse_refuses_with_one_line_naming_what_and_where(text, message):
    with pytest.raises(InvalidArgument) as raised:
        seccomp.parse_profile(text)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


# ---- which rules apply ---------------------------------------------------------------------------------------------


def test_without_sys_admin_namespaces_and_mounts_are_blocked_and_clone_is_masked():
    profile = default_profile()
    names = allowed(profile, NO_CAPS)
    assert {"read", "execve", "getpid", "ptrace"} <= names
    assert not {"mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf", "keyctl", "reboot"} & names
    (clone,) = rules_for("clone", profile, NO_CAPS)
    assert clone.args == (ArgRule(0, 0x7E020000, 0, "SCMP_CMP_MASKED_EQ"),)
    (clone3,) = rules_for("clone3", profile, NO_CAPS)
    assert (clone3.action, clone3.errno_ret) == ("SCMP_ACT_ERRNO", 38)
    # Every family but AF_ALG (38) and AF_VSOCK (40), in three ranges (moby#52494).
    sockets = rules_for("socket", profile, NO_CAPS)
    assert [rule.args for rule in sockets] == [
        (ArgRule(0, 38, 0, "SCMP_CMP_LT"),), (ArgRule(0, 39, 0, "SCMP_CMP_EQ"),), (ArgRule(0, 40, 0, "SCMP_CMP_GT"),)
    ]
    personalities = rules_for("personality", profile, NO_CAPS)
    assert [rule.args[0].value for rule in personalities] == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]


def test_with_sys_admin_mounts_namespaces_and_clone3_are_allowed():
    profile = default_profile()
    names = allowed(profile, SYS_ADMIN)
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3", "bpf", "sethostname"} <= names
    assert [rule.args for rule in rules_for("clone", profile, SYS_ADMIN)] == [()]
    assert [rule.action for rule in rules_for("clone3", profile, SYS_ADMIN)] == ["SCMP_ACT_ALLOW"]


def test_other_capabilities_open_their_own_groups_only():
    profile = default_profile()
    assert {"reboot", "chroot", "bpf", "perf_event_open", "settimeofday"} <= allowed(
        profile, frozenset({"CAP_SYS_BOOT", "CAP_SYS_CHROOT", "CAP_BPF", "CAP_PERFMON", "CAP_SYS_TIME"})
    )
    assert "mount" not in allowed(profile, frozenset({"CAP_BPF"}))


def test_arch_groups_follow_the_machine():
    profile = default_profile()
    assert {"arch_prctl", "modify_ldt"} <= allowed(profile, NO_CAPS, "x86_64")
    assert "modify_ldt" in allowed(profile, NO_CAPS, "i686")
    assert "arch_prctl" not in allowed(profile, NO_CAPS, "i686")
    on_arm = allowed(profile, NO_CAPS, "aarch64")
    assert "arch_prctl" not in on_arm and {"cacheflush", "set_tls"} <= on_arm
    assert "riscv_flush_icache" in allowed(profile, NO_CAPS, "riscv64")
    assert "swapcontext" in allowed(profile, NO_CAPS, "ppc64le")
    # s390 passes clone's flags second.
    assert [rule.args[0].index for rule in rules_for("clone", profile, NO_CAPS, "s390x")] == [1]


def test_min_kernel_includes_and_excludes():
    profile = default_profile()
    assert "ptrace" in allowed(profile, NO_CAPS, kernel=(4, 8))
    assert "ptrace" not in allowed(profile, NO_CAPS, kernel=(4, 7))
    assert "ptrace" in allowed(profile, frozenset({"CAP_SYS_PTRACE"}), kernel=(4, 7))
    before_5_0 = SyscallRule(("read",), "SCMP_ACT_ALLOW", excludes=Condition(min_kernel=(5, 0)))
    old_only = Profile("SCMP_ACT_ERRNO", syscalls=(before_5_0,))
    assert allowed(old_only, NO_CAPS, kernel=(4, 19)) == {"read"}
    assert allowed(old_only, NO_CAPS, kernel=(5, 0)) == set()


def test_includes_need_every_cap_and_excludes_any():
    rule = SyscallRule(
        ("read",), "SCMP_ACT_ALLOW", includes=Condition(caps=("CAP_A", "CAP_B")), excludes=Condition(caps=("CAP_C", "CAP_D"))
    )
    profile = Profile("SCMP_ACT_ERRNO", syscalls=(rule,))
    assert allowed(profile, frozenset({"CAP_A"})) == set()
    assert allowed(profile, frozenset({"CAP_A", "CAP_B"})) == {"read"}
    assert allowed(profile, frozenset({"CAP_A", "CAP_B", "CAP_D"})) == set()


def test_filter_arches():
    profile = default_profile()
    assert seccomp.filter_arches(profile, "x86_64") == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    assert seccomp.filter_arches(profile, "aarch64") == ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")
    assert seccomp.filter_arches(profile, "riscv64") == ("SCMP_ARCH_RISCV64",)
    assert seccomp.filter_arches(profile, "ppc64le") == ("SCMP_ARCH_PPC64LE",)
    legacy = Profile("SCMP_ACT_ERRNO", architectures=("SCMP_ARCH_X86", "SCMP_ARCH_X86_64"))
    assert seccomp.filter_arches(legacy, "x86_64") == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")
    assert seccomp.filter_arches(Profile("SCMP_ACT_ERRNO"), "x86_64") == ("SCMP_ARCH_X86_64",)
    with pytest.raises(InvalidArgument, match="no architecture for machine vax"):
        seccomp.filter_arches(profile, "vax")


# ---- compiling -----------------------------------------------------------------------------------------------------


def test_unknown_names_fail_strict_compiles_and_are_skipped_otherwise():
    known = SyscallRule(("read", "chown32", "recv", "socketcall"), "SCMP_ACT_ALLOW")
    with_typo = Profile("SCMP_ACT_ERRNO", syscalls=(known, SyscallRule(("raed",), "SCMP_ACT_ALLOW")))
    with pytest.raises(InvalidArgument, match='syscall "raed" is unknown to libseccomp'):
        seccomp.compile_programs(with_typo, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=True)
    lenient = seccomp.compile_programs(with_typo, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=False)
    # Other arches' names (chown32) and multiplexed ones (recv) are valid: only the typo is dropped.
    without_typo = Profile("SCMP_ACT_ERRNO", syscalls=(known,))
    assert lenient == seccomp.compile_programs(without_typo, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=True)


def test_every_action_has_its_kernel_value():
    values = {action: seccomp.action_value(action, None) for action in seccomp_profile.ACTIONS}
    assert values["SCMP_ACT_KILL"] == values["SCMP_ACT_KILL_THREAD"] == 0
    assert values["SCMP_ACT_KILL_PROCESS"] == 0x80000000
    assert values["SCMP_ACT_ERRNO"] == 0x00050001  # EPERM unless errnoRet says otherwise
    assert seccomp.action_value("SCMP_ACT_ERRNO", 38) == 0x00050026
    assert seccomp.action_value("SCMP_ACT_TRACE", 7) == 0x7FF00007
    assert values["SCMP_ACT_ALLOW"] == 0x7FFF0000 and values["SCMP_ACT_LOG"] == 0x7FFC0000


def test_a_filter_for_another_machine_covers_only_its_arches():
    (program, stub) = seccomp.compile_programs(default_profile(), NO_CAPS, "aarch64", NEW_KERNEL, strict_names=True)
    arch_checks = {k for code, _, _, k in decode(program) if code == 0x15}
    assert {0xC00000B7, 0x40000028} <= arch_checks  # AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM
    assert 0xC000003E not in arch_checks
    assert stub == seccomp.enosys_program(seccomp.max_native_number(
        seccomp.effective_rules(default_profile(), NO_CAPS, "aarch64", NEW_KERNEL), "aarch64"), "aarch64")
    big_endian = Profile("SCMP_ACT_ERRNO", architectures=("SCMP_ARCH_S390X",))
    with pytest.raises(InvalidArgument, match="libseccomp cannot add SCMP_ARCH_S390X to a filter for x86_64"):
        seccomp.compile_programs(big_endian, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=True)


def test_the_default_profile_names_only_syscalls_libseccomp_knows():
    for caps in (NO_CAPS, SYS_ADMIN):
        programs = seccomp.compile_programs(default_profile(), caps, "x86_64", NEW_KERNEL, strict_names=True)
        assert [len(program) % 8 for program in programs] == [0, 0]


def test_rules_repeating_the_default_action_are_skipped():
    same = Profile("SCMP_ACT_ERRNO", syscalls=(SyscallRule(("read",), "SCMP_ACT_ERRNO", errno_ret=1),))
    empty = Profile("SCMP_ACT_ERRNO")
    main = seccomp.compile_programs(same, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=True)[0]
    assert main == seccomp.compile_programs(empty, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=True)[0]


def test_conditions_on_one_index_are_alternatives_on_distinct_indexes_all_required():
    both = seccomp._arg_groups((ArgRule(0, 1), ArgRule(1, 2)))
    assert [len(group) for group in both] == [2]
    either = seccomp._arg_groups((ArgRule(0, 1), ArgRule(0, 2), ArgRule(1, 3)))
    assert [len(group) for group in either] == [1, 1, 1]
    assert seccomp._arg_groups(()) == [()]


def test_the_enosys_stub_follows_only_an_errno_default():
    rules = (SyscallRule(("read", "getpid"), "SCMP_ACT_ALLOW"),)
    for default, count in (("SCMP_ACT_ERRNO", 2), ("SCMP_ACT_KILL", 1), ("SCMP_ACT_TRAP", 1), ("SCMP_ACT_ALLOW", 1)):
        profile = Profile(default, syscalls=rules if default != "SCMP_ACT_ALLOW" else ())
        programs = seccomp.compile_programs(profile, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=True)
        assert len(programs) == count, default
    profile = Profile("SCMP_ACT_ERRNO", syscalls=rules)
    programs = seccomp.compile_programs(profile, NO_CAPS, "x86_64", NEW_KERNEL, strict_names=True)
    # getpid (39) is the newest syscall named.
    assert programs[1] == seccomp.enosys_program(39, "x86_64")
    default_rules = seccomp.effective_rules(default_profile(), NO_CAPS, "x86_64", NEW_KERNEL)
    assert seccomp.max_native_number(default_rules, "x86_64") >= 435  # clone3 at least


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack("=HBBI", program[at:at + 8]) for at in range(0, len(program), 8)]


def run_classic_bpf(program: bytes, data: bytes) -> int:
    """The verdict of a seccomp program on one seccomp_data, for the opcodes libseccomp emits."""
    code, accumulator, at = decode(program), 0, 0
    while True:
        op, jump_true, jump_false, k = code[at]
        at += 1
        if op == 0x20:  # A = data[k:k+4]
            accumulator = struct.unpack_from("=I", data, k)[0]
        elif op == 0x54:  # A &= k
            accumulator &= k
        elif op == 0x05:  # jump k
            at += k
        elif op in (0x15, 0x25, 0x35, 0x45):  # ==, >, >=, & k
            test = {0x15: accumulator == k, 0x25: accumulator > k, 0x35: accumulator >= k, 0x45: accumulator & k}[op]
            at += jump_true if test else jump_false
        elif op == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {op:#x} at {at - 1}: extend run_classic_bpf")


def seccomp_data(nr: int, arch: int, first_arg: int) -> bytes:
    return struct.pack("=iIQ6Q", nr, arch, 0, first_arg, *([first_arg if first_arg == 2**64 - 1 else 0] * 5))


def test_the_binary_tree_program_gives_the_linear_ones_verdicts(monkeypatch):
    """libseccomp's tree layout is only a speed-up: every syscall of every arch gets the same verdict."""
    caps = frozenset({"CAP_CHOWN", "CAP_KILL", "CAP_SETUID"})
    monkeypatch.setattr(seccomp, "BINARY_TREE", 2)
    tree = seccomp.compile_main_program(default_profile(), seccomp.effective_rules(default_profile(), caps, "x86_64", NEW_KERNEL), "x86_64", False)
    monkeypatch.setattr(seccomp, "BINARY_TREE", 1)
    linear = seccomp.compile_main_program(default_profile(), seccomp.effective_rules(default_profile(), caps, "x86_64", NEW_KERNEL), "x86_64", False)
    assert tree != linear
    # clone's namespace flags, personality's values, socket's AF_VSOCK, everything set
    first_args = (0, 0x7E020000, 0x10000000, 0x0008, 0x20000, 40, 0xFFFFFFFF, 2**64 - 1)
    x86_64, i386, x32 = 0xC000003E, 0x40000003, 0x40000000
    cases = [(nr, x86_64) for nr in range(0, 520)] + [(x32 | nr, x86_64) for nr in range(0, 560)]
    cases += [(nr, i386) for nr in range(0, 460)] + [(nr, 0xC00000B7) for nr in range(0, 4)]
    verdicts = set()
    for nr, arch in cases:
        for first_arg in first_args:
            data = seccomp_data(nr, arch, first_arg)
            verdict = run_classic_bpf(tree, data)
            assert verdict == run_classic_bpf(linear, data), (nr, hex(arch), hex(first_arg))
            verdicts.add(verdict)
    # Allowed, refused with an errno, and the foreign arch killed: the comparison covered each kind.
    assert {0x7FFF0000, 0x00050000 | 1} <= verdicts and len(verdicts) >= 3


def test_enosys_stub_instructions_on_x86_64():
    assert decode(seccomp.enosys_program(449, "x86_64")) == [
        (0x20, 0, 0, 4),  # A = seccomp_data.arch
        (0x15, 0, 4, 0xC000003E),  # not AUDIT_ARCH_X86_64: to ALLOW
        (0x20, 0, 0, 0),  # A = seccomp_data.nr
        (0x45, 2, 0, 0x40000000),  # an x32 syscall: to ALLOW
        (0x25, 0, 1, 449),  # nr <= 449: to ALLOW
        (0x06, 0, 0, 0x00050000 | 38),  # ERRNO(ENOSYS)
        (0x06, 0, 0, 0x7FFF0000),  # ALLOW
    ]


def test_enosys_stub_instructions_on_aarch64():
    assert decode(seccomp.enosys_program(449, "aarch64")) == [
        (0x20, 0, 0, 4),
        (0x15, 0, 3, 0xC00000B7),
        (0x20, 0, 0, 0),
        (0x25, 0, 1, 449),
        (0x06, 0, 0, 0x00050026),
        (0x06, 0, 0, 0x7FFF0000),
    ]


# ---- the cache -----------------------------------------------------------------------------------------------------


@pytest.fixture
def compile_count(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = seccomp.compile_programs

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(seccomp, "compile_programs", counting)
    return calls


def test_cache_compiles_once_and_files_round_trip(tmp_path, compile_count):
    directory = tmp_path / "seccomp"
    cache = SeccompCache(directory)
    path = cache.program_file(default_profile(), NO_CAPS, strict_names=False)
    assert cache.program_file(default_profile(), frozenset(), strict_names=False) == path
    assert len(compile_count) == 1
    assert Path(path).parent == directory and Path(path).name.endswith(".bpf") and len(Path(path).stem) == 64
    assert os.stat(directory).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    expected = seccomp.compile_programs(default_profile(), NO_CAPS, strict_names=False)
    assert marshal.loads(Path(path).read_bytes()) == expected
    assert [p.name for p in directory.iterdir()] == [Path(path).name]
    # Another process (a new cache object) finds the file instead of compiling.
    compile_count.clear()
    assert SeccompCache(directory).program_file(default_profile(), NO_CAPS, strict_names=False) == path
    assert compile_count == []


def test_cache_keys_on_caps_host_and_strictness(tmp_path, compile_count):
    cache = SeccompCache(tmp_path)
    paths = {
        cache.program_file(default_profile(), NO_CAPS, strict_names=False),
        cache.program_file(default_profile(), SYS_ADMIN, strict_names=False),
        cache.program_file(default_profile(), SYS_ADMIN, strict_names=True),
        SeccompCache(tmp_path, kernel=(4, 7)).program_file(default_profile(), NO_CAPS, strict_names=False),
        SeccompCache(tmp_path, machine="aarch64").program_file(default_profile(), NO_CAPS, strict_names=False),
    }
    assert len(paths) == len(compile_count) == 5
    with_admin = marshal.loads(Path(cache.program_file(default_profile(), SYS_ADMIN, strict_names=False)).read_bytes())
    assert with_admin != marshal.loads(Path(cache.program_file(default_profile(), NO_CAPS, strict_names=False)).read_bytes())


def test_cache_compiles_once_under_concurrent_callers(tmp_path, compile_count):
    cache = SeccompCache(tmp_path)
    results: list[str] = []

    def ask() -> None:
        results.append(cache.program_file(default_profile(), NO_CAPS, strict_names=False))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 8
    assert len(compile_count) == 1


def test_a_profile_that_fails_to_compile_leaves_no_file(tmp_path):
    typo = Profile("SCMP_ACT_ERRNO", syscalls=(SyscallRule(("raed",), "SCMP_ACT_ALLOW"),))
    with pytest.raises(InvalidArgument, match="raed"):
        SeccompCache(tmp_path).program_file(typo, NO_CAPS, strict_names=True)
    assert list(tmp_path.iterdir()) == []


# ---- the real kernel -----------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import ctypes, errno, json, marshal, os, sys
    from services.common import linux

    programs = marshal.loads(open(sys.argv[1], "rb").read())
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    for program in programs:
        linux.load_seccomp(program)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.personality.argtypes = [ctypes.c_ulong]
    libc.syscall.restype = ctypes.c_long

    def outcome(result):
        return "ok" if result != -1 else errno.errorcode[ctypes.get_errno()]

    print(json.dumps({
        "unshare_user": outcome(libc.unshare(linux.CLONE_NEWUSER)),
        "keyctl": outcome(libc.syscall(250, 0, 0, 0, 0, 0)),
        "mount": outcome(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)),
        "personality_query": outcome(libc.personality(0xFFFFFFFF)),
        "socket_vsock": outcome(libc.socket(40, 1, 0)),
        "socket_unix": outcome(libc.socket(1, 1, 0)),
        "clone3": outcome(libc.syscall(435, None, 0)),
        "syscall_460": outcome(libc.syscall(460, 0, 0, 0, 0, 0)),
        "getpid": libc.getpid() == os.getpid(),
    }), flush=True)
    sys.stdin.read()
""")


@pytest.mark.root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")
def test_the_default_profile_in_a_real_process(tmp_path):
    path = SeccompCache(tmp_path).program_file(default_profile(), NO_CAPS, strict_names=False)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        results = json.loads(child.stdout.readline())
        status = Path(f"/proc/{child.pid}/status").read_text()
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert results == {
        "unshare_user": "EPERM",
        "keyctl": "EPERM",
        "mount": "EPERM",
        "personality_query": "ok",
        "socket_vsock": "EPERM",
        "socket_unix": "ok",
        "clone3": "ENOSYS",
        "syscall_460": "ENOSYS",
        "getpid": True,
    }
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if line.startswith("Seccomp"))
    assert fields["Seccomp"] == "2"
    assert fields.get("Seccomp_filters", "2") == "2"
    assert child.returncode == 0
