"""The storage service through its gRPC API: a real server on a temp unix socket, real mounts (as root)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import threading
from pathlib import Path

import grpc
import pytest

from protos.storage.v1 import storage_pb2 as pb
from protos.storage.v1 import storage_pb2_grpc
from protos.types.v1 import types_pb2
from services.storage import mountinfo
from services.storage.__main__ import definition
from services.storage.core import StorageCore
from services.storage.rootfs import RootfsStore

CODE = grpc.StatusCode
ID1, ID2, ID3 = "5341624332", "8118341786", "1000000001"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-busybox-image"

needs_root = [pytest.mark.root]


def root_test(function):
    for mark in needs_root:
        function = mark(function)
    return function


class Storage:
    def __init__(self, stub, core: StorageCore, root: Path):
        self.stub = stub
        self.core = core
        self.root = root

    def image_tar(self, name: str) -> Path:
        return self.root / "image" / f"{name}.tar"

    def prepare(self, container_id=ID1, image="base", volumes=()):
        request = pb.PrepareRootfsRequest(container_id=container_id, image=image, volumes=list(volumes))
        return self.stub.PrepareRootfs(request, timeout=60).rootfs

    def remove(self, container_id=ID1) -> bool:
        return self.stub.RemoveRootfs(pb.RemoveRootfsRequest(container_id=container_id), timeout=60).removed

    def import_bytes(self, name: str, data: bytes, replace=False, chunk=7000):
        def requests():
            yield pb.ImportImageRequest(header=pb.ImportImageHeader(name=name, replace=replace, expected_size=len(data)))
            for start in range(0, len(data), chunk):
                yield pb.ImportImageRequest(chunk=data[start : start + chunk])

        return self.stub.ImportImage(requests(), timeout=60).image

    def commit(self, image: str, container_id=ID1, replace=False):
        request = pb.CommitContainerRequest(container_id=container_id, image=image, replace=replace)
        return self.stub.CommitContainer(request, timeout=60).image

    def mounts_under_root(self) -> list[str]:
        return [m.mount_point for m in mountinfo.mounts_under(mountinfo.read(), str(self.root))]


@pytest.fixture
def storage(start_server, temp_config):
    core = StorageCore(temp_config)
    core.start()
    _, channel = start_server(definition(core))
    client = Storage(storage_pb2_grpc.StorageServiceStub(channel), core, Path(os.path.realpath(temp_config.root)))
    try:
        yield client
    finally:
        # Never leave a mount behind, whatever the test did, before the temp root is deleted.
        RootfsStore.unmount_tree(str(client.root))
        assert client.mounts_under_root() == []


def expect(code: grpc.StatusCode, call, request, fragment: str = "", timeout: float = 60):
    with pytest.raises(grpc.RpcError) as caught:
        result = call(request, timeout=timeout)
        if hasattr(result, "__next__"):
            list(result)
    assert caught.value.code() == code, caught.value.details()
    assert fragment in caught.value.details(), caught.value.details()
    return caught.value.details()


def tar_bytes(files: dict[str, bytes | str | None] | None = None, extra=()) -> bytes:
    """A small rootfs tar: dirs for names ending in "/", files otherwise, plus extra TarInfo entries."""
    files = files if files is not None else {}
    base = {"bin/": None, "etc/": None, "proc/": None, "sys/": None, "dev/": None, "tmp/": None, "etc/hostname": "base\n"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in {**base, **files}.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = 1_700_000_000
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp/" else 0o755
                archive.addfile(info)
            else:
                data = content.encode() if isinstance(content, str) else (content or b"")
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
        for info, data in extra:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def drop_image(storage: Storage, name: str, data: bytes) -> Path:
    """Put a tar in ROOT/image by hand, as the seed does with `mv busybox.tar /var/lib/mydocker/image/`."""
    path = storage.image_tar(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def hostile_tar() -> bytes:
    link = tarfile.TarInfo("escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    evil = tarfile.TarInfo("escape/mydocker-evil")
    evil.size = 4
    return tar_bytes(extra=[(link, None), (evil, b"evil")])


def members_of(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: m for m in archive.getmembers()}


def vol(host, container, read_only=False):
    return types_pb2.Volume(host_path=str(host), container_path=container, read_only=read_only)


# -- info and images ----------------------------------------------------------------------


def test_info_counts_images_and_rootfs(storage):
    drop_image(storage, "base", tar_bytes())
    info = storage.stub.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert (info.driver, info.images, info.rootfs_count) == ("overlay2", 1, 0)


def test_import_stream_list_get(storage):
    data = tar_bytes({"etc/motd": "hi\n"})
    image = storage.import_bytes("base", data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (image.name, image.size_bytes, image.digest) == ("base", len(data), digest)
    assert storage.image_tar("base").read_bytes() == data
    assert image.created_at.seconds > 0
    storage.import_bytes("alpha", data)
    listed = storage.stub.ListImages(pb.ListImagesRequest(), timeout=5).images
    assert [i.name for i in listed] == ["alpha", "base"]
    got = storage.stub.GetImage(pb.GetImageRequest(name="base"), timeout=5).image
    assert got.digest == digest and list(got.container_ids) == []
    # Nothing but the tars in image/: the temp files are gone.
    assert sorted(os.listdir(storage.root / "image")) == ["alpha.tar", "base.tar"]


def test_import_from_a_server_side_path(storage, tmp_path):
    source = tmp_path / "rootfs.tar"
    source.write_bytes(tar_bytes())
    header = pb.ImportImageHeader(name="fromfile", source_path=str(source))
    image = storage.stub.ImportImage(iter([pb.ImportImageRequest(header=header)]), timeout=30).image
    assert image.size_bytes == source.stat().st_size and source.exists()
    missing = pb.ImportImageHeader(name="x", source_path=str(tmp_path / "missing.tar"))
    expect(CODE.NOT_FOUND, storage.stub.ImportImage, iter([pb.ImportImageRequest(header=missing)]), "does not exist")
    relative = pb.ImportImageHeader(name="x", source_path="rootfs.tar")
    expect(CODE.INVALID_ARGUMENT, storage.stub.ImportImage, iter([pb.ImportImageRequest(header=relative)]), "absolute")
    both = iter([pb.ImportImageRequest(header=pb.ImportImageHeader(name="y", source_path=str(source))), pb.ImportImageRequest(chunk=b"x")])
    expect(CODE.INVALID_ARGUMENT, storage.stub.ImportImage, both, "no chunks")
    # Regular files only: a fifo nobody writes would hang the import, a device could be endless.
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        header = pb.ImportImageHeader(name="x", source_path=str(path))
        expect(CODE.INVALID_ARGUMENT, storage.stub.ImportImage, iter([pb.ImportImageRequest(header=header)]), "is not a regular file")
    assert sorted(os.listdir(storage.root / "image")) == ["fromfile.tar"]


def test_import_existing_name_and_replace(storage):
    storage.import_bytes("base", tar_bytes())
    details = expect(
        CODE.ALREADY_EXISTS,
        storage.stub.ImportImage,
        iter([pb.ImportImageRequest(header=pb.ImportImageHeader(name="base")), pb.ImportImageRequest(chunk=tar_bytes())]),
    )
    assert "base" in details
    newer = tar_bytes({"etc/new": "1"})
    assert storage.import_bytes("base", newer, replace=True).digest == "sha256:" + hashlib.sha256(newer).hexdigest()
    assert storage.image_tar("base").read_bytes() == newer


@pytest.mark.parametrize(
    "messages,fragment",
    [
        ([pb.ImportImageRequest(header=pb.ImportImageHeader(name="../../x"))], "invalid image name"),
        ([pb.ImportImageRequest(header=pb.ImportImageHeader(name=""))], "required"),
        ([pb.ImportImageRequest(chunk=b"x")], "first message must be the header"),
        ([], "first message must be the header"),
        ([pb.ImportImageRequest(header=pb.ImportImageHeader(name="e"))], "empty"),
        (
            [pb.ImportImageRequest(header=pb.ImportImageHeader(name="s", expected_size=99999)), pb.ImportImageRequest(chunk=tar_bytes())],
            "announced",
        ),
        ([pb.ImportImageRequest(header=pb.ImportImageHeader(name="n")), pb.ImportImageRequest(chunk=b"no tar" * 200)], "not a readable tar"),
        (
            [pb.ImportImageRequest(header=pb.ImportImageHeader(name="h")), pb.ImportImageRequest(header=pb.ImportImageHeader(name="h"))],
            "only chunks",
        ),
    ],
)
def test_import_invalid(storage, messages, fragment):
    expect(CODE.INVALID_ARGUMENT, storage.stub.ImportImage, iter(messages), fragment)
    assert [n for n in os.listdir(storage.root / "image")] == []


def test_hostile_import_leaves_nothing_behind(storage):
    details = expect(CODE.INVALID_ARGUMENT, storage.stub.ImportImage, iter([
        pb.ImportImageRequest(header=pb.ImportImageHeader(name="evil")),
        pb.ImportImageRequest(chunk=hostile_tar()),
    ]))
    assert 'member "escape/mydocker-evil"' in details and "symlink" in details
    assert os.listdir(storage.root / "image") == []
    assert os.listdir(storage.root / "layers" / "sha256") == []
    assert not os.path.exists("/etc/mydocker-evil")
    dotdot = tarfile.TarInfo("../../outside")
    details = expect(CODE.INVALID_ARGUMENT, storage.stub.ImportImage, iter([
        pb.ImportImageRequest(header=pb.ImportImageHeader(name="evil")),
        pb.ImportImageRequest(chunk=tar_bytes(extra=[(dotdot, b"")])),
    ]))
    assert '"../../outside"' in details
    assert os.listdir(storage.root / "image") == []


def test_get_and_remove_image_errors(storage):
    expect(CODE.NOT_FOUND, storage.stub.GetImage, pb.GetImageRequest(name="nope"), "nope")
    expect(CODE.INVALID_ARGUMENT, storage.stub.GetImage, pb.GetImageRequest(name="a/b"))
    expect(CODE.NOT_FOUND, storage.stub.RemoveImage, pb.RemoveImageRequest(name="nope"))
    expect(CODE.INVALID_ARGUMENT, storage.stub.RemoveImage, pb.RemoveImageRequest(name="../../etc/passwd"))


def test_remove_unused_image(storage):
    storage.import_bytes("base", tar_bytes())
    removed = storage.stub.RemoveImage(pb.RemoveImageRequest(name="base"), timeout=5).image
    assert removed.name == "base" and not storage.image_tar("base").exists()
    assert storage.stub.ListImages(pb.ListImagesRequest(), timeout=5).images == []


def test_hand_dropped_image_is_listed_without_a_digest_until_used(storage):
    drop_image(storage, "base", tar_bytes())
    (storage.root / "image" / ".junk.tar.tmp-1").write_bytes(b"")
    (storage.root / "image" / "notes.txt").write_text("not an image")
    images = storage.stub.ListImages(pb.ListImagesRequest(), timeout=5).images
    assert [(i.name, i.digest) for i in images] == [("base", "")]


# -- rootfs -------------------------------------------------------------------------------


@root_test
def test_prepare_lays_out_the_seed_directories(storage):
    drop_image(storage, "base", tar_bytes({"etc/motd": "hello\n"}))
    rootfs = storage.prepare()
    base = storage.root / "overlay2" / ID1
    assert sorted(os.listdir(base)) == [".rootfs.json", "lower", "merged", "upper", "work"]
    assert subprocess.run(["ls", str(base)], capture_output=True, text=True).stdout.split() == ["lower", "merged", "upper", "work"]
    assert (base / "lower").is_symlink()
    assert sorted(os.listdir(base / "lower")) == ["bin", "dev", "etc", "proc", "sys", "tmp"]
    assert sorted(os.listdir(base / "merged")) == ["bin", "dev", "etc", "proc", "sys", "tmp"]
    assert (base / "merged" / "etc" / "motd").read_text() == "hello\n"
    assert rootfs.path == str(base / "merged") and rootfs.mounted and rootfs.image == "base"
    overlay = rootfs.mounts[0]
    assert (overlay.type, overlay.target) == ("overlay", str(base / "merged"))
    assert list(overlay.options) == [
        f"lowerdir={base}/lower", f"upperdir={base}/upper", f"workdir={base}/work",
        "redirect_dir=off", "metacopy=off", "index=off",
    ]
    entry = mountinfo.find(mountinfo.read(), str(base / "merged"))
    assert entry is not None and entry.fstype == "overlay"
    assert f"upperdir={base}/upper" in entry.super_options
    # Writes go to upper as a plain diff; lower (the shared layer) is untouched.
    (base / "merged" / "a.txt").write_text("KubeExplorer\n")
    assert (base / "upper" / "a.txt").read_text() == "KubeExplorer\n"
    assert not (base / "lower" / "a.txt").exists()
    image = storage.stub.GetImage(pb.GetImageRequest(name="base"), timeout=5).image
    assert list(image.container_ids) == [ID1] and image.digest.startswith("sha256:")
    assert storage.remove() is True
    assert not base.exists() and storage.mounts_under_root() == []


@root_test
def test_two_rootfs_share_one_layer_extracted_once(storage):
    drop_image(storage, "base", tar_bytes())
    storage.prepare(ID1)
    layer_dirs = os.listdir(storage.root / "layers" / "sha256")
    assert len(layer_dirs) == 1
    layer = storage.root / "layers" / "sha256" / layer_dirs[0]
    inode = os.stat(layer / "fs").st_ino
    storage.prepare(ID2)
    lower1 = os.path.realpath(storage.root / "overlay2" / ID1 / "lower")
    lower2 = os.path.realpath(storage.root / "overlay2" / ID2 / "lower")
    assert lower1 == lower2 == str(layer / "fs")
    assert os.stat(layer / "fs").st_ino == inode
    assert storage.core.stats.extractions == 1 and storage.core.stats.hashes == 1
    # Idempotent: the same id and image again does nothing new.
    again = storage.prepare(ID1)
    assert again.mounted and storage.core.stats.extractions == 1 and storage.core.stats.hashes == 1
    image = storage.stub.GetImage(pb.GetImageRequest(name="base"), timeout=5).image
    assert sorted(image.container_ids) == sorted([ID1, ID2])
    # Separate upper dirs: containers do not see each other's writes.
    (storage.root / "overlay2" / ID1 / "merged" / "only-in-1").write_text("1")
    assert not (storage.root / "overlay2" / ID2 / "merged" / "only-in-1").exists()


@root_test
def test_concurrent_cold_prepares_extract_once(storage):
    drop_image(storage, "base", tar_bytes({f"etc/f{i}": "x" * i for i in range(300)}))
    barrier = threading.Barrier(3)
    results, errors = {}, []

    def prepare(container_id):
        try:
            barrier.wait()
            results[container_id] = storage.prepare(container_id)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(cid,)) for cid in (ID1, ID2, ID3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert storage.core.stats.extractions == 1
    assert len(os.listdir(storage.root / "layers" / "sha256")) == 1
    assert os.listdir(storage.root / "layers" / "tmp") == []
    assert all(r.mounted for r in results.values())


@root_test
def test_prepare_errors(storage):
    drop_image(storage, "base", tar_bytes())
    drop_image(storage, "other", tar_bytes({"etc/other": "1"}))
    expect(CODE.NOT_FOUND, storage.stub.PrepareRootfs, pb.PrepareRootfsRequest(container_id=ID1, image="nope"), "nope")
    for bad_id in ("", "123", "../../../x", "53416243321"):
        expect(CODE.INVALID_ARGUMENT, storage.stub.PrepareRootfs, pb.PrepareRootfsRequest(container_id=bad_id, image="base"), "10 digits")
    expect(CODE.INVALID_ARGUMENT, storage.stub.PrepareRootfs, pb.PrepareRootfsRequest(container_id=ID1, image="../base"))
    for volumes, fragment in (
        ([vol("relative", "/data")], "not absolute"),
        ([vol("/tmp/x", "/")], 'on "/"'),
        ([vol("/tmp/a", "/data"), vol("/tmp/b", "/data")], "two volumes"),
    ):
        request = pb.PrepareRootfsRequest(container_id=ID1, image="base", volumes=volumes)
        expect(CODE.INVALID_ARGUMENT, storage.stub.PrepareRootfs, request, fragment)
    assert os.listdir(storage.root / "overlay2") == []
    storage.prepare(ID1, "base")
    details = expect(CODE.ALREADY_EXISTS, storage.stub.PrepareRootfs, pb.PrepareRootfsRequest(container_id=ID1, image="other"))
    assert '"base"' in details
    request = pb.PrepareRootfsRequest(container_id=ID1, image="base", volumes=[vol("/tmp/mdk-never", "/data")])
    expect(CODE.ALREADY_EXISTS, storage.stub.PrepareRootfs, request, "other volumes")


@root_test
def test_prepare_from_a_hostile_dropped_image_leaves_nothing(storage):
    drop_image(storage, "evil", hostile_tar())
    details = expect(CODE.INVALID_ARGUMENT, storage.stub.PrepareRootfs, pb.PrepareRootfsRequest(container_id=ID1, image="evil"))
    assert "escape/mydocker-evil" in details
    assert os.listdir(storage.root / "overlay2") == []
    assert os.listdir(storage.root / "layers" / "sha256") == []
    assert os.listdir(storage.root / "layers" / "tmp") == []
    assert not os.path.exists("/etc/mydocker-evil")


@root_test
def test_volumes_rw_ro_several_and_kept_on_remove(storage, tmp_path):
    drop_image(storage, "base", tar_bytes())
    rw_host, ro_host = tmp_path / "new" / "rw", tmp_path / "ro"
    ro_host.mkdir()
    (ro_host / "config").write_text("cfg")
    rootfs = storage.prepare(ID1, volumes=[vol(rw_host, "/data"), vol(ro_host, "/etc/app", True), vol(tmp_path / "n", "/data/nested")])
    merged = Path(rootfs.path)
    assert rw_host.is_dir()  # created when missing
    binds = [(m.source, m.target, list(m.options)) for m in rootfs.mounts[1:]]
    # Parents first: /data before /data/nested.
    assert binds == [
        (str(rw_host), str(merged / "data"), ["rbind"]),
        (str(tmp_path / "n"), str(merged / "data/nested"), ["rbind"]),
        (str(ro_host), str(merged / "etc/app"), ["rbind", "ro"]),
    ]
    (merged / "data" / "written").write_text("from the container")
    assert (rw_host / "written").read_text() == "from the container"
    assert (merged / "etc/app/config").read_text() == "cfg"
    with pytest.raises(OSError) as caught:
        (merged / "etc/app/new").write_text("x")
    assert caught.value.errno == 30  # EROFS
    # The container path was created inside the rootfs, so in upper, never on the host.
    assert (storage.root / "overlay2" / ID1 / "upper" / "etc" / "app").is_dir()
    volumes = storage.stub.ListVolumes(pb.ListVolumesRequest(), timeout=5).volumes
    assert [(v.volume.host_path, list(v.container_ids)) for v in volumes] == sorted(
        [(str(rw_host), [ID1]), (str(ro_host), [ID1]), (str(tmp_path / "n"), [ID1])]
    )
    assert all(v.size_bytes > 0 for v in volumes)
    assert storage.remove() is True
    assert (rw_host / "written").read_text() == "from the container"
    assert (ro_host / "config").read_text() == "cfg"
    assert storage.mounts_under_root() == []


@root_test
def test_volume_target_through_an_image_symlink_stays_in_the_rootfs(storage, tmp_path):
    link = tarfile.TarInfo("data")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "host-side")
    drop_image(storage, "base", tar_bytes(extra=[(link, None)]))
    rootfs = storage.prepare(ID1, volumes=[vol(tmp_path / "v", "/data")])
    assert rootfs.mounts[1].target.startswith(rootfs.path + "/")
    assert not (tmp_path / "host-side").exists()


@root_test
def test_get_rootfs_remounts_after_a_reboot_like_unmount(storage):
    drop_image(storage, "base", tar_bytes())
    expect(CODE.NOT_FOUND, storage.stub.GetRootfs, pb.GetRootfsRequest(container_id=ID1), ID1)
    expect(CODE.INVALID_ARGUMENT, storage.stub.GetRootfs, pb.GetRootfsRequest(container_id="x"))
    rootfs = storage.prepare(ID1, volumes=[vol(storage.root.parent / "vol", "/data")])
    Path(rootfs.path, "a.txt").write_text("kept")
    storage.core.rootfs.unmount(ID1)
    listed = storage.stub.ListRootfs(pb.ListRootfsRequest(), timeout=5).rootfs
    assert [(r.container_id, r.mounted) for r in listed] == [(ID1, False)]
    again = storage.stub.GetRootfs(pb.GetRootfsRequest(container_id=ID1), timeout=30).rootfs
    assert again.mounted and Path(again.path, "a.txt").read_text() == "kept"
    assert [m.type for m in again.mounts] == ["overlay", "bind"]
    assert mountinfo.find(mountinfo.read(), again.mounts[1].target) is not None
    # And a restarted service knows it from disk alone.
    fresh = StorageCore(storage.core.config)
    fresh.start()
    assert [(r.container_id, r.image, r.mounted) for r in fresh.list_rootfs()] == [(ID1, "base", True)]


@root_test
def test_list_rootfs(storage):
    drop_image(storage, "base", tar_bytes())
    assert storage.stub.ListRootfs(pb.ListRootfsRequest(), timeout=5).rootfs == []
    storage.prepare(ID2)
    storage.prepare(ID1, volumes=[vol(storage.root.parent / "v", "/v", True)])
    listed = storage.stub.ListRootfs(pb.ListRootfsRequest(), timeout=5).rootfs
    assert [r.container_id for r in listed] == [ID1, ID2]
    assert all(r.mounted and r.image == "base" for r in listed)
    assert [v.container_path for v in listed[0].volumes] == ["/v"] and listed[0].volumes[0].read_only


@root_test
def test_remove_is_idempotent_and_finishes_half_removed(storage):
    drop_image(storage, "base", tar_bytes())
    assert storage.remove(ID1) is False
    expect(CODE.INVALID_ARGUMENT, storage.stub.RemoveRootfs, pb.RemoveRootfsRequest(container_id="../x"))
    storage.prepare(ID1)
    assert storage.remove(ID1) is True
    assert storage.remove(ID1) is False
    # Half-removed: unmounted, record and upper gone, dir still there.
    storage.prepare(ID2)
    storage.core.rootfs.unmount(ID2)
    base = storage.root / "overlay2" / ID2
    (base / ".rootfs.json").unlink()
    subprocess.run(["rm", "-rf", str(base / "upper")], check=True)
    listed = storage.stub.ListRootfs(pb.ListRootfsRequest(), timeout=5).rootfs
    assert [(r.container_id, r.image, r.mounted) for r in listed] == [(ID2, "", False)]
    expect(CODE.FAILED_PRECONDITION, storage.stub.GetRootfs, pb.GetRootfsRequest(container_id=ID2), "no record")
    assert storage.remove(ID2) is True
    assert os.listdir(storage.root / "overlay2") == []


@root_test
def test_remove_image_refused_while_used_and_layer_kept_until_prune(storage):
    drop_image(storage, "base", tar_bytes())
    storage.prepare(ID1)
    details = expect(CODE.FAILED_PRECONDITION, storage.stub.RemoveImage, pb.RemoveImageRequest(name="base"))
    assert ID1 in details
    # A layer used by an image or a rootfs is kept.
    assert list(storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30).digests) == []
    storage.remove(ID1)
    digest = storage.stub.RemoveImage(pb.RemoveImageRequest(name="base"), timeout=5).image.digest
    assert len(os.listdir(storage.root / "layers" / "sha256")) == 1
    pruned = storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30)
    assert list(pruned.digests) == [digest] and pruned.reclaimed_bytes > 0
    assert os.listdir(storage.root / "layers" / "sha256") == []
    assert list(storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30).digests) == []


@root_test
def test_image_replaced_while_used_keeps_the_running_layer(storage):
    drop_image(storage, "base", tar_bytes({"etc/v": "1"}))
    first = storage.prepare(ID1)
    storage.import_bytes("base", tar_bytes({"etc/v": "2"}), replace=True)
    second = storage.prepare(ID2)
    assert Path(first.path, "etc/v").read_text() == "1" and Path(second.path, "etc/v").read_text() == "2"
    # Re-preparing the first keeps its layer; prune keeps both (one per rootfs).
    assert Path(storage.prepare(ID1).path, "etc/v").read_text() == "1"
    assert list(storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30).digests) == []


# -- commit and export --------------------------------------------------------------------


@root_test
def test_commit_then_prepare_shows_the_file(storage, tmp_path):
    drop_image(storage, "base", tar_bytes({"etc/gone": "will be deleted", "etc/motd": "hi"}))
    rootfs = storage.prepare(ID1, volumes=[vol(tmp_path / "vol", "/data"), vol(tmp_path / "ro", "/srv", True)])
    merged = Path(rootfs.path)
    (merged / "a.txt").write_text("KubeExplorer\n")
    (merged / "data" / "host-secret").write_text("never in an image")
    (merged / "proc" / "junk").write_text("x")
    (merged / "dev" / "junk").write_text("x")
    (merged / "etc" / "gone").unlink()
    os.setxattr(merged / "a.txt", "user.mydocker", b"kept")
    image = storage.commit("busybox-with-custom")
    path = storage.image_tar("busybox-with-custom")
    assert image.name == "busybox-with-custom" and image.size_bytes == path.stat().st_size
    assert image.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    members = members_of(path.read_bytes())
    assert "a.txt" in members and "etc/motd" in members and "etc/gone" not in members
    assert members["data"].isdir() and members["srv"].isdir() and members["proc"].isdir()
    assert not [n for n in members if n.startswith(("data/", "proc/", "dev/", "sys/"))]
    assert members["tmp"].mode == 0o1777
    assert sorted(os.listdir(storage.root / "image")) == ["base.tar", "busybox-with-custom.tar"]
    assert storage.mounts_under_root() == [m.target for m in rootfs.mounts]  # only the rootfs's own mounts
    again = storage.prepare(ID2, "busybox-with-custom")
    assert Path(again.path, "a.txt").read_text() == "KubeExplorer\n"
    assert os.getxattr(Path(again.path, "a.txt"), "user.mydocker") == b"kept"
    assert not Path(again.path, "etc/gone").exists()
    assert os.listdir(Path(again.path, "data")) == []


@root_test
def test_commit_errors_and_replace(storage):
    drop_image(storage, "base", tar_bytes())
    request = pb.CommitContainerRequest(container_id=ID1, image="new")
    expect(CODE.NOT_FOUND, storage.stub.CommitContainer, request, ID1)
    storage.prepare(ID1)
    for name in ("../../x", "a/b", ""):
        expect(CODE.INVALID_ARGUMENT, storage.stub.CommitContainer, pb.CommitContainerRequest(container_id=ID1, image=name))
    expect(CODE.INVALID_ARGUMENT, storage.stub.CommitContainer, pb.CommitContainerRequest(container_id="1", image="x"))
    assert not (storage.root.parent / "x.tar").exists()
    details = expect(CODE.ALREADY_EXISTS, storage.stub.CommitContainer, pb.CommitContainerRequest(container_id=ID1, image="base"))
    assert "base" in details
    Path(storage.root / "overlay2" / ID1 / "merged" / "marker").write_text("1")
    replaced = storage.commit("base", replace=True)
    assert "marker" in members_of(storage.image_tar("base").read_bytes())
    assert replaced.container_ids == [ID1]
    assert [n for n in os.listdir(storage.root / "image") if n.startswith(".")] == []


@root_test
def test_commit_of_an_unmounted_rootfs(storage):
    drop_image(storage, "base", tar_bytes())
    Path(storage.prepare(ID1).path, "a.txt").write_text("x")
    storage.core.rootfs.unmount(ID1)
    storage.commit("snap")
    assert "a.txt" in members_of(storage.image_tar("snap").read_bytes())
    assert storage.mounts_under_root() == []  # the commit's own mount is gone


@root_test
def test_export_streams_the_commit_tar(storage, tmp_path):
    drop_image(storage, "base", tar_bytes({"big": os.urandom(200_000)}))
    rootfs = storage.prepare(ID1, volumes=[vol(tmp_path / "v", "/data")])
    Path(rootfs.path, "a.txt").write_text("x")
    Path(rootfs.path, "data", "secret").write_text("host")
    chunks = [r.chunk for r in storage.stub.ExportContainer(pb.ExportContainerRequest(container_id=ID1), timeout=60)]
    assert len(chunks) > 1 and all(len(c) <= 64 * 1024 for c in chunks)
    exported = b"".join(chunks)
    storage.commit("same")
    assert exported == storage.image_tar("same").read_bytes()
    assert "a.txt" in members_of(exported) and "data/secret" not in members_of(exported)
    expect(CODE.NOT_FOUND, storage.stub.ExportContainer, pb.ExportContainerRequest(container_id=ID2))
    expect(CODE.INVALID_ARGUMENT, storage.stub.ExportContainer, pb.ExportContainerRequest(container_id="x"))


# -- usage, restart -----------------------------------------------------------------------


@root_test
def test_usage_counts_each_layer_once(storage, tmp_path):
    drop_image(storage, "base", tar_bytes({"payload": b"p" * 500_000}))
    storage.prepare(ID1, volumes=[vol(tmp_path / "v", "/data")])
    rootfs = storage.prepare(ID2)
    Path(rootfs.path, "written").write_bytes(b"w" * 100_000)
    (tmp_path / "v" / "f").write_bytes(b"v" * 50_000)
    usage = storage.stub.GetUsage(pb.GetUsageRequest(), timeout=30)
    assert [i.name for i in usage.images] == ["base"]
    assert len(usage.layers) == 1
    layer = usage.layers[0]
    assert layer.rootfs_count == 2 and list(layer.images) == ["base"] and layer.size_bytes >= 500_000
    uppers = {r.container_id: r.upper_size_bytes for r in usage.rootfs}
    assert uppers[ID2] >= 100_000 and uppers[ID1] < 100_000
    assert [(v.volume.host_path, v.size_bytes >= 50_000) for v in usage.volumes] == [(str(tmp_path / "v"), True)]


def test_start_cleans_leftovers_of_a_crash(temp_config):
    core = StorageCore(temp_config)
    core.start()
    root = core.paths.root
    leftovers = [
        root / "layers" / "tmp" / ("ab" * 32 + "-1234"),
        root / "overlay2" / f".{ID1}.creating-abcd",
        root / "overlay2" / f".{ID2}.removing-abcd",
    ]
    for path in leftovers:
        (path / "fs").mkdir(parents=True)
        (path / "fs" / "file").write_text("half")
    (root / "image" / ".base.tar.tmp-1234").write_bytes(b"half")
    StorageCore(temp_config).start()
    assert not any(path.exists() for path in leftovers)
    assert os.listdir(root / "image") == []


@root_test
def test_busybox_image_from_the_script(storage):
    env = {**os.environ, "MYDOCKER_ROOT": str(storage.root)}
    subprocess.run([str(SCRIPT)], env=env, check=True, capture_output=True, timeout=120)
    rootfs = storage.prepare(ID1, "busybox")
    lower = storage.root / "overlay2" / ID1 / "lower"
    assert {"bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "var"} <= set(os.listdir(lower))
    run = subprocess.run(
        ["chroot", rootfs.path, "/bin/sh", "-c", "echo KubeExplorer > /a.txt && cat /a.txt"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert run.stdout == "KubeExplorer\n"
    storage.commit("busybox-with-custom")
    again = storage.prepare(ID2, "busybox-with-custom")
    assert Path(again.path, "a.txt").read_text() == "KubeExplorer\n"
    assert os.stat(Path(again.path, "bin/sh")).st_ino == os.stat(Path(again.path, "bin/busybox")).st_ino


def test_every_rpc_is_implemented_and_empty_requests_are_refused_or_harmless(storage):
    """The storage half of the old UNIMPLEMENTED check: an empty request never reaches a fake success."""
    service = pb.DESCRIPTOR.services_by_name["StorageService"]
    harmless = {"GetInfo", "ListImages", "ListRootfs", "ListVolumes", "GetUsage", "PruneLayers"}
    for method in service.methods:
        request = getattr(pb, method.input_type.name)()
        call = getattr(storage.stub, method.name)
        try:
            result = call(iter([request]) if method.client_streaming else request, timeout=10)
            if method.server_streaming:
                list(result)
        except grpc.RpcError as err:
            assert err.code() in (CODE.INVALID_ARGUMENT, CODE.NOT_FOUND), (method.name, err.code(), err.details())
            assert method.name not in harmless, method.name
        else:
            assert method.name in harmless, f"{method.name} accepted an empty request"


@root_test
def test_file_volume_and_a_failing_volume_rolls_back(storage, tmp_path):
    drop_image(storage, "base", tar_bytes())
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n")
    rootfs = storage.prepare(ID1, volumes=[vol(tmp_path / "hosts", "/etc/hosts", True)])
    assert Path(rootfs.path, "etc/hosts").read_text() == "127.0.0.1 localhost\n"
    request = pb.PrepareRootfsRequest(
        container_id=ID2, image="base", volumes=[vol(tmp_path / "ok", "/ok"), vol(tmp_path / "hosts" / "sub", "/bad")]
    )
    expect(CODE.FAILED_PRECONDITION, storage.stub.PrepareRootfs, request, "goes through a file")
    assert os.listdir(storage.root / "overlay2") == [ID1]
    assert not [m for m in storage.mounts_under_root() if ID2 in m]


# -- reconcile at start, removal from every half state, prepare retries (issue #4) ---------------


def bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


@root_test
def test_start_removes_incomplete_rootfs_and_their_mounts_but_never_a_complete_one(storage, tmp_path):
    drop_image(storage, "base", tar_bytes())
    volume = tmp_path / "volume"
    complete = storage.prepare(ID1, volumes=[vol(volume, "/data")])
    Path(complete.path, "data", "kept").write_text("host data")
    Path(complete.path, "written").write_text("container data")
    # ID2: record lost and nothing written, but still mounted with a volume: never completed.
    storage.prepare(ID2, volumes=[vol(volume, "/data")])
    (storage.root / "overlay2" / ID2 / ".rootfs.json").unlink()
    # ID3: record lost, but its upper holds data: kept for an explicit RemoveRootfs.
    third = storage.prepare(ID3)
    Path(third.path, "precious").write_text("x")
    (storage.root / "overlay2" / ID3 / ".rootfs.json").unlink()
    storage.core.rootfs.unmount(ID3)
    # An interrupted creation with a mount below it (as if a volume had been bound there by hand).
    creating = storage.root / "overlay2" / f".{ID3}.creating-0a0a0a0a"
    (creating / "merged" / "data").mkdir(parents=True)
    bind(volume, creating / "merged" / "data")
    # Scratch of an interrupted commit, still mounted.
    view = storage.root / "tmp" / "storage" / "view-0a0a0a0a"
    view.mkdir(parents=True)
    bind(volume, view)

    StorageCore(storage.core.config).start()

    assert sorted(os.listdir(storage.root / "overlay2")) == sorted([ID1, ID3])
    assert not (storage.root / "tmp" / "storage").exists()
    assert (volume / "kept").read_text() == "host data", "volumes are unmounted before anything is deleted"
    assert Path(complete.path, "written").read_text() == "container data"
    mounts = storage.mounts_under_root()
    assert mounts == [complete.path, complete.path + "/data"]
    assert (storage.root / "overlay2" / ID3 / "upper" / "precious").read_text() == "x"
    assert storage.remove(ID3) is True
    assert storage.remove(ID1) is True
    assert (volume / "kept").read_text() == "host data"


@root_test
def test_remove_rootfs_from_every_half_state(storage, tmp_path):
    drop_image(storage, "base", tar_bytes())
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "kept").write_text("host data")
    overlay2 = storage.root / "overlay2"
    # After a reboot: nothing mounted.
    storage.prepare(ID1, volumes=[vol(volume, "/data")])
    RootfsStore.unmount_tree(str(overlay2))
    assert storage.remove(ID1) is True and storage.remove(ID1) is False
    # A volume still bound below an overlay that is gone.
    storage.prepare(ID1, volumes=[vol(volume, "/data")])
    storage.core.rootfs.unmount(ID1)
    (overlay2 / ID1 / "merged" / "data").mkdir()
    bind(volume, overlay2 / ID1 / "merged" / "data")
    assert storage.remove(ID1) is True and storage.mounts_under_root() == []
    # Mounted, with its record lost.
    storage.prepare(ID1, volumes=[vol(volume, "/data")])
    (overlay2 / ID1 / ".rootfs.json").unlink()
    assert storage.remove(ID1) is True and storage.mounts_under_root() == []
    # Only the hidden leftovers of an interrupted removal and creation of this id (one with a mount).
    (overlay2 / f".{ID1}.removing-0a0a0a0a" / "upper").mkdir(parents=True)
    (overlay2 / f".{ID1}.creating-0b0b0b0b" / "merged").mkdir(parents=True)
    bind(volume, overlay2 / f".{ID1}.creating-0b0b0b0b" / "merged")
    (overlay2 / f".{ID2}.removing-0a0a0a0a").mkdir()
    assert storage.remove(ID1) is True
    assert os.listdir(overlay2) == [f".{ID2}.removing-0a0a0a0a"], "another id's leftovers are not touched"
    assert storage.remove(ID1) is False
    assert (volume / "kept").read_text() == "host data" and storage.mounts_under_root() == []


@root_test
def test_prepare_again_returns_the_same_rootfs_or_refuses_without_touching_it(storage, tmp_path):
    drop_image(storage, "base", tar_bytes())
    drop_image(storage, "other", tar_bytes({"etc/other": "1"}))
    volumes = [vol(tmp_path / "a", "/a"), vol(tmp_path / "b", "/b", True)]
    first = storage.prepare(ID1, volumes=volumes)
    Path(first.path, "written").write_text("mine")
    # A retry (volumes in another order) after a reboot: the same rootfs, mounted again, upper kept.
    RootfsStore.unmount_tree(str(storage.root / "overlay2"))
    again = storage.prepare(ID1, volumes=list(reversed(volumes)))
    assert again.mounted and again.path == first.path and Path(again.path, "written").read_text() == "mine"
    assert len(storage.mounts_under_root()) == 3
    for request in (
        pb.PrepareRootfsRequest(container_id=ID1, image="other", volumes=volumes),
        pb.PrepareRootfsRequest(container_id=ID1, image="base", volumes=volumes[:1]),
    ):
        expect(CODE.ALREADY_EXISTS, storage.stub.PrepareRootfs, request, "remove it first")
    assert Path(first.path, "written").read_text() == "mine" and len(storage.mounts_under_root()) == 3
    assert storage.core.rootfs.read(ID1).image == "base"


@root_test
def test_usage_shares_one_layer_between_images_of_the_same_content(storage):
    drop_image(storage, "a", tar_bytes({"payload": b"p" * 200_000}))
    drop_image(storage, "b", tar_bytes({"payload": b"p" * 200_000}))
    drop_image(storage, "c", tar_bytes({"etc/c": "c"}))
    storage.prepare(ID1, "a")
    storage.prepare(ID2, "b")
    orphan = storage.prepare(ID3, "c")
    Path(orphan.path, "big").write_bytes(b"o" * 100_000)
    (storage.root / "overlay2" / ID3 / ".rootfs.json").unlink()
    usage = storage.stub.GetUsage(pb.GetUsageRequest(), timeout=30)
    assert sorted(i.name for i in usage.images) == ["a", "b", "c"] and all(i.digest for i in usage.images)
    by_images = {tuple(layer.images): layer for layer in usage.layers}
    assert set(by_images) == {("a", "b"), ("c",)}
    assert by_images[("a", "b")].rootfs_count == 2 and by_images[("c",)].rootfs_count == 1
    # The record-less rootfs still takes disk space, so it is counted.
    uppers = {r.container_id: r.upper_size_bytes for r in usage.rootfs}
    assert set(uppers) == {ID1, ID2, ID3} and uppers[ID3] >= 100_000
    storage.remove(ID3)


@root_test
def test_prune_keeps_layers_of_unhashed_images_and_of_record_less_rootfs(storage):
    drop_image(storage, "base", tar_bytes())
    drop_image(storage, "gone", tar_bytes({"etc/gone": "1"}))
    storage.prepare(ID1, "base")
    storage.prepare(ID2, "gone")
    storage.remove(ID1)
    # base's tar is touched (as a hand copy does): its cached digest is stale, its content unchanged.
    os.utime(storage.image_tar("base"), (1, 1))
    assert storage.stub.GetImage(pb.GetImageRequest(name="base"), timeout=5).image.digest == ""
    # ID2's record is lost while it is mounted on the layer of an image that is then removed.
    (storage.root / "overlay2" / ID2 / ".rootfs.json").unlink()
    storage.stub.RemoveImage(pb.RemoveImageRequest(name="gone"), timeout=5)
    assert list(storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30).digests) == []
    assert len(os.listdir(storage.root / "layers" / "sha256")) == 2
    assert Path(storage.root / "overlay2" / ID2 / "merged" / "etc" / "gone").read_text() == "1"
    storage.remove(ID2)
    pruned = storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30)
    assert len(pruned.digests) == 1 and pruned.reclaimed_bytes > 0
    base_digest = storage.stub.GetImage(pb.GetImageRequest(name="base"), timeout=5).image.digest
    assert os.listdir(storage.root / "layers" / "sha256") == [base_digest.removeprefix("sha256:")]
