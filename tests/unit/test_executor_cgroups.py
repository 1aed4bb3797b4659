"""Cgroup values and writes of the executor against temp dirs laid out as cgroup v1 and v2 hierarchies."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.executor.cgroup_layout import CgroupLayout
from services.executor.cgroup_tree import subtree
from services.executor.cgroups import (
    CgroupV1,
    CgroupV2,
    Limits,
    cgroup_from_record,
    cpu_quota_us,
    detect_cgroup_mode,
    join_cgroup_path,
    oom_kills,
    parse_counter,
    parse_cpuset,
    parse_proc_cgroup,
    v1_writes,
    v2_cpu_max,
    v2_writes,
    validate_limits,
)

V1 = ("cpu", "cpuacct", "cpuset", "memory", "pids")


@pytest.fixture
def v1_root(tmp_path: Path) -> Path:
    for controller in V1:
        (tmp_path / controller).mkdir()
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    return tmp_path


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    return tmp_path


def test_cpu_conversions_never_format_badly():
    assert cpu_quota_us(1_500_000_000) == 150_000
    assert cpu_quota_us(500_000_000) == 50_000
    assert cpu_quota_us(200_000_000) == 20_000  # the seed's `-cpu 20`
    assert v2_cpu_max(1_500_000_000) == "150000 100000"
    assert v2_cpu_max(0) == "max 100000"
    assert "%" not in v2_cpu_max(10_000_000)


def test_cpuset_lists():
    assert parse_cpuset("0") == [0]
    assert parse_cpuset("0-2,5") == [0, 1, 2, 5]
    assert parse_cpuset("3,1-2") == [1, 2, 3]
    for bad in ("", "a", "2-1", "-1", "0-", "1,,2"):
        with pytest.raises(InvalidArgument):
            parse_cpuset(bad)


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        (Limits(memory_bytes=1024), "too small"),
        (Limits(memory_bytes=-1), "too small"),
        (Limits(nano_cpus=9_999_999), "too small"),
        (Limits(nano_cpus=3_000_000_000), "more than the 2 CPUs"),
        (Limits(pids_limit=-5), "negative"),
        (Limits(cpuset_cpus="0-2"), "CPU 2"),
    ],
)
def test_limits_validation(limits, fragment):
    with pytest.raises(InvalidArgument, match=fragment):
        validate_limits(limits, online_cpus=2)


def test_valid_limits_pass():
    validate_limits(Limits(), online_cpus=2)
    validate_limits(Limits(memory_bytes=6 << 20, nano_cpus=10_000_000, cpuset_cpus="0-1", pids_limit=1), online_cpus=2)


def test_v1_writes_order_and_memsw():
    limits = Limits(memory_bytes=64 << 20, nano_cpus=500_000_000, cpuset_cpus="1", pids_limit=10)
    assert v1_writes(limits, has_memsw=True) == [
        ("cpuset", "cpuset.cpus", "1"),
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(64 << 20)),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("pids", "pids.max", "10"),
    ]
    assert ("memory", "memory.memsw.limit_in_bytes", str(64 << 20)) not in v1_writes(limits, has_memsw=False)
    assert v1_writes(Limits(), has_memsw=True) == []


def test_v2_writes():
    limits = Limits(memory_bytes=1 << 30, nano_cpus=1_500_000_000, cpuset_cpus="0", pids_limit=64)
    assert v2_writes(limits, has_swap=True) == [
        ("cpuset.cpus", "0"),
        ("memory.max", str(1 << 30)),
        ("memory.swap.max", "0"),
        ("cpu.max", "150000 100000"),
        ("pids.max", "64"),
    ]


def test_proc_cgroup_parsing():
    text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/user.slice\n"
    paths = parse_proc_cgroup(text)
    assert paths["memory"] == "/process_api/abc"
    assert paths["cpu"] == paths["cpuacct"] == "/x"
    assert paths[""] == "/user.slice"
    assert paths["name=systemd"] == "/"


def test_counters():
    assert parse_counter("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill") == 2
    assert parse_counter("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n", "oom_kill") == 1
    assert parse_counter("usage_usec 1500\nuser_usec 1000\n", "usage_usec") == 1500
    assert parse_counter("oom_kill_disable 1\n", "oom_kill") == 0


def test_oom_kills_reads_a_file(tmp_path):
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert oom_kills(str(tmp_path / "memory.oom_control")) == 3
    assert oom_kills(str(tmp_path / "missing")) == 0


def test_cgroup_paths_join():
    assert join_cgroup_path("/process_api/abc", "mydocker") == "/process_api/abc/mydocker"
    assert join_cgroup_path("/", "mydocker") == "/mydocker"
    assert join_cgroup_path("/a", "/abs/parent") == "/abs/parent"
    assert join_cgroup_path("/a/", "b//c/") == "/a/b/c"
    with pytest.raises(InvalidArgument):
        join_cgroup_path("/a", "../escape")


def test_detect_mode(tmp_path):
    assert detect_cgroup_mode(tmp_path) == "v1"
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    assert detect_cgroup_mode(tmp_path) == "hybrid"
    (tmp_path / "cgroup.controllers").write_text("cpu")
    assert detect_cgroup_mode(tmp_path) == "v2"


def test_layout_v1_is_under_the_executors_own_cgroup_per_hierarchy(v1_root):
    own = {"memory": "/process_api/abc", "cpu": "/", "cpuacct": "/", "cpuset": "/", "pids": "/p"}
    layout = CgroupLayout(v1_root, "hybrid", own)
    cgroup = layout.container("1234567890")
    assert isinstance(cgroup, CgroupV1)
    assert cgroup.dir("memory") == v1_root / "memory/process_api/abc/mydocker/1234567890"
    assert cgroup.dir("cpu") == v1_root / "cpu/mydocker/1234567890"
    assert cgroup.dir("pids") == v1_root / "pids/p/mydocker/1234567890"
    assert layout.shims().dir("memory") == v1_root / "memory/process_api/abc/mydocker/shims"
    absolute = CgroupLayout(v1_root, "v1", own, parent="/mdk-test")
    assert absolute.container("1").dir("memory") == v1_root / "memory/mdk-test/1"
    relative = CgroupLayout(v1_root, "v1", own, parent="mdk-test")
    assert relative.container("1").dir("memory") == v1_root / "memory/process_api/abc/mdk-test/1"


def test_v1_create_copies_cpuset_down_and_applies_limits(v1_root):
    layout = CgroupLayout(v1_root, "v1", {c: "/" for c in V1})
    cgroup = layout.container("42")
    # A kernel with swap accounting has the memsw file in every new memory cgroup.
    cgroup.dir("memory").mkdir(parents=True)
    (cgroup.dir("memory") / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    cgroup.create()
    for level in (v1_root / "cpuset" / "mydocker", cgroup.dir("cpuset")):
        assert (level / "cpuset.cpus").read_text() == "0-3"
        assert (level / "cpuset.mems").read_text() == "0"
    cgroup.apply(Limits(memory_bytes=32 << 20, nano_cpus=250_000_000, cpuset_cpus="1-2", pids_limit=7))
    assert (cgroup.dir("memory") / "memory.limit_in_bytes").read_text() == str(32 << 20)
    assert (cgroup.dir("memory") / "memory.memsw.limit_in_bytes").read_text() == str(32 << 20)
    assert (cgroup.dir("cpu") / "cpu.cfs_quota_us").read_text() == "25000"
    assert (cgroup.dir("cpu") / "cpu.cfs_period_us").read_text() == "100000"
    assert (cgroup.dir("cpuset") / "cpuset.cpus").read_text() == "1-2"
    assert (cgroup.dir("cpuset") / "cpuset.mems").read_text() == "0"
    assert (cgroup.dir("pids") / "pids.max").read_text() == "7"
    assert cgroup.procs_files() == [str(cgroup.dir(c) / "cgroup.procs") for c in V1]
    # A container's init and its shim join through `tasks` (one thread, no global lock: cgroup_join.py).
    assert cgroup.join_files() == [str(cgroup.dir(c) / "tasks") for c in V1]
    assert cgroup.oom_file() == str(cgroup.dir("memory") / "memory.oom_control")


def test_v1_cpuset_fills_a_level_another_create_left_empty(v1_root):
    (v1_root / "cpuset" / "mydocker").mkdir()
    (v1_root / "cpuset" / "mydocker" / "cpuset.cpus").write_text("\n")
    cgroup = CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("43")
    cgroup.create()
    assert (v1_root / "cpuset" / "mydocker" / "cpuset.cpus").read_text() == "0-3"
    assert (cgroup.dir("cpuset") / "cpuset.mems").read_text() == "0"


def test_v1_applies_nothing_without_limits(v1_root):
    cgroup = CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("7")
    cgroup.create()
    cgroup.apply(Limits())
    assert not (cgroup.dir("memory") / "memory.limit_in_bytes").exists()
    assert not (cgroup.dir("cpu") / "cpu.cfs_quota_us").exists()


def test_v1_co_mounted_controllers_share_one_directory(tmp_path):
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    (tmp_path / "memory").mkdir()
    cgroup = CgroupLayout(tmp_path, "v1", {}).container("9")
    assert set(cgroup.paths) == {"cpu", "cpuacct", "memory"}
    assert len(cgroup.dirs()) == 2
    assert len(cgroup.procs_files()) == 2


def test_v1_remove_and_record_round_trip(v1_root):
    cgroup = CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("5")
    for controller in ("cpu", "cpuacct", "memory", "pids"):
        cgroup.dir(controller).mkdir(parents=True)
    (v1_root / "cpuset" / "mydocker" / "5").mkdir(parents=True)
    again = cgroup_from_record(cgroup.to_record())
    assert again.dirs() == cgroup.dirs()
    assert cgroup.exists()
    cgroup.remove()
    assert not cgroup.exists()
    cgroup.remove()  # idempotent


def test_v1_pids_reads_cgroup_procs_of_every_hierarchy(v1_root):
    cgroup = CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("5")
    assert cgroup.pids() == []
    cgroup.dir("pids").mkdir(parents=True)
    (cgroup.dir("pids") / "cgroup.procs").write_text("10\n11\n")
    assert cgroup.pids() == [10, 11]
    # A cgroup left in some hierarchies only (a create or a remove cut short) still shows its members.
    cgroup.dir("memory").mkdir(parents=True)
    (cgroup.dir("memory") / "cgroup.procs").write_text("11\n12\n")
    assert cgroup.pids() == [10, 11, 12]


def test_cgroups_nested_below_a_container_count_as_its_own_and_go_first(v1_root, v2_root):
    """A privileged container can mount cgroupfs (its own cgroup is the root there) and nest cgroups: their
    members are the container's, and they are removed before it (a cgroup with children is EBUSY)."""
    for cgroup, top in (
        (CgroupV2(v2_root, "/mydocker/5"), v2_root / "mydocker" / "5"),
        (CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("5"), v1_root / "pids" / "mydocker" / "5"),
    ):
        deeper = top / "inner" / "deeper"
        deeper.mkdir(parents=True)
        (top / "cgroup.procs").write_text("10\n")
        (deeper / "cgroup.procs").write_text("11\n12\n")
        assert cgroup.pids() == [10, 11, 12]
        assert subtree(top) == [deeper, deeper.parent, top]
        (top / "cgroup.procs").unlink()
        (deeper / "cgroup.procs").unlink()
        cgroup.remove()
        assert not top.exists() and subtree(top) == []


