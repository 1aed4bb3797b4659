"""The storage service through its gRPC API: a real server on a temp unix socket, real mounts (as root)."""

from __future__ import annotations

import hashlib
import io
import json
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
from services.common import reference
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

    def commit(self, image: str, container_id=ID1, replace=False, changes=(), comment="", author=""):
        request = pb.CommitContainerRequest(
            container_id=container_id, image=image, replace=replace, changes=list(changes), comment=comment, author=author
        )
        return self.stub.CommitContainer(request, timeout=60).image

    def get(self, name: str):
        return self.stub.GetImage(pb.GetImageRequest(name=name), timeout=30).image

    def list_images(self):
        return list(self.stub.ListImages(pb.ListImagesRequest(), timeout=30).images)

    def remove_image(self, name: str, force=False):
        return self.stub.RemoveImage(pb.RemoveImageRequest(name=name, force=force), timeout=30)

    def tag(self, source: str, target: str):
        return self.stub.TagImage(pb.TagImageRequest(source=source, target=target), timeout=30).image

    def save(self, *references: str) -> bytes:
        request = pb.SaveImageRequest(references=list(references))
        return b"".join(r.chunk for r in self.stub.SaveImage(request, timeout=60))

    def load(self, data: bytes, name=""):
        return self.stub.LoadImage(load_requests(data, name), timeout=60)

    def export(self, container_id=ID1) -> bytes:
        request = pb.ExportContainerRequest(container_id=container_id)
        return b"".join(r.chunk for r in self.stub.ExportContainer(request, timeout=60))

    def config_blob(self, image) -> bytes:
        return (self.root / "blobs" / "sha256" / image.id.removeprefix("sha256:")).read_bytes()

    def stored(self, kind: str) -> list[str]:
        """The entries of ROOT/<kind>/sha256 ("imagedb", "blobs" or "layers"), sorted; [] when it does not exist."""
        directory = self.root / kind / "sha256"
        return sorted(os.listdir(directory)) if directory.exists() else []

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


def load_requests(data: bytes, name="", chunk=7000):
    yield pb.LoadImageRequest(header=pb.ImportImageHeader(name=name, expected_size=len(data)))
    for start in range(0, len(data), chunk):
        yield pb.LoadImageRequest(chunk=data[start : start + chunk])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree_of(data: bytes) -> dict[str, tuple]:
    """What a flat tar holds: name -> (type, permission bits, content of a regular file or link target)."""
    result = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            content = archive.extractfile(member).read() if member.isfile() else member.linkname
            result[member.name] = (member.type, member.mode & 0o7777, content)
    return result


def tree_on_disk(root: Path, skip_below: tuple[str, ...] = ()) -> dict[str, tuple]:
    """tree_of for a directory: the same keys and values, entries below `skip_below` left out (their dirs kept)."""
    result = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            if relative.startswith(tuple(f"{prefix}/" for prefix in skip_below)):
                continue
            st = path.lstat()
            if path.is_symlink():
                result[relative] = (tarfile.SYMTYPE, st.st_mode & 0o7777, os.readlink(path))
            elif path.is_dir():
                result[relative] = (tarfile.DIRTYPE, st.st_mode & 0o7777, "")
            else:
                result[relative] = (tarfile.REGTYPE, st.st_mode & 0o7777, path.read_bytes())
    return result


class DockerArchive:
    """A docker-archive (`docker save` format) read with tarfile: manifest.json and the blobs it names."""

    def __init__(self, data: bytes):
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            self.files = {m.name: archive.extractfile(m).read() for m in archive.getmembers() if m.isfile()}
        assert {"manifest.json", "index.json", "oci-layout"} <= set(self.files), sorted(self.files)
        self.manifest = json.loads(self.files["manifest.json"])

    @classmethod
    def at(cls, path: Path) -> "DockerArchive":
        return cls(path.read_bytes())

    def entry(self, tag: str) -> dict:
        found = [entry for entry in self.manifest if tag in entry["RepoTags"]]
        assert len(found) == 1, (tag, self.manifest)
        return found[0]

    def config(self, tag: str) -> bytes:
        return self.files[self.entry(tag)["Config"]]

    def layers(self, tag: str) -> list[bytes]:
        """The layer blobs of the tagged image, bottom first."""
        return [self.files[name] for name in self.entry(tag)["Layers"]]


def tag_archive(storage: Storage, name: str) -> DockerArchive:
    """The complete tag file of `name`: commit and tag publish a thin one first, completed in the background."""
    assert storage.core.images.tag_files.wait_idle(timeout=30), "the thin tag files were not completed"
    return DockerArchive.at(storage.image_tar(name))


