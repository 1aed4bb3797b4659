"""Unit tests of the storage service's paths, names and ids (no I/O beyond tmp dirs)."""

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.state.model import validate_image_name as state_validate_image_name
from services.storage import paths
from services.storage.paths import StoragePaths, image_name_from_file, rootfs_paths

GOOD_IMAGES = ["busybox", "busybox-with-custom", "a", "Debian_12.minbase", "busybox:latest", "x" * 128]
BAD_IMAGES = ["", "../../x", "a/b", "/abs", ".hidden", "-dash", "a..b", "..", "x" * 129, "sp ace", "nul\0", "é"]


@pytest.mark.parametrize("name", GOOD_IMAGES)
def test_good_image_names(name):
    paths.validate_image_name(name)


@pytest.mark.parametrize("name", BAD_IMAGES)
def test_bad_image_names_are_invalid_argument(name):
    with pytest.raises(InvalidArgument, match="invalid image name"):
        paths.validate_image_name(name)


@pytest.mark.parametrize("name", GOOD_IMAGES + BAD_IMAGES)
def test_image_names_agree_with_the_state_service(name):
    def accepted(check) -> bool:
        try:
            check(name)
        except InvalidArgument:
            return False
        return True

    assert accepted(paths.validate_image_name) == accepted(state_validate_image_name)


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
    assert store.image_tar("busybox") == tmp_path / "image" / "busybox.tar"
    assert store.layer_fs(digest) == tmp_path / "layers" / "sha256" / ("ab" * 32) / "fs"
    assert store.lower_link_target(digest) == f"../../layers/sha256/{'ab' * 32}/fs"
    # The relative link from overlay2/<id>/lower lands on the layer.
    lower = store.rootfs("5341624332").lower
    assert (lower.parent / store.lower_link_target(digest)).resolve() == store.layer_fs(digest)
    with pytest.raises(InvalidArgument):
        store.image_tar("../x")
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


@pytest.mark.parametrize(
    "file_name,name",
    [
        ("busybox.tar", "busybox"),
        ("busybox:1.tar", "busybox:1"),
        (".busybox.tar.tmp-1234", None),
        (".busybox.tar", None),
        ("busybox.tar.gz", None),
        ("notes.txt", None),
        ("a..b.tar", None),
    ],
)
def test_image_name_from_file(file_name, name):
    assert image_name_from_file(file_name) == name
