"""Unit tests of the rootfs plan: overlay options, mount plans, and the on-disk record."""

from pathlib import Path

import pytest


from services.storage.model import RootfsRecord, Volume
from services.storage.paths import rootfs_paths
from services.storage.mountplan import kernel_overlay_features, overlay_options, planned_mounts
from services.storage.rootfs import record_from_json, record_to_json


def test_overlay_options_turn_off_redirect_metacopy_index():
    assert overlay_options("/l", "/u", "/w") == [
        "lowerdir=/l",
        "upperdir=/u",
        "workdir=/w",
        "redirect_dir=off",
        "metacopy=off",
        "index=off",
    ]


def test_overlay_options_leave_out_what_the_kernel_lacks():
    options = overlay_options("/l", "/u", "/w", frozenset({"redirect_dir", "index"}))
    assert "metacopy=off" not in options
    assert "redirect_dir=off" in options and "index=off" in options


@pytest.mark.parametrize("bad", ["/a,b", "/a\0", "/a::/b", ":/a"])
def test_overlay_options_refuse_separators(bad):
    with pytest.raises(ValueError):
        overlay_options(bad, "/u", "/w")
    with pytest.raises(ValueError):
        overlay_options("/l", bad.replace("::", ":"), "/w")


def test_a_stack_of_layers_is_stacked_top_first_with_a_read_only_view_at_lower():
    layout = rootfs_paths(Path("/r/overlay2"), "5341624332")
    layers = ("sha256:" + "1" * 64, "sha256:" + "2" * 64)
    record = RootfsRecord("5341624332", "app", layers)
    dirs = ["/r/layers/sha256/" + "1" * 64 + "/fs", "/r/layers/sha256/" + "2" * 64 + "/fs"]
    mounts = planned_mounts(layout, record, None, dirs)
    assert [(m.type, m.target) for m in mounts] == [
        ("overlay", "/r/overlay2/5341624332/lower"),
        ("overlay", "/r/overlay2/5341624332/merged"),
    ]
    assert mounts[0].options == (f"lowerdir={dirs[1]}:{dirs[0]}", "ro")
    assert f"lowerdir={dirs[1]}:{dirs[0]}" in mounts[1].options


def test_a_stack_too_deep_for_one_mount_data_page_is_given_layer_by_layer():
    layout = rootfs_paths(Path("/r/overlay2"), "5341624332")
    dirs = [f"/r/layers/sha256/{index:064x}/fs" for index in range(60)]
    record = RootfsRecord("5341624332", "deep", tuple(f"sha256:{i:064x}" for i in range(60)))
    view, overlay = planned_mounts(layout, record, None, dirs)
    for mount in (view, overlay):
        layers = [option.removeprefix("lowerdir+=") for option in mount.options if option.startswith("lowerdir+=")]
        assert layers == list(reversed(dirs)), "top first, as in lowerdir=top:...:bottom"
        assert not any(option.startswith("lowerdir=") for option in mount.options)
    assert "upperdir=/r/overlay2/5341624332/upper" in overlay.options and view.options[-1] == "ro"


@pytest.mark.root
def test_sixty_layers_with_long_paths_mount_as_one_stack(tmp_path):
    from services.common import linux
    from services.storage.mountplan import mount_overlay
    from services.storage.model import Mount

    base = tmp_path / ("long-" * 8)
    layers = []
    for index in range(60):
        layer = base / f"{index:064x}" / "fs"
        layer.mkdir(parents=True)
        (layer / f"file-{index}").write_text(str(index))
        (layer / "top").write_text(str(index))
        layers.append(str(layer))
    target = tmp_path / "merged"
    target.mkdir()
    options = [f"lowerdir+={layer}" for layer in reversed(layers)]
    assert len(",".join(options)) > 4096
    mount_overlay(Mount("overlay", "overlay", str(target), tuple(options + ["ro"])))
    try:
        assert len(list(target.iterdir())) == 61 and (target / "top").read_text() == "59"
        with pytest.raises(OSError):
            (target / "new").write_text("x")  # read-only
    finally:
        linux.umount2(str(target), 0)
    with open("/proc/self/mountinfo") as mountinfo:
        assert str(tmp_path) not in mountinfo.read()


def test_kernel_overlay_features(tmp_path):
    (tmp_path / "index").write_text("N")
    (tmp_path / "metacopy").write_text("N")
    assert kernel_overlay_features(tmp_path) == {"index", "metacopy"}
    assert kernel_overlay_features(tmp_path / "missing") is None


def test_planned_mounts_overlay_first_then_volumes_parents_first():
    layout = rootfs_paths(Path("/r/overlay2"), "5341624332")
    record = RootfsRecord(
        "5341624332",
        "busybox",
        ("sha256:" + "0" * 64,),
        (Volume("/h/sub", "/data/sub", True), Volume("/h/data", "/data")),
    )
    mounts = planned_mounts(layout, record, None, ["/r/layers/sha256/" + "0" * 64 + "/fs"])
    assert [m.type for m in mounts] == ["overlay", "bind", "bind"]
    assert mounts[0].target == "/r/overlay2/5341624332/merged"
    assert "lowerdir=/r/overlay2/5341624332/lower" in mounts[0].options
    assert [(m.source, m.target, m.options) for m in mounts[1:]] == [
        ("/h/data", "/r/overlay2/5341624332/merged/data", ("rbind",)),
        ("/h/sub", "/r/overlay2/5341624332/merged/data/sub", ("rbind", "ro")),
    ]


def test_record_round_trip():
    record = RootfsRecord("5341624332", "busybox", ("sha256:" + "1" * 64,), (Volume("/h", "/c", True),), 12.5, "sha256:" + "2" * 64)
    assert record_from_json(record_to_json(record)) == record


def test_a_version_1_record_is_read_as_one_layer():
    data = {"version": 1, "container_id": "5341624332", "image": "busybox", "digest": "sha256:" + "1" * 64, "volumes": []}
    record = record_from_json(data)
    assert record is not None and record.layers == ("sha256:" + "1" * 64,) and record.image_id == ""


@pytest.mark.parametrize("data", [None, [], {}, {"container_id": "1"}, {"container_id": "1", "image": "b", "digest": "d", "volumes": [{"x": 1}]}])
def test_bad_records_read_as_none(data):
    assert record_from_json(data) is None
