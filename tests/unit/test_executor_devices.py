"""Device rules: --device parsing, v1 strings, the v2 eBPF program decoded and interpreted, both kernels enforcing."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.executor.cgroups import CgroupV1, CgroupV2
from services.common.security import DeviceMapping, parse_device
from services.executor.cgroup_tree import rmdir_when_empty
from services.executor.devices import (
    ALLOW_ALL,
    DEFAULT_ALLOWED,
    DENY_ALL,
    DeviceRule,
    apply,
    device_program,
    format_v1,
    host_devices,
    resolve_device,
    resolve_devices,
    v1_writes,
)
from services.executor.plan import DeviceSpec

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_DEVICES = CGROUP_ROOT / "devices"
UNIFIED = CGROUP_ROOT / "unified"

BLOCK, CHAR = 1, 2
MKNOD, READ, WRITE = 1, 2, 4


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp dir on a mount that allows device nodes, removed afterwards (pytest keeps its tmp_path dirs)."""
    directory = Path(tempfile.mkdtemp(prefix="mdk-devtest-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _mknod(path: Path, kind: int, major: int, minor: int, mode: int = 0o666) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, mode | kind, os.makedev(major, minor))
    # mknod applies the umask.
    os.chmod(path, mode)


# ---------------------------------------------------------------------------------------------------------------
# Rules and their v1 form


def test_rules_validate_and_compare_by_access_set():
    assert DeviceRule("c", 1, 3, "wr") == DeviceRule("c", 1, 3, "rw")
    assert DeviceRule("c", 1, 3, "mwr").access == "rwm"
    for bad in (
        lambda: DeviceRule("x", 1, 3, "r"),
        lambda: DeviceRule("c", -2, 3, "r"),
        lambda: DeviceRule("c", 1, 2**31, "r"),
        lambda: DeviceRule("c", 1, 3, ""),
        lambda: DeviceRule("c", 1, 3, "rx"),
        lambda: DeviceRule("c", 1, 3, "rr"),
        # v1 reads "a 1:3 r" as "everything": refused instead of silently widened.
        lambda: DeviceRule("a", 1, 3, "rwm"),
        lambda: DeviceRule("a", -1, -1, "r"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            bad()
        assert "\n" not in str(caught.value)


def test_v1_syntax():
    assert format_v1(DeviceRule("c", 1, 3, "rwm")) == "c 1:3 rwm"
    assert format_v1(ALLOW_ALL) == "a *:* rwm"
    assert format_v1(DeviceRule("c", 136, -1, "rwm")) == "c 136:* rwm"
    assert format_v1(DeviceRule("b", -1, -1, "m")) == "b *:* m"
    assert format_v1(DeviceRule("b", 8, 0, "r")) == "b 8:0 r"


def test_default_rules_are_runcs_and_dockers():
    assert [format_v1(rule) for rule in DEFAULT_ALLOWED] == [
        "c *:* m",
        "b *:* m",
        "c 1:3 rwm",
        "c 1:8 rwm",
        "c 1:7 rwm",
        "c 5:0 rwm",
        "c 1:5 rwm",
        "c 1:9 rwm",
        "c 5:1 rwm",
        "c 136:* rwm",
        "c 5:2 rwm",
        "c 10:200 rwm",
    ]
    assert all(rule.allow for rule in DEFAULT_ALLOWED)


def test_v1_writes_switch_to_deny_by_default_first():
    rules = [DeviceRule("c", 1, 3, "rwm"), DeviceRule("c", 136, -1, "rw")]
    assert v1_writes(rules) == [("devices.deny", "a"), ("devices.allow", "c 1:3 rwm"), ("devices.allow", "c 136:* rw")]
    assert v1_writes([]) == [("devices.deny", "a")]
    # A leading deny-all (Docker's spec starts with one) is what we do anyway.
    assert v1_writes([DENY_ALL, *rules]) == v1_writes(rules)
    assert v1_writes([ALLOW_ALL]) == [("devices.deny", "a"), ("devices.allow", "a *:* rwm")]


def test_deny_rules_other_than_a_leading_deny_all_are_refused():
    for rules in ([DeviceRule("b", 8, 0, "rwm", allow=False)], [DeviceRule("c", 1, 3, "r"), DENY_ALL]):
        with pytest.raises(InvalidArgument, match="denies access"):
            v1_writes(rules)
        with pytest.raises(InvalidArgument, match="denies access"):
            device_program(rules)


# ---------------------------------------------------------------------------------------------------------------
# --device


def test_device_option_defaults():
    assert parse_device("/dev/sda") == DeviceMapping("/dev/sda", "/dev/sda", "rwm")
    assert parse_device("/dev/sda:/dev/xvda") == DeviceMapping("/dev/sda", "/dev/xvda", "rwm")
    assert parse_device("/dev/sda:/dev/xvda:r") == DeviceMapping("/dev/sda", "/dev/xvda", "r")
    # Docker reads a lone second field of permission letters as the permissions.
    assert parse_device("/dev/sda:mr") == DeviceMapping("/dev/sda", "/dev/sda", "rm")
    assert parse_device("/dev/sda:/dev/xvda:wr").permissions == "rw"
    assert parse_device("/dev//snd/:/dev/sound/").container_path == "/dev/sound"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("dev/sda", "not absolute"),
        ("", "not absolute"),
        ("/dev/sda:/dev/xvda:", "empty permissions"),
        ("/dev/sda:/dev/xvda:rwx", "only use r, w and m"),
        ("/dev/sda:/dev/xvda:rr", "only use r, w and m"),
        ("/dev/sda:/dev/xvda:r:w", 'too many ":"'),
        ("/dev/sda:xvda", "neither an absolute container path nor permissions"),
        ("/dev/sda:xvda:r", 'container path "xvda" is not absolute'),
        ("/dev/sda\0", "NUL"),
    ],
)
def test_device_option_errors_are_one_clear_line(text, complaint):
    with pytest.raises(InvalidArgument) as caught:
        parse_device(text)
    message = str(caught.value)
    assert complaint in message
    assert "\n" not in message
    assert "--device" in message


def test_resolve_device_copies_the_host_node():
    spec, rule = resolve_device(parse_device("/dev/null:/dev/mynull:r"))
    host = os.stat("/dev/null")
    assert spec == DeviceSpec("/dev/mynull", 1, 3, stat.S_IMODE(host.st_mode), "c", host.st_uid, host.st_gid)
    assert rule == DeviceRule("c", 1, 3, "r")


def test_resolve_device_refuses_what_is_not_a_device(scratch):
    regular = scratch / "file"
    regular.write_text("x")
    for path, complaint in ((regular, "not a character or block device"), (scratch / "missing", "no such file")):
        with pytest.raises(InvalidArgument) as caught:
            resolve_device(DeviceMapping(str(path), "/dev/x"))
        assert str(path) in str(caught.value) and complaint in str(caught.value)
    with pytest.raises(InvalidArgument, match="not a character or block device"):
        resolve_device(DeviceMapping(str(scratch), "/dev/x"))
    with pytest.raises(InvalidArgument, match="holds no character or block devices"):
        resolve_devices(DeviceMapping(str(scratch), "/dev/x"))


@pytest.mark.root
def test_resolve_device_follows_symlinks_and_keeps_mode_and_owner(scratch):
    node = scratch / "ttyX"
    _mknod(node, stat.S_IFCHR, 4, 64, 0o620)
    os.chown(node, 1234, 5678)
    (scratch / "alias").symlink_to("ttyX")
    spec, rule = resolve_device(parse_device(f"{scratch}/alias:/dev/ttyS0:rw"))
    assert spec == DeviceSpec("/dev/ttyS0", 4, 64, 0o620, "c", 1234, 5678)
    assert rule == DeviceRule("c", 4, 64, "rw")
    _mknod(scratch / "disk", stat.S_IFBLK, 8, 16, 0o660)
    spec, rule = resolve_device(DeviceMapping(str(scratch / "disk"), "/dev/xvdb", "r"))
    assert (spec.kind, spec.major, spec.minor, spec.mode) == ("b", 8, 16, 0o660)
    assert rule == DeviceRule("b", 8, 16, "r")


@pytest.mark.root
def test_resolve_devices_walks_a_directory_like_docker(scratch):
    sound = scratch / "snd"
    _mknod(sound / "controlC0", stat.S_IFCHR, 116, 0)
    _mknod(sound / "by-path" / "timer", stat.S_IFCHR, 116, 33, 0o660)
    (sound / "README").write_text("not a device")
    os.mkfifo(sound / "fifo")
    (sound / "seq").symlink_to("controlC0")
    (sound / "dangling").symlink_to("nowhere")
    (scratch / "link-to-snd").symlink_to("snd")
    found = resolve_devices(parse_device(f"{scratch}/link-to-snd:/dev/sound:rw"))
    assert [(spec.path, spec.major, spec.minor, spec.mode) for spec, _ in found] == [
        ("/dev/sound/controlC0", 116, 0, 0o666),
        ("/dev/sound/seq", 116, 0, 0o666),
        ("/dev/sound/by-path/timer", 116, 33, 0o660),
    ]
    assert {rule for _, rule in found} == {DeviceRule("c", 116, 0, "rw"), DeviceRule("c", 116, 33, "rw")}
    single = resolve_devices(DeviceMapping(str(sound / "controlC0"), "/dev/snd0"))
    assert single == [(DeviceSpec("/dev/snd0", 116, 0, 0o666, "c"), DeviceRule("c", 116, 0, "rwm"))]


@pytest.mark.root
def test_host_devices_skips_what_runc_skips(scratch):
    dev = scratch / "dev"
    _mknod(dev / "null", stat.S_IFCHR, 1, 3)
    _mknod(dev / "loop0", stat.S_IFBLK, 7, 0, 0o660)
    os.chown(dev / "loop0", 0, 6)
    _mknod(dev / "snd" / "controlC0", stat.S_IFCHR, 116, 0, 0o660)
    skipped = ("console", "pts/0", "shm/x", "mqueue/x", "fd/x", ".udev/x", ".lxc/x", ".lxd-mounts/x", "snd/console")
    for name in skipped:
        _mknod(dev / name, stat.S_IFCHR, 5, 1)
    os.mkfifo(dev / "initctl")
    (dev / "core").write_text("")
    (dev / "stdin").symlink_to("null")
    (dev / "sound").symlink_to("snd")
    assert host_devices(dev) == [
        DeviceSpec("/dev/loop0", 7, 0, 0o660, "b", 0, 6),
        DeviceSpec("/dev/null", 1, 3, 0o666, "c", 0, 0),
        DeviceSpec("/dev/snd/controlC0", 116, 0, 0o660, "c", 0, 0),
    ]


def test_host_devices_of_this_host_look_like_dev():
    found = host_devices()
    paths = {spec.path for spec in found}
    assert "/dev/null" in paths
    assert "/dev/console" not in paths
    assert not any(path.startswith(("/dev/pts/", "/dev/shm/", "/dev/mqueue/")) for path in paths)
    assert all(spec.kind in ("c", "b") for spec in found)


def test_apply_refuses_a_v1_cgroup_without_the_devices_hierarchy(tmp_path):
    with pytest.raises(FailedPrecondition, match="no devices hierarchy"):
        apply(CgroupV1(tmp_path, {"memory": "/x"}), DEFAULT_ALLOWED)


# ---------------------------------------------------------------------------------------------------------------
# The eBPF program: decoded, then run by a tiny interpreter of the opcodes it uses

LDX_MEM_W, AND32_K, RSH32_K, MOV32_K, MOV32_X, JNE_K, JNE_X, EXIT = 0x61, 0x54, 0x74, 0xB4, 0xBC, 0x55, 0x5D, 0x95
CTX_ADDRESS = 0x1000
U32, U64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


def decode(program: bytes) -> list[tuple[int, int, int, int, int]]:
    """(code, dst, src, off, imm) per struct bpf_insn; this x86_64 host is little-endian, dst in the low nibble."""
    assert len(program) % 8 == 0
    decoded = []
    for offset in range(0, len(program), 8):
        code, registers, off, imm = struct.unpack_from("<BBhi", program, offset)
        decoded.append((code, registers & 0xF, registers >> 4, off, imm))
    return decoded


def run(program: bytes, device_type: int, access: int, major: int, minor: int) -> int:
    context = struct.pack("<III", access << 16 | device_type, major, minor)
    registers = [0] * 11
    registers[1] = CTX_ADDRESS
    instructions = decode(program)
    pc = 0
    while True:
        code, dst, src, off, imm = instructions[pc]
        pc += 1
        if code == LDX_MEM_W:
            registers[dst] = struct.unpack_from("<I", context, registers[src] + off - CTX_ADDRESS)[0]
        elif code == AND32_K:
            registers[dst] = registers[dst] & imm & U32
        elif code == RSH32_K:
            registers[dst] = (registers[dst] & U32) >> imm
        elif code == MOV32_K:
            registers[dst] = imm & U32
        elif code == MOV32_X:
            registers[dst] = registers[src] & U32
        elif code in (JNE_K, JNE_X):
            # 64-bit compare; the immediate is sign-extended.
            other = imm & U64 if code == JNE_K else registers[src]
            assert off >= 0, "backward jumps would be refused by the verifier"
            if registers[dst] != other:
                pc += off
        elif code == EXIT:
            return registers[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc - 1}")


PROLOGUE = [
    (LDX_MEM_W, 2, 1, 0, 0),
    (AND32_K, 2, 0, 0, 0xFFFF),
    (LDX_MEM_W, 3, 1, 0, 0),
    (RSH32_K, 3, 0, 0, 16),
    (LDX_MEM_W, 4, 1, 4, 0),
    (LDX_MEM_W, 5, 1, 8, 0),
]


def test_program_instructions_one_by_one():
    rules = [DeviceRule("c", 1, 3, "rwm"), DeviceRule("c", 136, -1, "rw"), DeviceRule("b", -1, -1, "m")]
    assert decode(device_program(rules)) == [
        *PROLOGUE,
        # c 1:3 rwm: no access check for rwm; each mismatch jumps to instruction 11.
        (JNE_K, 2, 0, 4, CHAR),
        (JNE_K, 4, 0, 3, 1),
        (JNE_K, 5, 0, 2, 3),
        (MOV32_K, 0, 0, 0, 1),
        (EXIT, 0, 0, 0, 0),
        # c 136:* rw: (access & rw) != access -> next block at 18; no minor check.
        (JNE_K, 2, 0, 6, CHAR),
        (MOV32_X, 1, 3, 0, 0),
        (AND32_K, 1, 0, 0, READ | WRITE),
        (JNE_X, 1, 3, 3, 0),
        (JNE_K, 4, 0, 2, 136),
        (MOV32_K, 0, 0, 0, 1),
        (EXIT, 0, 0, 0, 0),
        # b *:* m: type and access only -> next block at 24.
        (JNE_K, 2, 0, 5, BLOCK),
        (MOV32_X, 1, 3, 0, 0),
        (AND32_K, 1, 0, 0, MKNOD),
        (JNE_X, 1, 3, 2, 0),
        (MOV32_K, 0, 0, 0, 1),
        (EXIT, 0, 0, 0, 0),
        # Nothing matched: deny.
        (MOV32_K, 0, 0, 0, 0),
        (EXIT, 0, 0, 0, 0),
    ]


def test_program_without_rules_denies_and_allow_all_accepts():
    assert decode(device_program([])) == [*PROLOGUE, (MOV32_K, 0, 0, 0, 0), (EXIT, 0, 0, 0, 0)]
    # Nothing may follow an unconditional accept: the verifier refuses unreachable instructions.
    assert decode(device_program([DeviceRule("c", 1, 3, "r"), ALLOW_ALL])) == [
        *PROLOGUE,
        (MOV32_K, 0, 0, 0, 1),
        (EXIT, 0, 0, 0, 0),
    ]
    assert device_program([DENY_ALL, *DEFAULT_ALLOWED]) == device_program(DEFAULT_ALLOWED)


def test_program_semantics_of_the_default_rules():
    program = device_program(DEFAULT_ALLOWED)
    assert run(program, CHAR, READ, 1, 3) == 1  # read /dev/null
    assert run(program, CHAR, READ | WRITE, 1, 3) == 1
    assert run(program, BLOCK, READ, 8, 0) == 0  # read /dev/sda
    assert run(program, CHAR, READ, 1, 11) == 0  # read /dev/kmsg
    assert run(program, BLOCK, MKNOD, 8, 0) == 1  # mknod of anything
    assert run(program, CHAR, MKNOD, 10, 229) == 1
    assert run(program, BLOCK, MKNOD | READ, 8, 0) == 0
    assert run(program, CHAR, READ | WRITE, 136, 0) == 1  # /dev/pts/* by the wildcard minor
    assert run(program, CHAR, READ | WRITE, 136, 999_999) == 1
    assert run(program, CHAR, READ | WRITE, 137, 0) == 0
    assert run(program, BLOCK, READ, 136, 0) == 0
    assert run(program, CHAR, READ | WRITE | MKNOD, 10, 200) == 1


def test_program_access_must_be_a_subset():
    program = device_program([DeviceRule("c", 4, 1, "r")])
    assert run(program, CHAR, READ, 4, 1) == 1
    assert run(program, CHAR, WRITE, 4, 1) == 0
    assert run(program, CHAR, READ | WRITE, 4, 1) == 0
    assert run(program, CHAR, MKNOD, 4, 1) == 0
    assert run(program, CHAR, READ, 4, 2) == 0


def _matches(rule: DeviceRule, device_type: int, access: int, major: int, minor: int) -> bool:
    letters = {letter for letter, bit in (("m", MKNOD), ("r", READ), ("w", WRITE)) if access & bit}
    return (
        (rule.kind == "a" or {"c": CHAR, "b": BLOCK}[rule.kind] == device_type)
        and letters <= set(rule.access)
        and rule.major in (-1, major)
        and rule.minor in (-1, minor)
    )


def test_program_agrees_with_the_rules_for_every_request():
    rule_lists = [
        DEFAULT_ALLOWED,
        [DeviceRule("b", 8, -1, "r"), DeviceRule("c", -1, 7, "wm"), DeviceRule("c", 1, 3, "rw")],
        [ALLOW_ALL],
    ]
    accesses = range(1, 8)
    for rules, device_type, access, major, minor in itertools.product(
        rule_lists, (CHAR, BLOCK), accesses, (1, 5, 8, 10, 136, 4095), (0, 1, 3, 7, 200, 2**20 - 1)
    ):
        expected = any(_matches(rule, device_type, access, major, minor) for rule in rules)
        assert run(device_program(rules), device_type, access, major, minor) == int(expected), (
            rules,
            device_type,
            access,
            major,
            minor,
        )


# ---------------------------------------------------------------------------------------------------------------
# The real kernel: a child probes devices before and after joining the cgroup

PROBE = r"""
import errno, json, os, stat, sys

procs, scratch = sys.argv[1], sys.argv[2]


def attempt(action):
    try:
        action()
        return "ok"
    except OSError as err:
        return errno.errorcode[err.errno]


def open_close(path, flags):
    os.close(os.open(path, flags | os.O_NONBLOCK))


def probes(tag):
    block = os.path.join(scratch, "sda-" + tag)
    kmsg = os.path.join(scratch, "kmsg-" + tag)
    return {
        "null": attempt(lambda: open_close("/dev/null", os.O_RDWR)),
        "mknod_block": attempt(lambda: os.mknod(block, 0o600 | stat.S_IFBLK, os.makedev(8, 0))),
        "open_block": attempt(lambda: open_close(block, os.O_RDONLY)),
        "host_kmsg": attempt(lambda: open_close("/dev/kmsg", os.O_RDONLY)),
        "mknod_kmsg": attempt(lambda: os.mknod(kmsg, 0o600 | stat.S_IFCHR, os.makedev(1, 11))),
        "open_kmsg": attempt(lambda: open_close(kmsg, os.O_RDONLY)),
    }


outside = probes("outside")
with open(procs, "w") as handle:
    handle.write(str(os.getpid()))
inside = probes("inside")
print(json.dumps({"outside": outside, "inside": inside}))
"""


def _run_probes(procs_file: Path, scratch: Path) -> dict[str, dict[str, str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(procs_file), str(scratch)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _assert_default_rules_enforced(results: dict[str, dict[str, str]]) -> None:
    outside, inside = results["outside"], results["inside"]
    # Without the cgroup nothing is refused for device-cgroup reasons (8:0 may well be ENXIO: no such disk here).
    assert outside["null"] == outside["mknod_block"] == outside["host_kmsg"] == "ok", outside
    assert outside["mknod_kmsg"] == outside["open_kmsg"] == "ok", outside
    assert outside["open_block"] != "EPERM", outside
    assert inside == {
        "null": "ok",
        "mknod_block": "ok",
        "open_block": "EPERM",
        "host_kmsg": "EPERM",
        "mknod_kmsg": "ok",
        "open_kmsg": "EPERM",
    }


@pytest.mark.root
def test_v1_devices_cgroup_enforces_the_default_rules(scratch):
    assert (V1_DEVICES / "devices.allow").exists(), f"no cgroup v1 devices hierarchy at {V1_DEVICES}: needed here"
    cgroup = CgroupV1(CGROUP_ROOT, {"devices": f"/mdk-devtest-{uuid.uuid4().hex[:8]}"})
    directory = cgroup.dir("devices")
    directory.mkdir()
    try:
        apply(cgroup, DEFAULT_ALLOWED)
        listed = {line for line in (directory / "devices.list").read_text().splitlines() if line}
        assert listed == {format_v1(rule) for rule in DEFAULT_ALLOWED}
        results = _run_probes(directory / "cgroup.procs", scratch)
    finally:
        rmdir_when_empty(directory, timeout=5)
    assert not directory.exists()
    _assert_default_rules_enforced(results)


@pytest.mark.root
def test_v2_device_program_enforces_the_default_rules(scratch):
    if not (UNIFIED / "cgroup.procs").exists():
        pytest.fail(f"no cgroup2 hierarchy mounted at {UNIFIED}: this test needs one (mount -t cgroup2 none {UNIFIED})")
    cgroup = CgroupV2(UNIFIED, f"/mdk-devtest-{uuid.uuid4().hex[:8]}")
    directory = cgroup.path()
    directory.mkdir()
    try:
        apply(cgroup, DEFAULT_ALLOWED)
        results = _run_probes(directory / "cgroup.procs", scratch)
    finally:
        rmdir_when_empty(directory, timeout=5)
    assert not directory.exists()
    _assert_default_rules_enforced(results)