def assert_tag_file(storage: Storage, name: str, image, layers: list[bytes]) -> DockerArchive:
    """ROOT/image/<name>.tar is a docker-archive of `image` alone, tagged "<name>:latest", with these layer blobs.

    Once complete: commit and tag publish a thin file first (tagfiles.py) and complete it in the background.
    """
    assert storage.core.images.tag_files.wait_idle(timeout=30), "the thin tag files were not completed"
    archive = DockerArchive.at(storage.image_tar(name))
    assert [entry["RepoTags"] for entry in archive.manifest] == [[f"{name}:latest"]]
    assert sha256(archive.config(f"{name}:latest")) == image.id
    assert archive.layers(f"{name}:latest") == layers
    return archive


def assert_nothing_stored(storage: Storage) -> None:
    """No image record, blob or unpacked layer (and no half-unpacked one)."""
    assert (storage.stored("imagedb"), storage.stored("blobs"), storage.stored("layers")) == ([], [], [])
    tmp = storage.root / "layers" / "tmp"
    assert not tmp.exists() or os.listdir(tmp) == []


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
    # The id is the digest of the config; the one layer is the tar as given (blob digest == diff id).
    assert (image.name, list(image.repo_tags), image.size_bytes) == ("base", ["base:latest"], len(data))
    assert image.id == image.digest == sha256(storage.config_blob(image))
    assert [(layer.digest, layer.diff_id, layer.size_bytes) for layer in image.layers] == [(sha256(data), sha256(data), len(data))]
    assert image.created_at.seconds > 0
    assert_tag_file(storage, "base", image, [data])
    alpha = storage.import_bytes("alpha", data)
    listed = storage.list_images()
    assert [i.id for i in listed] == sorted(i.id for i in listed)
    assert sorted(tag for i in listed for tag in i.repo_tags) == ["alpha:latest", "base:latest"]
    assert {i.layers[0].diff_id for i in listed} == {sha256(data)}
    assert len(storage.stored("layers")) == 1, "the same layer is unpacked once"
    got = storage.get("base")
    assert got.id == image.id and list(got.container_ids) == [] and storage.get("alpha").id == alpha.id
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
    replaced = storage.import_bytes("base", newer, replace=True)
    assert replaced.layers[0].diff_id == sha256(newer) and storage.get("base").id == replaced.id
    assert_tag_file(storage, "base", replaced, [newer])