def test_layout_lists_container_cgroups_of_any_hierarchy_but_not_the_shims(v1_root):
    own = {c: "/" for c in V1} | {"memory": "/process_api/abc"}
    layout = CgroupLayout(v1_root, "v1", own)
    assert layout.child_names() == []
    layout.shims().dir("pids").mkdir(parents=True)
    layout.container("111").dir("memory").mkdir(parents=True)
    layout.container("222").dir("cpu").mkdir(parents=True)
    (layout.parent_dirs()[0] / "a-file").write_text("")
    assert layout.child_names() == ["111", "222"]
    assert layout.parent_path() == "/mydocker (memory: /process_api/abc/mydocker)"
    assert CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).parent_path() == "/mydocker"


def test_layout_v2_lists_and_names_its_parent(v2_root):
    layout = CgroupLayout(v2_root, "v2", {"": "/system.slice/x.service"})
    layout.container("9").path().mkdir(parents=True)
    layout.shims().path().mkdir(parents=True)
    assert layout.child_names() == ["9"]
    assert layout.parent_path() == "/system.slice/x.service/mydocker"


def test_last_change_is_the_latest_mtime_of_the_existing_dirs(v1_root):
    import os

    cgroup = CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("5")
    assert cgroup.last_change() == 0
    cgroup.dir("cpu").mkdir(parents=True)
    cgroup.dir("pids").mkdir(parents=True)
    os.utime(cgroup.dir("cpu"), (100, 100))
    os.utime(cgroup.dir("pids"), (200, 200))
    assert cgroup.last_change() == 200


