"""Unit tests of the storage service's paths, names and ids (no I/O beyond tmp dirs)."""

from pathlib import Path

import pytest

from services.common import reference
from services.common.errors import InvalidArgument
from services.state.model import validate_image_name as state_validate_image_name
from services.storage import paths
from services.storage.paths import StoragePaths, rootfs_paths

REFERENCES = ["busybox", "busybox-with-custom", "busybox:1.36", "localhost:5000/team/app:v1", "a" * 128]


@pytest.mark.parametrize("text", REFERENCES)
def test_the_state_service_keeps_every_reference_storage_can_resolve(text):
    reference.parse(text)
    state_validate_image_name(text)
    # A tag's file lives below ROOT/image, never outside it.
    stem = reference.parse(text).file_stem()
    assert not stem.startswith("/") and ".." not in stem.split("/")


@pytest.mark.parametrize("container_id", ["5341624332", "0000000000"])
def test_good_container_ids(container_id):
    paths.validate_container_id(container_id)


@pytest.mark.parametrize("container_id", ["", "123", "12345678901", "../../etc", "534162433a", "5341624332/", " 5341624332"])
def test_bad_container_ids(container_id):
    with pytest.raises(InvalidArgument, match="10 digits"):
        paths.validate_container_id(container_id)


def test_rootfs_paths_are_the_seed_layout():
    layout = rootfs_paths(Path("/var/lib/mydocker/overlay2"), "5341624332")
    assert str(layout.dir) == "/var/lib/mydocker/overlay2/5341624332"
    assert [p.name for p in (layout.lower, layout.upper, layout.work, layout.merged)] == ["lower", "upper", "work", "merged"]
    assert all(p.parent == layout.dir for p in (layout.lower, layout.upper, layout.work, layout.merged, layout.meta))
    assert layout.meta.name.startswith(".")  # `ls overlay2/<id>` shows only the four dirs


def test_rootfs_paths_validate_the_id():
    with pytest.raises(InvalidArgument):
        rootfs_paths(Path("/r/overlay2"), "../../../etc")


def test_storage_paths(tmp_path):
    store = StoragePaths.at(tmp_path)
    digest = "sha256:" + "ab" * 32
    assert store.images == tmp_path / "image" and store.blobs == tmp_path / "blobs"
    assert store.image_records == tmp_path / "imagedb" / "sha256"
    assert store.layer_fs(digest) == tmp_path / "layers" / "sha256" / ("ab" * 32) / "fs"
    assert store.lower_link_target(digest) == f"../../layers/sha256/{'ab' * 32}/fs"
    # The relative link from overlay2/<id>/lower lands on the layer.
    lower = store.rootfs("5341624332").lower
    assert (lower.parent / store.lower_link_target(digest)).resolve() == store.layer_fs(digest)
    with pytest.raises(InvalidArgument):
        store.layer_dir("sha256:../../etc")


def test_storage_paths_resolve_symlinks(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert StoragePaths.at(tmp_path / "link").root == tmp_path / "real"


@pytest.mark.parametrize("root", ["/tmp/a,b", "/tmp/a:b", "/tmp/a=b"])
def test_roots_that_break_overlay_options_are_refused(root):
    with pytest.raises(ValueError):
        paths.check_root(Path(root))