@pytest.mark.parametrize(
    "messages,fragment",
    [
        ([pb.ImportImageRequest(header=pb.ImportImageHeader(name="../../x"))], 'invalid reference "../../x"'),
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
    expect(CODE.NOT_FOUND, storage.stub.GetImage, pb.GetImageRequest(name="nope"), 'image "nope" not found: ')
    # "a/b" is a valid reference (docker.io/a/b:latest) that names nothing here.
    expect(CODE.NOT_FOUND, storage.stub.GetImage, pb.GetImageRequest(name="a/b"), 'image "a/b" not found: ')
    for invalid in ("Upper", "a//b", "bad name"):
        expect(CODE.INVALID_ARGUMENT, storage.stub.GetImage, pb.GetImageRequest(name=invalid), f'invalid reference "{invalid}": ')
    expect(CODE.NOT_FOUND, storage.stub.RemoveImage, pb.RemoveImageRequest(name="nope"), 'image "nope" not found: ')
    expect(CODE.INVALID_ARGUMENT, storage.stub.RemoveImage, pb.RemoveImageRequest(name="../../etc/passwd"), "invalid reference")


def test_remove_unused_image(storage):
    imported = storage.import_bytes("base", tar_bytes())
    removed = storage.remove_image("base")
    assert removed.image.name == "base" and removed.image.id == imported.id and not storage.image_tar("base").exists()
    assert (list(removed.untagged), list(removed.deleted)) == (["base:latest"], [imported.id])
    assert storage.list_images() == []
    assert_nothing_stored(storage)


def test_hand_dropped_image_is_loaded_when_first_listed(storage):
    data = tar_bytes()
    drop_image(storage, "base", data)
    (storage.root / "image" / ".junk.tar.tmp-1").write_bytes(b"")
    (storage.root / "image" / "notes.txt").write_text("not an image")
    images = storage.list_images()
    assert [(i.name, list(i.repo_tags)) for i in images] == [("base", ["base:latest"])]
    image = images[0]
    assert image.id == image.digest == sha256(storage.config_blob(image))
    assert [layer.diff_id for layer in image.layers] == [sha256(data)] and image.size_bytes == len(data)
    assert storage.stored("imagedb") == [image.id.removeprefix("sha256:") + ".json"]
    # Loaded once: later uses read the record.
    hashes = storage.core.stats.hashes
    assert storage.get("base").id == image.id and storage.core.stats.hashes == hashes


def test_a_touched_or_copied_again_dropped_tar_keeps_its_image_id(storage):
    data = tar_bytes({"etc/motd": "same\n"})
    path = drop_image(storage, "base", data)
    first = storage.get("base")
    os.utime(path, (1_800_000_000, 1_800_000_000))
    assert storage.get("base").id == first.id
    path.unlink()
    drop_image(storage, "base", data)
    assert storage.get("base").id == first.id
    assert [image.id for image in storage.list_images()] == [first.id], "no untagged leftover"
    # Other content is another image, and the old one (untagged, unused) is listed as <none>.
    drop_image(storage, "base", tar_bytes({"etc/motd": "changed\n"}))
    assert storage.get("base").id != first.id


def test_prune_images_deletes_untagged_unused_ones_and_with_all_every_unused_one(storage):
    kept = storage.import_bytes("kept", tar_bytes({"etc/kept": "1"}))
    used = storage.import_bytes("used", tar_bytes({"etc/used": "2"}))
    storage.prepare(ID1, "used")
    dangling = storage.import_bytes("dangling", tar_bytes({"etc/dangling": "3"}))
    storage.remove_image("dangling")  # deleted at once: untagged and unused
    moved = storage.import_bytes("moved", tar_bytes({"etc/old": "4"}))
    storage.tag("kept", "moved")  # the old "moved" image is now untagged (dangling)
    reply = storage.stub.PruneImages(pb.PruneImagesRequest(), timeout=30)
    assert list(reply.deleted) == [moved.id] and reply.reclaimed_bytes > 0 and list(reply.untagged) == []
    assert {image.id for image in storage.list_images()} == {kept.id, used.id}
    reply = storage.stub.PruneImages(pb.PruneImagesRequest(all=True), timeout=30)
    assert list(reply.deleted) == [kept.id] and sorted(reply.untagged) == ["kept:latest", "moved:latest"]
    assert [image.id for image in storage.list_images()] == [used.id], "an image a rootfs uses stays"
    assert dangling.id not in {image.id for image in storage.list_images()}


def test_commit_and_tag_publish_a_thin_tag_file_completed_in_the_background_or_at_start(storage):
    storage.import_bytes("base", tar_bytes({"etc/base": "1"}))
    storage.prepare(ID1, "base")
    (storage.root / "overlay2" / ID1 / "merged" / "etc" / "new").write_text("2")
    committed = storage.stub.CommitContainer(pb.CommitContainerRequest(container_id=ID1, image="child"), timeout=60).image
    storage.core.images.tag_files.wait_idle(timeout=30)
    full = tag_archive(storage, "child")
    blobs = {name for name in full.files if name.startswith("blobs/")}
    wanted = {f"blobs/sha256/{digest[7:]}" for digest in [committed.id] + [layer.digest for layer in committed.layers]}
    assert wanted <= blobs and len(blobs - wanted) == 1, "every blob, plus the OCI manifest"
    assert not (storage.root / "imagedb" / "thin").exists() or not list((storage.root / "imagedb" / "thin").rglob("*.json"))
    # A thin file left by a stop (its marker written, the completion never run) is completed at start.
    core = storage.core
    record = core.images.db.get(committed.id)
    ref = reference.parse("leftover")
    core.images.tag_files._enqueue = lambda ref, image_id: None  # as if the service died right after publishing
    core.images.tag_files.write(ref, record, replace=False, keep=frozenset())
    thin = DockerArchive.at(storage.image_tar("leftover"))  # read before any completion: thin
    assert not [name for name in thin.files if name.endswith(committed.layers[0].digest[7:])], "thin: no layer"
    assert storage.get("leftover").id == committed.id, "a thin tag file resolves at once"
    del core.images.tag_files._enqueue
    assert core.images.tag_files.complete_pending() == 1 and core.images.tag_files.wait_idle(timeout=30)
    assert tag_archive(storage, "leftover").layers("leftover:latest") == full.layers("child:latest")
    assert not list((storage.root / "imagedb" / "thin").rglob("*.json"))


def test_save_then_load_gives_back_the_same_images_and_tags(storage):
    base_tar, other_tar = tar_bytes({"etc/base": "1"}), tar_bytes({"etc/other": "2"})
    base = storage.import_bytes("base", base_tar)
    other = storage.import_bytes("other", other_tar)
    storage.tag("other", "localhost:5000/team/app:v1")
    saved = storage.save("base", "other", "localhost:5000/team/app:v1")
    archive = DockerArchive(saved)
    assert sorted(sorted(entry["RepoTags"]) for entry in archive.manifest) == [
        ["base:latest"], ["localhost:5000/team/app:v1", "other:latest"]
    ]
    assert sha256(archive.config("base:latest")) == base.id and archive.layers("base:latest") == [base_tar]
    assert sha256(archive.config("other:latest")) == other.id and archive.layers("other:latest") == [other_tar]
    for name in ("base", "other", "localhost:5000/team/app:v1"):
        storage.remove_image(name)
    assert storage.list_images() == []
    assert_nothing_stored(storage)
    loaded = storage.load(saved)
    assert sorted((image.id, sorted(image.repo_tags)) for image in loaded.images) == sorted(
        [(base.id, ["base:latest"]), (other.id, ["localhost:5000/team/app:v1", "other:latest"])]
    )
    assert list(loaded.untagged) == []
    assert storage.get("localhost:5000/team/app:v1").id == other.id
    assert_tag_file(storage, "base", storage.get("base"), [base_tar])
    assert (storage.root / "image" / "localhost:5000" / "team" / "app:v1.tar").is_file()
    expect(CODE.NOT_FOUND, storage.stub.SaveImage, pb.SaveImageRequest(references=["base", "nope"]), 'image "nope" not found')


def test_load_a_plain_rootfs_tar_needs_a_name(storage):
    data = tar_bytes({"etc/plain": "1"})
    expect(CODE.INVALID_ARGUMENT, storage.stub.LoadImage, load_requests(data), "give a name")
    assert os.listdir(storage.root / "image") == []
    assert_nothing_stored(storage)
    loaded = storage.load(data, name="plain")
    assert (len(loaded.images), list(loaded.untagged)) == (1, [])
    image = loaded.images[0]
    assert list(image.repo_tags) == ["plain:latest"] and [layer.diff_id for layer in image.layers] == [sha256(data)]
    assert_tag_file(storage, "plain", image, [data])
    assert storage.get("plain").id == image.id


def test_tag_image_writes_a_tag_file_and_a_load_reports_the_tags_it_moves(storage):
    base = storage.import_bytes("base", tar_bytes())
    tagged = storage.tag("base", "localhost:5000/team/app:v1")
    assert tagged.id == base.id and sorted(tagged.repo_tags) == ["base:latest", "localhost:5000/team/app:v1"]
    storage.core.images.tag_files.wait_idle(timeout=30)
    archive = DockerArchive.at(storage.root / "image" / "localhost:5000" / "team" / "app:v1.tar")
    assert [entry["RepoTags"] for entry in archive.manifest] == [["localhost:5000/team/app:v1"]]
    assert sha256(archive.config("localhost:5000/team/app:v1")) == base.id
    assert storage.get("localhost:5000/team/app:v1").id == base.id
    expect(CODE.NOT_FOUND, storage.stub.TagImage, pb.TagImageRequest(source="nope", target="x"), 'image "nope" not found')
    expect(CODE.INVALID_ARGUMENT, storage.stub.TagImage, pb.TagImageRequest(source="base", target="a//b"), "invalid reference")
    # TagImage moves a tag to another image; the first image keeps its other tags.
    saved = storage.save("base")
    other = storage.import_bytes("other", tar_bytes({"etc/other": "1"}))
    storage.tag("other", "base")
    assert storage.get("base").id == other.id
    assert list(storage.get(base.id).repo_tags) == ["localhost:5000/team/app:v1"]
    # Loading the saved archive moves "base" back, and says so.
    loaded = storage.load(saved)
    assert list(loaded.untagged) == ["base:latest"] and storage.get("base").id == base.id
    assert list(storage.get(other.id).repo_tags) == ["other:latest"]


@root_test
def test_remove_image_by_id_with_several_tags_and_with_force(storage):
    image = storage.import_bytes("base", tar_bytes())
    storage.tag("base", "alias")
    details = expect(CODE.FAILED_PRECONDITION, storage.stub.RemoveImage, pb.RemoveImageRequest(name=image.id))
    assert "2 tags" in details
    # One tag of two: only untagged.
    removed = storage.remove_image("alias")
    assert (list(removed.untagged), list(removed.deleted)) == (["alias:latest"], [])
    assert storage.get("base").id == image.id
    # By id (a prefix) with force: every tag, then the image.
    storage.tag("base", "alias")
    removed = storage.remove_image(image.id[len("sha256:"):][:12], force=True)
    assert (sorted(removed.untagged), list(removed.deleted)) == (["alias:latest", "base:latest"], [image.id])
    storage.core.images.tag_files.wait_idle(timeout=30)  # the tag's background completion gives up: no temp left
    assert os.listdir(storage.root / "image") == []
    assert_nothing_stored(storage)
    # Forced while a container uses it: untagged, but the image stays for the container.
    drop_image(storage, "base", tar_bytes())
    rootfs = storage.prepare(ID1)
    expect(CODE.FAILED_PRECONDITION, storage.stub.RemoveImage, pb.RemoveImageRequest(name="base"), ID1)
    removed = storage.remove_image("base", force=True)
    assert (list(removed.untagged), list(removed.deleted)) == (["base:latest"], [])
    kept = storage.get(removed.image.id)
    assert list(kept.container_ids) == [ID1] and list(kept.repo_tags) == []
    assert Path(rootfs.path, "etc", "hostname").read_text() == "base\n"
    expect(CODE.FAILED_PRECONDITION, storage.stub.RemoveImage, pb.RemoveImageRequest(name=kept.id), ID1)
    storage.remove(ID1)
    removed = storage.remove_image(kept.id)
    assert (list(removed.untagged), list(removed.deleted)) == ([], [kept.id])
    assert_nothing_stored(storage)


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
    assert_nothing_stored(storage)
    assert not os.path.exists("/etc/mydocker-evil")
    # Refused again on every use, and by the other verbs that load it, never half-loaded.
    expect(CODE.INVALID_ARGUMENT, storage.stub.GetImage, pb.GetImageRequest(name="evil"), "escape/mydocker-evil")
    assert storage.list_images() == []
    assert_nothing_stored(storage)


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
    assert storage.image_tar("base").exists()
    # A layer used by an image or a rootfs is kept.
    assert list(storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30).digests) == []
    assert len(storage.stored("layers")) == 1
    storage.remove(ID1)
    # The last tag of an unused image: the image goes with its blobs and its layer, no prune needed.
    removed = storage.remove_image("base")
    assert (list(removed.untagged), list(removed.deleted)) == (["base:latest"], [removed.image.id])
    assert_nothing_stored(storage)
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
    base_tar = tar_bytes({"etc/gone": "will be deleted", "etc/motd": "hi"})
    drop_image(storage, "base", base_tar)
    rootfs = storage.prepare(ID1, volumes=[vol(tmp_path / "vol", "/data"), vol(tmp_path / "ro", "/srv", True)])
    merged = Path(rootfs.path)
    (merged / "a.txt").write_text("KubeExplorer\n")
    (merged / "data" / "host-secret").write_text("never in an image")
    (merged / "proc" / "junk").write_text("x")
    (merged / "dev" / "junk").write_text("x")
    (merged / "etc" / "gone").unlink()
    os.setxattr(merged / "a.txt", "user.mydocker", b"kept")
    image = storage.commit("busybox-with-custom")
    # The base's layer as it was, plus one layer with the container's changes.
    assert (image.name, list(image.repo_tags)) == ("busybox-with-custom", ["busybox-with-custom:latest"])
    assert image.id == image.digest == sha256(storage.config_blob(image))
    assert [layer.diff_id for layer in image.layers][:1] == [sha256(base_tar)] and len(image.layers) == 2
    assert image.size_bytes == sum(layer.size_bytes for layer in image.layers)
    archive = tag_archive(storage, "busybox-with-custom")
    base_blob, change = archive.layers("busybox-with-custom:latest")
    assert_tag_file(storage, "busybox-with-custom", image, [base_tar, change])
    assert [sha256(blob) for blob in (base_blob, change)] == [layer.digest for layer in image.layers]
    members = members_of(change)
    assert "a.txt" in members and "etc/.wh.gone" in members and "etc/motd" not in members
    assert members["data"].isdir() and members["srv"].isdir()
    assert not [n for n in members if n.startswith(("data/", "proc/", "dev/", "sys/"))]
    assert sorted(os.listdir(storage.root / "image")) == ["base.tar", "busybox-with-custom.tar"]
    assert storage.mounts_under_root() == [m.target for m in rootfs.mounts]  # only the rootfs's own mounts
    again = storage.prepare(ID2, "busybox-with-custom")
    assert Path(again.path, "a.txt").read_text() == "KubeExplorer\n"
    assert os.getxattr(Path(again.path, "a.txt"), "user.mydocker") == b"kept"
    assert not Path(again.path, "etc/gone").exists()
    assert Path(again.path, "etc/motd").read_text() == "hi"
    assert os.listdir(Path(again.path, "data")) == [] and os.listdir(Path(again.path, "proc")) == []
    assert Path(again.path, "tmp").stat().st_mode & 0o7777 == 0o1777


@root_test
def test_commit_with_changes_comment_and_author(storage):
    drop_image(storage, "base", tar_bytes())
    storage.prepare(ID1)
    author = "Ann <ann@example.com>"
    image = storage.commit("configured", changes=['CMD ["/bin/sh"]', "ENV A=1"], comment="first try", author=author)
    assert list(image.config.cmd.values) == ["/bin/sh"] and "A=1" in image.config.env and image.author == author
    last = image.history[-1]
    assert (last.created_by, last.comment, last.author) == (f"mydocker commit {ID1}", "first try", author)
    got = storage.get("configured")
    assert got.config == image.config and got.id == image.id == sha256(storage.config_blob(got))
    assert not storage.get("base").config.HasField("cmd"), "the parent image is unchanged"
    request = pb.CommitContainerRequest(container_id=ID1, image="bad", changes=["FROM scratch"])
    expect(CODE.INVALID_ARGUMENT, storage.stub.CommitContainer, request, "FROM scratch")
    assert not storage.image_tar("bad").exists()


def assert_lower_view(storage: Storage, rootfs, layers) -> None:
    """A rootfs of a multi-layer image: `lower` is a directory with a read-only overlay of the layers (top first)."""
    lower = storage.root / "overlay2" / rootfs.container_id / "lower"
    assert lower.is_dir() and not lower.is_symlink()
    entry = mountinfo.find(mountinfo.read(), str(lower))
    assert entry is not None and entry.fstype == "overlay" and "ro" in entry.options
    layer_dirs = [storage.root / "layers" / "sha256" / layer.diff_id.removeprefix("sha256:") / "fs" for layer in layers]
    stack = ":".join(str(directory) for directory in reversed(layer_dirs))
    view, overlay = rootfs.mounts[0], rootfs.mounts[1]
    assert (view.type, view.target, list(view.options)) == ("overlay", str(lower), [f"lowerdir={stack}", "ro"])
    assert (overlay.target, overlay.options[0]) == (rootfs.path, f"lowerdir={stack}")
    with pytest.raises(OSError) as caught:
        (lower / "new").write_text("x")
    assert caught.value.errno == 30  # EROFS


@root_test
def test_commit_of_a_commit_stacks_layers_under_a_read_only_lower_view(storage):
    drop_image(storage, "base", tar_bytes({"etc/motd": "hi"}))
    first = storage.prepare(ID1)
    Path(first.path, "one.txt").write_text("1")
    Path(first.path, "etc", "motd").unlink()
    two = storage.commit("two")
    second = storage.prepare(ID2, "two")
    assert len(two.layers) == 2
    assert_lower_view(storage, second, two.layers)
    for view in (second.path, storage.root / "overlay2" / ID2 / "lower"):
        assert Path(view, "one.txt").read_text() == "1" and not Path(view, "etc", "motd").exists()
    Path(second.path, "two.txt").write_text("2")
    three = storage.commit("three", container_id=ID2)
    assert [layer.diff_id for layer in three.layers][:2] == [layer.diff_id for layer in two.layers]
    assert len(three.layers) == 3 and len(storage.stored("layers")) == 3
    third = storage.prepare(ID3, "three")
    assert_lower_view(storage, third, three.layers)
    assert sorted(os.listdir(third.path)) == sorted(["bin", "dev", "etc", "proc", "sys", "tmp", "one.txt", "two.txt"])
    assert not Path(third.path, "etc", "motd").exists()
    archive = tag_archive(storage, "three")
    assert [sha256(blob) for blob in archive.layers("three:latest")] == [layer.digest for layer in three.layers]
    # Removing the rootfs takes its lower view's mount too.
    for container_id in (ID1, ID2, ID3):
        assert storage.remove(container_id) is True
    assert storage.mounts_under_root() == []


@root_test
def test_commit_errors_and_replace(storage):
    drop_image(storage, "base", tar_bytes())
    request = pb.CommitContainerRequest(container_id=ID1, image="new")
    expect(CODE.NOT_FOUND, storage.stub.CommitContainer, request, ID1)
    storage.prepare(ID1)
    for name, fragment in (("../../x", 'invalid reference "../../x"'), ("a//b", 'invalid reference "a//b"'), ("", "required")):
        request = pb.CommitContainerRequest(container_id=ID1, image=name)
        expect(CODE.INVALID_ARGUMENT, storage.stub.CommitContainer, request, fragment)
    expect(CODE.INVALID_ARGUMENT, storage.stub.CommitContainer, pb.CommitContainerRequest(container_id="1", image="x"))
    assert not (storage.root.parent / "x.tar").exists()
    details = expect(CODE.ALREADY_EXISTS, storage.stub.CommitContainer, pb.CommitContainerRequest(container_id=ID1, image="base"))
    assert "base" in details
    used = storage.get("base")
    Path(storage.root / "overlay2" / ID1 / "merged" / "marker").write_text("1")
    replaced = storage.commit("base", replace=True)
    change = tag_archive(storage, "base").layers("base:latest")[-1]
    assert "marker" in members_of(change)
    # The tag moved to the new image; the container keeps the image it was made from, now untagged.
    assert replaced.id != used.id and list(replaced.container_ids) == []
    kept = storage.get(used.id)
    assert list(kept.container_ids) == [ID1] and list(kept.repo_tags) == []
    assert [n for n in os.listdir(storage.root / "image") if n.startswith(".")] == []


@root_test
def test_commit_of_an_unmounted_rootfs(storage):
    drop_image(storage, "base", tar_bytes())
    Path(storage.prepare(ID1).path, "a.txt").write_text("x")
    storage.core.rootfs.unmount(ID1)
    storage.commit("snap")
    assert "a.txt" in members_of(tag_archive(storage, "snap").layers("snap:latest")[-1])
    assert storage.mounts_under_root() == []  # the commit's own mount is gone


@root_test
def test_export_streams_the_merged_filesystem(storage, tmp_path):
    drop_image(storage, "base", tar_bytes({"big": os.urandom(200_000), "etc/gone": "x"}))
    rootfs = storage.prepare(ID1, volumes=[vol(tmp_path / "v", "/data")])
    Path(rootfs.path, "a.txt").write_text("x")
    Path(rootfs.path, "data", "secret").write_text("host")
    Path(rootfs.path, "etc", "gone").unlink()
    chunks = [r.chunk for r in storage.stub.ExportContainer(pb.ExportContainerRequest(container_id=ID1), timeout=60)]
    assert len(chunks) > 1 and all(len(c) <= 64 * 1024 for c in chunks)
    exported = tree_of(b"".join(chunks))
    # Exactly what the container sees, its volume's contents left out.
    assert exported == tree_on_disk(Path(rootfs.path), skip_below=("data",))
    assert exported["a.txt"][2] == b"x" and "etc/gone" not in exported and "data/secret" not in exported
    # A commit holds the same filesystem: a rootfs of the new image exports the same tree.
    storage.commit("same")
    storage.prepare(ID2, "same")
    assert tree_of(storage.export(ID2)) == exported
    expect(CODE.NOT_FOUND, storage.stub.ExportContainer, pb.ExportContainerRequest(container_id=ID3))
    expect(CODE.INVALID_ARGUMENT, storage.stub.ExportContainer, pb.ExportContainerRequest(container_id="x"))


# -- usage, restart -----------------------------------------------------------------------


@root_test
def test_usage_counts_each_layer_once(storage, tmp_path):
    data = tar_bytes({"payload": b"p" * 500_000})
    drop_image(storage, "base", data)
    storage.prepare(ID1, volumes=[vol(tmp_path / "v", "/data")])
    rootfs = storage.prepare(ID2)
    Path(rootfs.path, "written").write_bytes(b"w" * 100_000)
    (tmp_path / "v" / "f").write_bytes(b"v" * 50_000)
    usage = storage.stub.GetUsage(pb.GetUsageRequest(), timeout=30)
    assert [(i.name, list(i.repo_tags)) for i in usage.images] == [("base", ["base:latest"])]
    assert len(usage.layers) == 1
    layer = usage.layers[0]
    assert (layer.digest, list(layer.images)) == (sha256(data), [usage.images[0].id])
    assert layer.rootfs_count == 2 and layer.size_bytes >= 500_000
    uppers = {r.container_id: r.upper_size_bytes for r in usage.rootfs}
    assert uppers[ID2] >= 100_000 and uppers[ID1] < 100_000
    assert [(v.volume.host_path, v.size_bytes >= 50_000) for v in usage.volumes] == [(str(tmp_path / "v"), True)]


def test_start_cleans_leftovers_of_a_crash(temp_config):
    core = StorageCore(temp_config)
    core.start()
    root = core.paths.root
    # A temp tar's tag is its writer's pid: one above pid_max can never be a live process (1234 once was).
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    leftovers = [
        root / "layers" / "tmp" / ("ab" * 32 + f"-{dead_pid}"),
        root / "overlay2" / f".{ID1}.creating-abcd",
        root / "overlay2" / f".{ID2}.removing-abcd",
    ]
    for path in leftovers:
        (path / "fs").mkdir(parents=True)
        (path / "fs" / "file").write_text("half")
    (root / "image" / f".base.tar.tmp-{dead_pid}").write_bytes(b"half")
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
    harmless = {"GetInfo", "ListImages", "ListRootfs", "ListVolumes", "GetUsage", "PruneLayers", "PruneImages"}
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


def host_data(directory: Path) -> Path:
    """A host directory holding `kept` ("host data"): what a removal must never delete."""
    directory.mkdir()
    (directory / "kept").write_text("host data")
    return directory


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
    volume = host_data(tmp_path / "volume")
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
def test_removal_never_deletes_through_a_mount_it_did_not_make(storage, tmp_path):
    # Removal unmounts `merged` without reading the mount table; a bind mount made by hand deeper
    # in `upper` is met by the deletion, which stops there, has the table's scan take it off, and
    # goes on: the host's files stay.
    drop_image(storage, "base", tar_bytes())
    host = host_data(tmp_path / "host")
    rootfs = storage.prepare(ID1)
    Path(rootfs.path, "made").mkdir()
    upper = storage.root / "overlay2" / ID1 / "upper"
    bind(host, upper / "made")
    assert storage.remove(ID1) is True
    assert (host / "kept").read_text() == "host data"
    assert storage.mounts_under_root() == [] and os.listdir(storage.root / "overlay2") == []


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
    shared = tar_bytes({"payload": b"p" * 200_000})
    for name in ("a", "b"):
        # Same bytes and the same mtime (a dropped tar's image is created when the file was): the same config.
        os.utime(drop_image(storage, name, shared), (1_700_000_000, 1_700_000_000))
    drop_image(storage, "c", tar_bytes({"etc/c": "c"}))
    storage.prepare(ID1, "a")
    storage.prepare(ID2, "b")
    orphan = storage.prepare(ID3, "c")
    Path(orphan.path, "big").write_bytes(b"o" * 100_000)
    (storage.root / "overlay2" / ID3 / ".rootfs.json").unlink()
    usage = storage.stub.GetUsage(pb.GetUsageRequest(), timeout=30)
    # One image with two tags, one layer unpacked once for both containers.
    tags = {image.id: sorted(image.repo_tags) for image in usage.images}
    assert sorted(tags.values()) == [["a:latest", "b:latest"], ["c:latest"]]
    id_ab, id_c = (storage.get(name).id for name in ("a", "c"))
    assert sorted(storage.get("b").container_ids) == [ID1, ID2]
    by_images = {tuple(layer.images): layer for layer in usage.layers}
    assert set(by_images) == {(id_ab,), (id_c,)}
    assert by_images[(id_ab,)].digest == sha256(shared)
    assert by_images[(id_ab,)].rootfs_count == 2 and by_images[(id_c,)].rootfs_count == 1
    # The record-less rootfs still takes disk space, so it is counted.
    uppers = {r.container_id: r.upper_size_bytes for r in usage.rootfs}
    assert set(uppers) == {ID1, ID2, ID3} and uppers[ID3] >= 100_000
    storage.remove(ID3)


@root_test
def test_prune_keeps_layers_of_reloaded_images_and_of_record_less_rootfs(storage):
    base, gone = tar_bytes(), tar_bytes({"etc/gone": "1"})
    drop_image(storage, "base", base)
    drop_image(storage, "gone", gone)
    storage.prepare(ID1, "base")
    storage.prepare(ID2, "gone")
    storage.remove(ID1)
    # base's tar is touched (as a hand copy does): it is loaded again on its next use, same layer.
    os.utime(storage.image_tar("base"), (1, 1))
    assert [layer.diff_id for layer in storage.get("base").layers] == [sha256(base)]
    # ID2's record is lost while it is mounted on the layer of an image that is then removed.
    (storage.root / "overlay2" / ID2 / ".rootfs.json").unlink()
    removed = storage.remove_image("gone")
    assert list(removed.deleted) == [removed.image.id], "no record says a container uses it"
    assert list(storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30).digests) == []
    assert len(storage.stored("layers")) == 2
    assert Path(storage.root / "overlay2" / ID2 / "merged" / "etc" / "gone").read_text() == "1"
    storage.remove(ID2)
    pruned = storage.stub.PruneLayers(pb.PruneLayersRequest(), timeout=30)
    assert list(pruned.digests) == [sha256(gone)] and pruned.reclaimed_bytes > 0
    assert storage.stored("layers") == [sha256(base).removeprefix("sha256:")]