def test_v2_enables_controllers_along_the_path_and_applies_limits(v2_root):
    layout = CgroupLayout(v2_root, "v2", {"": "/system.slice/mydocker.service"})
    cgroup = layout.container("77")
    assert isinstance(cgroup, CgroupV2)
    assert cgroup.path() == v2_root / "system.slice/mydocker.service/mydocker/77"
    for level in ("system.slice", "system.slice/mydocker.service", "system.slice/mydocker.service/mydocker"):
        (v2_root / level).mkdir(parents=True, exist_ok=True)
        (v2_root / level / "cgroup.controllers").write_text("cpuset cpu memory pids\n")
    (v2_root / "system.slice" / "cgroup.subtree_control").write_text("cpu memory\n")
    cgroup.create()
    assert (v2_root / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory +pids"
    # Only what is missing is asked for.
    assert (v2_root / "system.slice" / "cgroup.subtree_control").read_text() == "+cpuset +pids"
    assert (v2_root / "system.slice/mydocker.service/mydocker/cgroup.subtree_control").read_text() == "+cpu +cpuset +memory +pids"
    (cgroup.path() / "memory.swap.max").write_text("max\n")
    cgroup.apply(Limits(memory_bytes=128 << 20, nano_cpus=1_500_000_000, cpuset_cpus="0", pids_limit=20))
    assert (cgroup.path() / "memory.max").read_text() == str(128 << 20)
    assert (cgroup.path() / "memory.swap.max").read_text() == "0"
    assert (cgroup.path() / "cpu.max").read_text() == "150000 100000"
    assert (cgroup.path() / "cpuset.cpus").read_text() == "0"
    assert (cgroup.path() / "pids.max").read_text() == "20"
    assert cgroup.procs_files() == [str(cgroup.path() / "cgroup.procs")]
    assert cgroup.join_files() == cgroup.procs_files()
    assert cgroup.oom_file() == str(cgroup.path() / "memory.events")
    (cgroup.path() / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\n")
    assert cgroup.cpu_usage_ns() == 2_500_000
    assert layout.shims().path() == v2_root / "system.slice/mydocker.service/mydocker/shims"
    assert cgroup_from_record(cgroup.to_record()).path() == cgroup.path()


def test_v2_busy_parent_is_a_clear_error(v2_root, monkeypatch):
    import errno

    from services.executor import cgroups

    def busy(path, value):
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(cgroups, "write_value", busy)
    with pytest.raises(FailedPrecondition, match="MYDOCKER_CGROUP_PARENT"):
        CgroupV2(v2_root, "/held/mydocker/1").enable_controllers()


def test_v2_executor_alone_in_its_cgroup_moves_into_a_leaf(v2_root):
    own = v2_root / "system.slice" / "mydocker.service"
    own.mkdir(parents=True)
    (own / "cgroup.procs").write_text("4242\n")
    layout = CgroupLayout(v2_root, "v2", {"": "/system.slice/mydocker.service"})
    layout.prepare(4242)
    assert (own / "executor" / "cgroup.procs").read_text() == "4242"


def test_v2_executor_sharing_its_cgroup_is_left_alone(v2_root):
    own = v2_root / "user.slice"
    own.mkdir()
    (own / "cgroup.procs").write_text("4242\n777\n")
    CgroupLayout(v2_root, "v2", {"": "/user.slice"}).prepare(4242)
    assert not (own / "executor").exists()
    # An absolute parent elsewhere needs nothing moved.
    CgroupLayout(v2_root, "v2", {"": "/user.slice"}, parent="/mydocker").prepare(4242)
    assert not (own / "executor").exists()


def test_prepare_is_a_no_op_on_v1(v1_root):
    CgroupLayout(v1_root, "v1", {c: "/x" for c in V1}).prepare(1)
    assert sorted(p.name for p in v1_root.iterdir()) == sorted(V1)


def test_v1_remove_if_empty_removes_empty_cgroups_and_stops_at_one_in_use(v1_root):
    cgroup = CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("6")
    for directory in cgroup.dirs():
        directory.mkdir(parents=True)
    assert cgroup.remove_if_empty()
    assert not cgroup.exists()
    assert cgroup.remove_if_empty()  # gone already: nothing to do
    # A nested cgroup (here a plain directory: ENOTEMPTY; a real one is EBUSY) keeps it.
    for directory in cgroup.dirs():
        directory.mkdir(parents=True)
    (cgroup.dir("pids") / "nested").mkdir()
    assert not cgroup.remove_if_empty()
    assert cgroup.dir("pids").is_dir()


def test_v2_remove_if_empty(v2_root):
    cgroup = CgroupLayout(v2_root, "v2", {"": "/system.slice/mydocker.service"}).container("8")
    cgroup.path().mkdir(parents=True)
    (cgroup.path() / "nested").mkdir()
    assert not cgroup.remove_if_empty()
    (cgroup.path() / "nested").rmdir()
    assert cgroup.remove_if_empty()
    assert not cgroup.path().exists()


def test_remove_if_empty_leaves_a_real_cgroup_with_a_member():
    """The delete skips killing members only when rmdir proves there are none: the kernel says EBUSY."""
    import secrets
    import subprocess
    import time

    layout = CgroupLayout.from_host(parent=f"mdk-unit-{secrets.token_hex(4)}")
    cgroup = layout.container("member")
    cgroup.create()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for procs in cgroup.procs_files():
            Path(procs).write_text(str(sleeper.pid))
        assert not cgroup.remove_if_empty()
        assert cgroup.exists()
        assert sleeper.pid in cgroup.pids()
    finally:
        sleeper.kill()
        sleeper.wait()
    deadline = time.monotonic() + 10
    while cgroup.pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cgroup.remove_if_empty()
    assert not cgroup.exists()
    assert layout.remove_parent()


def test_v1_exists_everywhere_needs_every_hierarchy(v1_root):
    cgroup = CgroupLayout(v1_root, "v1", {c: "/" for c in V1}).container("3")
    assert not cgroup.exists_everywhere()
    cgroup.create()
    assert cgroup.exists_everywhere()
    cgroup.dir("pids").rmdir()
    assert cgroup.exists() and not cgroup.exists_everywhere()
