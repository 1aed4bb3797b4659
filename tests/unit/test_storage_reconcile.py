"""The storage reconcile planner on fake trees, plus scan and apply on a real temp tree without mounts."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from services.storage import reconcile
from services.storage.model import RootfsRecord
from services.storage.paths import StoragePaths
from services.storage.reconcile import ImageTemp, Kept, Removal, RootfsEntry, Snapshot
from services.storage.rootfs import RootfsStore, lower_link_digest

PATHS = StoragePaths(Path("/r"))
ID1, ID2, ID3 = "1111111111", "2222222222", "3333333333"
HEX = "ab" * 32


def snapshot(**fields) -> Snapshot:
    return Snapshot(paths=PATHS, **fields)


def removed(plan) -> dict[str, Removal]:
    return {removal.path: removal for removal in plan.removals}


def test_an_empty_root_needs_nothing():
    assert reconcile.plan(snapshot()) == reconcile.Plan()


def test_a_complete_rootfs_and_its_mounts_are_never_touched():
    mounts = (f"/r/overlay2/{ID1}/merged", f"/r/overlay2/{ID1}/merged/data")
    plan = reconcile.plan(snapshot(overlay=(RootfsEntry(ID1, has_record=True, upper_has_data=True),), mounts=mounts))
    assert plan == reconcile.Plan()
    # Even an empty upper: a complete rootfs nobody wrote to yet is still a container's rootfs.
    assert reconcile.plan(snapshot(overlay=(RootfsEntry(ID1, has_record=True),), mounts=mounts)) == reconcile.Plan()


def test_interrupted_creation_and_removal_are_removed():
    plan = reconcile.plan(snapshot(overlay=(
        RootfsEntry(f".{ID1}.creating-0a1b2c3d"), RootfsEntry(f".{ID2}.removing-ffff0000"),
    )))
    assert removed(plan) == {
        f"/r/overlay2/.{ID1}.creating-0a1b2c3d": Removal(
            f"/r/overlay2/.{ID1}.creating-0a1b2c3d", f"interrupted creation of rootfs {ID1}"),
        f"/r/overlay2/.{ID2}.removing-ffff0000": Removal(
            f"/r/overlay2/.{ID2}.removing-ffff0000", f"interrupted removal of rootfs {ID2}"),
    }


def test_a_record_less_rootfs_is_removed_with_its_mounts_topmost_first_only_when_nothing_was_written():
    mounts = (
        "/r/overlay2/other-mount",
        f"/r/overlay2/{ID1}/merged",
        f"/r/overlay2/{ID1}/merged/data",
        f"/r/overlay2/{ID1}/merged/data/sub",
        f"/r/overlay2/{ID1}0/merged",  # a sibling whose name starts with ID1 is not below it
        f"/r/overlay2/{ID2}/merged",
    )
    plan = reconcile.plan(snapshot(
        overlay=(RootfsEntry(ID1), RootfsEntry(ID2, upper_has_data=True), RootfsEntry(ID3, has_record=True)),
        mounts=mounts,
    ))
    assert list(removed(plan)) == [f"/r/overlay2/{ID1}"]
    removal = plan.removals[0]
    assert removal.unmount == (
        f"/r/overlay2/{ID1}/merged/data/sub", f"/r/overlay2/{ID1}/merged/data", f"/r/overlay2/{ID1}/merged")
    assert "never completed" in removal.reason
    assert plan.kept == (Kept(
        f"/r/overlay2/{ID2}",
        f"rootfs {ID2} has no record but its upper dir holds data: left for RemoveRootfs (mydocker system check --repair)",
    ),)


@pytest.mark.parametrize("name", [
    "notes.txt", ".hidden", "123", "12345678901", f".{ID1}.creating", f".{ID1}.creating-XYZ", f"{ID1}.removing-ab",
])
def test_names_that_are_not_ours_are_left_alone(name):
    assert reconcile.plan(snapshot(overlay=(RootfsEntry(name),), mounts=(f"/r/overlay2/{name}",))) == reconcile.Plan()


def test_layer_temps_are_all_removed():
    plan = reconcile.plan(snapshot(layer_tmp=(f"{HEX}-1234abcd", f"{HEX}-deleting-1234abcd")))
    assert [(r.path, r.reason) for r in plan.removals] == [
        (f"/r/layers/tmp/{HEX}-1234abcd", "interrupted layer extraction"),
        (f"/r/layers/tmp/{HEX}-deleting-1234abcd", "interrupted layer deletion"),
    ]


def test_image_temps_of_dead_writers_are_removed_and_of_live_ones_kept():
    plan = reconcile.plan(snapshot(image_temps=(
        ImageTemp(".base.tar.tmp-0a1b2c3d"),
        ImageTemp(".busybox.tar.tmp-4242", writer_alive=True),
        ImageTemp(".keep"),
    )))
    assert [(r.path, r.reason) for r in plan.removals] == [
        ("/r/image/.base.tar.tmp-0a1b2c3d", "unfinished image import or commit")]
    assert plan.kept == (Kept("/r/image/.busybox.tar.tmp-4242", "being written by a live process"),)


def test_image_temps_in_subdirectories_of_names_with_slashes_are_removed():
    plan = reconcile.plan(snapshot(image_temps=(
        ImageTemp("127.0.0.1:5000/team/.app:v1.tar.tmp-0a1b2c3d"),
        ImageTemp("127.0.0.1:5000/.keep"),
    )))
    assert [r.path for r in plan.removals] == ["/r/image/127.0.0.1:5000/team/.app:v1.tar.tmp-0a1b2c3d"]


def test_digest_cache_temps_are_removed_and_sidecars_kept():
    plan = reconcile.plan(snapshot(digest_files=("base.json", ".base.json.tmp-0a1b2c3d", ".other")))
    assert [r.path for r in plan.removals] == ["/r/imagedb/.base.json.tmp-0a1b2c3d"]


def test_record_and_tag_cache_temps_in_subdirectories_are_removed():
    plan = reconcile.plan(snapshot(digest_files=(
        f"sha256/.{HEX}.json.tmp-0a1b2c3d", "names/localhost:5000/team/.app:v1.json.tmp-0a1b2c3d", "names/.other",
    )))
    assert [r.path for r in plan.removals] == [
        f"/r/imagedb/sha256/.{HEX}.json.tmp-0a1b2c3d", "/r/imagedb/names/localhost:5000/team/.app:v1.json.tmp-0a1b2c3d"]


def test_scratch_dir_is_removed_after_its_mounts():
    plan = reconcile.plan(snapshot(scratch_exists=True, mounts=("/r/tmp/storage/view-1", "/r/tmp/other")))
    assert plan.removals == (Removal(
        "/r/tmp/storage", "scratch mount points of an interrupted commit or export", ("/r/tmp/storage/view-1",)),)


@pytest.mark.parametrize("target, digest", [
    (f"../../layers/sha256/{HEX}/fs", f"sha256:{HEX}"),
    (f"/abs/root/layers/sha256/{HEX}/fs/", f"sha256:{HEX}"),
    (f"../../layers/sha256/{HEX}", None),
    ("../../layers/sha256/xyz/fs", None),
    (f"../../layers/md5/{HEX}/fs", None),
    ("fs", None),
])
def test_lower_link_digest(target, digest):
    assert lower_link_digest(target) == digest


# -- scan and apply on a real tree (no mounts: the contract tests mount as root) ----------------


@pytest.fixture
def paths():
    base = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
    try:
        yield StoragePaths.at(base)
    finally:
        shutil.rmtree(base)


def test_scan_plan_apply_on_a_fake_tree(paths):
    store = RootfsStore(paths)
    store.create(RootfsRecord(ID1, "base", (f"sha256:{HEX}",)))
    (paths.rootfs(ID1).upper / "written").write_text("keep me")
    store.create(RootfsRecord(ID2, "base", (f"sha256:{HEX}",)))
    paths.rootfs(ID2).meta.unlink()  # record-less, nothing written but volume mount points: removed
    (paths.rootfs(ID2).upper / "data" / "deeper").mkdir(parents=True)
    (paths.rootfs(ID2).upper / "etc").mkdir()
    (paths.rootfs(ID2).upper / "etc" / "hosts").touch()
    store.create(RootfsRecord(ID3, "base", (f"sha256:{HEX}",)))
    paths.rootfs(ID3).meta.unlink()
    (paths.rootfs(ID3).upper / "data").write_text("someone's")  # record-less with data: kept
    leftovers = [
        paths.overlay / f".{ID1}.creating-0a0a0a0a",
        paths.layer_tmp / f"{HEX}-0a0a0a0a",
        paths.tmp / "view-1",
    ]
    for leftover in leftovers:
        (leftover / "fs").mkdir(parents=True)
    paths.images.mkdir()
    (paths.images / "base.tar").write_bytes(b"tar")
    (paths.images / ".base.tar.tmp-0a0a0a0a").write_bytes(b"half")
    (paths.images / f".busybox.tar.tmp-{os.getpid()}").write_bytes(b"being written")
    paths.digests.mkdir()
    (paths.digests / "base.json").write_text("{}")
    (paths.digests / ".base.json.tmp-0a0a0a0a").write_text("{")

    snapshot = reconcile.scan(paths, lambda container_id: store.read(container_id) is not None)
    assert {e.name: (e.has_record, e.upper_has_data) for e in snapshot.overlay} == {
        ID1: (True, False), ID2: (False, False), ID3: (False, True), f".{ID1}.creating-0a0a0a0a": (False, False)}
    plan = reconcile.plan(snapshot)
    unmounted = []
    done = reconcile.apply(plan, lambda path: unmounted.append(path) or [])
    assert unmounted == []  # nothing was mounted, so nothing was asked to unmount
    assert sorted(done) == sorted(str(p) for p in [
        paths.rootfs(ID2).dir, paths.overlay / f".{ID1}.creating-0a0a0a0a", paths.layer_tmp / f"{HEX}-0a0a0a0a",
        paths.tmp, paths.images / ".base.tar.tmp-0a0a0a0a", paths.digests / ".base.json.tmp-0a0a0a0a"])
    assert sorted(os.listdir(paths.overlay)) == [ID1, ID3]
    assert (paths.rootfs(ID1).upper / "written").read_text() == "keep me"
    assert (paths.rootfs(ID3).upper / "data").read_text() == "someone's"
    assert sorted(os.listdir(paths.images)) == [f".busybox.tar.tmp-{os.getpid()}", "base.tar"]
    assert os.listdir(paths.digests) == ["base.json"]
    assert os.listdir(paths.layer_tmp) == [] and not paths.tmp.exists()
    # A second run finds nothing more to do.
    assert reconcile.plan(reconcile.scan(paths, lambda i: store.read(i) is not None)).removals == ()


def test_scan_finds_temps_at_any_depth_and_keeps_the_tag_files_beside_them(paths):
    team = paths.images / "127.0.0.1:5000" / "team"
    team.mkdir(parents=True)
    (team / "app:v1.tar").write_bytes(b"tar")
    (team / ".app:v2.tar.tmp-0a0a0a0a").write_bytes(b"half")
    records = paths.image_records
    records.mkdir(parents=True)
    (records / f"{HEX}.json").write_text("{}")
    (records / f".{HEX}.json.tmp-0a0a0a0a").write_text("{")
    names = paths.tag_cache / "127.0.0.1:5000" / "team"
    names.mkdir(parents=True)
    (names / ".app:v2.json.tmp-0b0b0b0b").write_text("{")

    snapshot = reconcile.scan(paths, lambda container_id: False)
    assert snapshot.image_temps == (ImageTemp("127.0.0.1:5000/team/.app:v2.tar.tmp-0a0a0a0a"),)
    done = reconcile.apply(reconcile.plan(snapshot), lambda path: [])
    assert sorted(done) == sorted(str(p) for p in [
        team / ".app:v2.tar.tmp-0a0a0a0a", records / f".{HEX}.json.tmp-0a0a0a0a", names / ".app:v2.json.tmp-0b0b0b0b"])
    assert os.listdir(team) == ["app:v1.tar"]
    assert os.listdir(records) == [f"{HEX}.json"]
    assert os.listdir(names) == []


@pytest.mark.parametrize("make, has_data", [
    (lambda upper: None, False),
    (lambda upper: (upper / "a" / "b").mkdir(parents=True), False),
    (lambda upper: (upper / "empty").touch(), False),
    (lambda upper: ((upper / "a").mkdir(), (upper / "a" / "f").write_text("x")), True),
    (lambda upper: os.symlink("/nowhere", upper / "link"), True),
    (lambda upper: os.mkfifo(upper / "fifo"), True),
])
def test_upper_holds_data_unless_only_directories_and_empty_files(paths, make, has_data):
    upper = paths.root / "upper"
    upper.mkdir()
    make(upper)
    assert reconcile._holds_data(upper) is has_data
    assert reconcile._holds_data(paths.root / "missing") is False
