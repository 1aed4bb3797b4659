"""Loading and saving image archives against the real tools (umoci, skopeo, podman), plus hostile archives."""

import bz2
import gzip
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.storage.archive_read import LayerRef, LoadedImage, oci_names, read_archive
from services.storage.archive_write import ArchiveImage, docker_manifest, oci_manifest, write_docker_archive
from services.storage.content import ContentStore
from tests.imagetools import (
    HandImage, build_umoci_image, compress, docker_archive_members, file_digest, image_config, oci_blobs,
    oci_layout_members, oci_manifest_for, require_tool, run, sha256, skopeo_copy, skopeo_inspect, tar_bytes,
    temp_podman, write_tar,
)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="mdk-archives-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def umoci_image(workdir):
    return build_umoci_image(workdir / "umoci")


@pytest.fixture
def store(tmp_path):
    return ContentStore(tmp_path / "blobs")


def no_flat_config(diff_id):
    raise AssertionError("not a rootfs tar")


def load(path, store, **options):
    options.setdefault("flat_config", no_flat_config)
    return read_archive(path, store, what=f"archive {path.name}", **options)


def check_image(image: LoadedImage, umoci_image, store, same_config: bool = True):
    if same_config:
        assert image.config_digest == umoci_image.config_digest()
        assert store.read_bytes(image.config_digest) == umoci_image.blob(image.config_digest)
    config = json.loads(store.read_bytes(image.config_digest))
    assert config["config"]["Cmd"] == [umoci_image.cmd] and umoci_image.env in config["config"]["Env"]
    assert [layer.diff_id for layer in image.layers] == umoci_image.diff_ids()
    assert len(image.layers) == 3
    for layer in image.layers:
        assert store.size(layer.digest) == layer.size
        assert file_digest(store.path(layer.digest)) == layer.digest


# -- real tools: loading --------------------------------------------------------------------------

@pytest.mark.root
def test_docker_archive_written_by_skopeo(umoci_image, store, tmp_path):
    archive = tmp_path / "docker.tar"
    skopeo_copy(umoci_image.ref, f"docker-archive:{archive}:test/app:v1")
    [image] = load(archive, store)
    check_image(image, umoci_image, store)
    assert image.source_format == "docker-archive"
    assert image.repo_tags == ("docker.io/test/app:v1",)
    # skopeo writes uncompressed layers, as symlinks <id>/layer.tar -> ../<diff id>.tar
    assert all(layer.digest == layer.diff_id for layer in image.layers)
    assert {layer.media_type for layer in image.layers} == {"application/vnd.oci.image.layer.v1.tar"}
    config = json.loads(store.read_bytes(image.config_digest))
    assert config["config"]["Cmd"] == [umoci_image.cmd] and umoci_image.env in config["config"]["Env"]


@pytest.mark.root
def test_oci_archive_written_by_skopeo(umoci_image, store, tmp_path):
    archive = tmp_path / "oci.tar"
    skopeo_copy(umoci_image.ref, f"oci-archive:{archive}:test/app:v1")
    [image] = load(archive, store)
    check_image(image, umoci_image, store)
    assert image.source_format == "oci-archive"
    assert image.repo_tags == ("test/app:v1",)
    assert [layer.digest for layer in image.layers] == [d["digest"] for d in umoci_image.manifest()["layers"]]
    assert {layer.media_type for layer in image.layers} == {"application/vnd.oci.image.layer.v1.tar+gzip"}


@pytest.mark.root
def test_zstd_layers_and_a_bare_tag(umoci_image, store, tmp_path):
    archive = tmp_path / "zstd.tar"
    skopeo_copy(umoci_image.ref, f"oci-archive:{archive}:latest", "--dest-compress-format", "zstd", "--dest-compress")
    [image] = load(archive, store)
    check_image(image, umoci_image, store)
    assert image.repo_tags == ()  # "latest" names no repository: the caller names the image
    assert {layer.media_type for layer in image.layers} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    assert all(store.path(layer.digest).read_bytes()[:4] == b"\x28\xb5\x2f\xfd" for layer in image.layers)


@pytest.mark.root
@pytest.mark.parametrize("outer", ["gzip", "zstd"])
def test_a_compressed_docker_save(umoci_image, store, tmp_path, outer):
    plain = tmp_path / "docker.tar"
    skopeo_copy(umoci_image.ref, f"docker-archive:{plain}:test/app:v1")
    packed = tmp_path / f"docker.tar.{outer}"
    if outer == "gzip":
        packed.write_bytes(gzip.compress(plain.read_bytes()))
    else:
        require_tool("zstd")
        run("zstd", "-q", plain, "-o", packed)
    [image] = load(packed, store)
    check_image(image, umoci_image, store)
    assert image.repo_tags == ("docker.io/test/app:v1",)
    assert list(store.tmp.iterdir()) == []


@pytest.mark.root
def test_podman_save_both_formats(umoci_image, store, tmp_path):
    archive = tmp_path / "docker.tar"
    skopeo_copy(umoci_image.ref, f"docker-archive:{archive}:test/app:v1")
    with temp_podman() as podman:
        podman("load", "-q", "-i", archive)
        for fmt in ("docker-archive", "oci-archive"):
            saved = tmp_path / f"podman-{fmt}.tar"
            podman("save", "-q", "--format", fmt, "-o", saved, "docker.io/test/app:v1")
            [image] = load(saved, store)
            # podman rewrites the config when it converts to OCI: the same layers, another config digest
            check_image(image, umoci_image, store, same_config=fmt == "docker-archive")
            assert image.source_format == fmt
            assert image.repo_tags in (("docker.io/test/app:v1",), ())


# -- hand-made archives ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("old_style", [True, False])
def test_docker_archive_layers_as_received(store, tmp_path, how, old_style):
    image = HandImage.make(2, how)
    # a repeated layer (docker save writes it as a symlink to the first copy)
    image = HandImage(image.tars + image.tars[:1], image.blobs + image.blobs[:1],
                      image_config([sha256(t) for t in image.tars + image.tars[:1]]))
    archive = write_tar(tmp_path / "a.tar", docker_archive_members(image, ["busybox:latest"], old_style))
    [loaded] = load(archive, store)
    assert loaded.config_digest == sha256(image.config)
    assert [layer.digest for layer in loaded.layers] == [sha256(b) for b in image.blobs]
    assert [layer.diff_id for layer in loaded.layers] == [sha256(t) for t in image.tars]
    assert loaded.repo_tags == ("busybox:latest",)
    assert {layer.media_type for layer in loaded.layers} == {
        {"none": "application/vnd.oci.image.layer.v1.tar"}.get(how, f"application/vnd.oci.image.layer.v1.tar+{how}")
    }
    assert sorted(store.list()) == sorted({sha256(b) for b in image.blobs} | {sha256(image.config)})


def test_loading_twice_keeps_blobs_and_verifies_again(store, tmp_path):
    image = HandImage.make(2, "gzip")
    archive = write_tar(tmp_path / "a.tar", docker_archive_members(image, [], old_style=False))
    first = load(archive, store)
    assert load(archive, store) == first
    assert first[0].repo_tags == ()


@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
def test_plain_rootfs_tar(store, tmp_path, how):
    rootfs = tar_bytes({"bin/sh": b"#!", "etc/passwd": b"root:x:0:0::/root:/bin/sh\n"})
    archive = tmp_path / "rootfs.tar"
    archive.write_bytes(compress(rootfs, how))
    asked = []

    def flat_config(diff_id):
        asked.append(diff_id)
        return image_config([diff_id])

    [image] = read_archive(archive, store, what="rootfs.tar", flat_config=flat_config)
    diff_id = sha256(rootfs)
    assert asked == [diff_id]
    assert image == LoadedImage(sha256(image_config([diff_id])), (LayerRef(diff_id, diff_id, len(rootfs), "application/vnd.oci.image.layer.v1.tar"),), (), "rootfs")
    assert store.path(diff_id).read_bytes() == rootfs
    assert list(store.tmp.iterdir()) == []


def platform_index(platforms):
    """An OCI layout whose one entry is an image index with one image per platform."""
    entries, blobs = [], []
    images = {}
    for number, platform in enumerate(platforms):
        image = HandImage.make(1, "gzip", seed=platform)
        manifest = oci_manifest_for(image, "gzip")
        images[platform] = image
        blobs += oci_blobs(image, manifest)
        os_name, arch, *variant = platform.split("/")
        spec = {"os": os_name, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        entries.append({"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest), "platform": spec})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    blobs.append((sha256(index)[7:], index))
    top = {"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index),
           "annotations": {"io.containerd.image.name": "docker.io/library/multi:1", "org.opencontainers.image.ref.name": "1"}}
    return oci_layout_members([(top, blobs)]), images


def test_an_index_picks_the_platform(store, tmp_path):
    members, images = platform_index(["linux/arm64/v8", "linux/amd64", "linux/s390x"])
    archive = write_tar(tmp_path / "multi.tar", members)
    [image] = load(archive, store, platform="linux/amd64")
    assert image.config_digest == sha256(images["linux/amd64"].config)
    assert image.repo_tags == ("docker.io/library/multi:1",)
    [image] = load(archive, store, platform="linux/aarch64")
    assert image.config_digest == sha256(images["linux/arm64/v8"].config)
    # only the chosen platform's blobs are stored
    assert sha256(images["linux/s390x"].blobs[0]) not in store.list()


def test_oci_names():
    assert oci_names({"io.containerd.image.name": "docker.io/library/a:1", "org.opencontainers.image.ref.name": "1"}) == ("docker.io/library/a:1",)
    assert oci_names({"org.opencontainers.image.ref.name": "localhost:5000/a:b"}) == ("localhost:5000/a:b",)
    assert oci_names({"org.opencontainers.image.ref.name": "latest"}) == ()
    assert oci_names({}) == ()


# -- hostile archives -----------------------------------------------------------------------------

def expect_refusal(store, archive, match, **options):
    before = store.list()
    with pytest.raises(InvalidArgument) as caught:
        load(archive, store, **options)
    message = str(caught.value)
    assert "\n" not in message, message
    assert match in message, message
    assert store.list() == before, "a refused archive left blobs behind"
    assert not store.tmp.exists() or list(store.tmp.iterdir()) == []
    return message


@pytest.fixture
def seeded_store(store):
    """A store holding a blob from before: a failed load must keep it."""
    store.put_bytes(b"an older blob")
    return store


@pytest.mark.parametrize("cut", [0.5, 0.9, "boundary"])
@pytest.mark.parametrize("outer", ["none", "gzip"])
def test_truncated_archive(seeded_store, tmp_path, cut, outer):
    """Cut inside a member, or exactly between two (a shorter tar without manifest.json, not a rootfs)."""
    image = HandImage.make(3, "gzip", random_bytes=100_000)
    members = docker_archive_members(image, ["a:b"], old_style=False)
    members.insert(0, members.pop())  # manifest.json first: the blobs are what is cut off
    whole = write_tar(tmp_path / "whole.tar", members).read_bytes()
    if cut == "boundary":
        end = len(write_tar(tmp_path / "part.tar", members[:2]).read_bytes().rstrip(b"\0"))
        whole = whole[: end + (-end % 512)]
    else:
        whole = whole[: int(len(whole.rstrip(b"\0")) * cut)]
    archive = tmp_path / "cut.tar"
    archive.write_bytes(compress(whole, outer))
    message = expect_refusal(seeded_store, archive, "archive cut.tar")
    assert "truncated" in message or "corrupt tar" in message, message


@pytest.mark.parametrize("name, match", [
    ("../x", '".." component'),
    ("/etc/passwd", "absolute path"),
    ("missing/layer.tar", 'names "missing/layer.tar", which is not in the archive'),
])
def test_manifest_naming_a_bad_member(seeded_store, tmp_path, name, match):
    image = HandImage.make(2)
    members = docker_archive_members(image, ["a:b"])
    manifest = json.loads(members[-1][1])
    manifest[0]["Layers"][1] = name
    members[-1] = ("manifest.json", json.dumps(manifest).encode())
    expect_refusal(seeded_store, write_tar(tmp_path / "bad.tar", members), match)


def test_a_symlink_out_of_the_archive(seeded_store, tmp_path):
    image = HandImage.make(2)
    members = docker_archive_members(image, ["a:b"])
    members.insert(0, (f"{1:064x}/layer.tar", "->../../../etc/passwd"))
    members[2] = (members[2][0] + ".unused", members[2][1])
    expect_refusal(seeded_store, write_tar(tmp_path / "escape.tar", members), "a link out of the archive")


def test_a_layer_whose_diff_id_is_not_the_configs(seeded_store, tmp_path):
    image = HandImage.make(2, "gzip")
    other = HandImage.make(2, "gzip", seed="other")
    image = HandImage(image.tars, [image.blobs[0], other.blobs[1]], image.config)
    message = expect_refusal(seeded_store, write_tar(tmp_path / "diff.tar", docker_archive_members(image, ["a:b"])),
                             "unpacks to " + sha256(other.tars[1]))
    assert "the image config says " + sha256(image.tars[1]) in message


def test_layer_count_must_match_the_config(seeded_store, tmp_path):
    image = HandImage.make(2)
    image = HandImage(image.tars, image.blobs, image_config([sha256(image.tars[0])]))
    expect_refusal(seeded_store, write_tar(tmp_path / "count.tar", docker_archive_members(image, [])),
                   "has 1 rootfs.diff_ids but the manifest lists 2 layers")


def test_manifest_that_is_not_json(seeded_store, tmp_path):
    members = docker_archive_members(HandImage.make(1), [])
    members[-1] = ("manifest.json", b"{not json")
    expect_refusal(seeded_store, write_tar(tmp_path / "json.tar", members), '"manifest.json" is not valid JSON')


def test_oci_blob_whose_digest_is_wrong(seeded_store, tmp_path):
    image = HandImage.make(2)
    manifest = oci_manifest_for(image)
    blobs = oci_blobs(image, manifest)
    tampered = bytearray(blobs[1][1])
    tampered[600] ^= 1
    blobs[1] = (blobs[1][0], bytes(tampered))
    top = {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest)}
    archive = write_tar(tmp_path / "digest.tar", oci_layout_members([(top, blobs)]))
    expect_refusal(seeded_store, archive, f"archive digest.tar: blob {sha256(image.blobs[1])[:19]}… is corrupt")


def test_oci_layer_whose_media_type_lies(seeded_store, tmp_path):
    image = HandImage.make(1, "zstd")
    manifest = oci_manifest_for(image, "gzip")
    top = {"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest)}
    archive = write_tar(tmp_path / "type.tar", oci_layout_members([(top, oci_blobs(image, manifest))]))
    expect_refusal(seeded_store, archive, "announced as application/vnd.oci.image.layer.v1.tar+gzip but its data is zstd")


def test_index_without_the_wanted_platform(seeded_store, tmp_path):
    members, _ = platform_index(["linux/arm64/v8", "linux/s390x"])
    archive = write_tar(tmp_path / "multi.tar", members)
    message = expect_refusal(seeded_store, archive, "no image for platform linux/amd64", platform="linux/amd64")
    assert "(the archive has: linux/arm64/v8, linux/s390x)" in message


def test_a_bzip2_layer_is_refused(seeded_store, tmp_path):
    image = HandImage.make(1)
    image = HandImage(image.tars, [bz2.compress(image.tars[0])], image.config)
    expect_refusal(seeded_store, write_tar(tmp_path / "bz.tar", docker_archive_members(image, [])), "bzip2-compressed")


def test_not_a_tar(seeded_store, tmp_path):
    archive = tmp_path / "junk.tar"
    archive.write_bytes(b"hello, this is not a tar archive" * 100)
    expect_refusal(seeded_store, archive, "not a readable tar")


def test_unsafe_rootfs_is_refused(seeded_store, tmp_path):
    archive = write_tar(tmp_path / "rootfs.tar", [("etc/x", b"x"), ("../escape", b"y")])
    expect_refusal(seeded_store, archive, '".." component', flat_config=lambda d: image_config([d]))


# -- writing --------------------------------------------------------------------------------------

@pytest.fixture
def saved(umoci_image, store, tmp_path):
    """The umoci image loaded twice (gzip and zstd layers: one config, two images), saved by us."""
    gz, zst = tmp_path / "gz.tar", tmp_path / "zst.tar"
    skopeo_copy(umoci_image.ref, f"oci-archive:{gz}:x")
    skopeo_copy(umoci_image.ref, f"oci-archive:{zst}:x", "--dest-compress-format", "zstd", "--dest-compress")
    [gzip_image], [zstd_image] = load(gz, store), load(zst, store)
    images = [
        ArchiveImage(gzip_image.config_digest, gzip_image.layers, ("test/app:v1", "busybox")),
        ArchiveImage(zstd_image.config_digest, zstd_image.layers, ("localhost:5000/team/zst:v2",)),
    ]
    out = tmp_path / "saved.tar"
    with open(out, "wb") as handle:
        manifests = write_docker_archive(handle, images, store)
    return out, images, manifests


@pytest.mark.root
def test_saved_archive_reads_back(saved, store, tmp_path):
    out, images, manifests = saved
    loaded = load(out, store)
    assert [(i.config_digest, i.layers) for i in loaded] == [(i.config_digest, i.layers) for i in images]
    assert [i.repo_tags for i in loaded] == [("test/app:v1", "busybox:latest"), ("localhost:5000/team/zst:v2",)]
    names = run("tar", "tf", out).split()
    assert names[:2] == ["blobs/", "blobs/sha256/"] and names[-3:] == ["index.json", "manifest.json", "oci-layout"]
    blob_names = names[2:-3]
    assert blob_names == sorted(blob_names) and len(blob_names) == len(set(blob_names))
    expected = {images[0].config_digest, *(l.digest for i in images for l in i.layers), *(m.digest for m in manifests)}
    assert {f"sha256:{n.rsplit('/', 1)[1]}" for n in blob_names} == expected
    index = json.loads(run("tar", "xOf", out, "index.json"))
    assert [m["annotations"] for m in index["manifests"]] == [
        {"io.containerd.image.name": "docker.io/test/app:v1", "org.opencontainers.image.ref.name": "v1"},
        {"io.containerd.image.name": "docker.io/library/busybox:latest", "org.opencontainers.image.ref.name": "latest"},
        {"io.containerd.image.name": "localhost:5000/team/zst:v2", "org.opencontainers.image.ref.name": "v2"},
    ]
    assert [m["digest"] for m in index["manifests"]] == [manifests[0].digest, manifests[0].digest, manifests[1].digest]
    # deterministic: the same images give the same bytes
    again = tmp_path / "again.tar"
    with open(again, "wb") as handle:
        write_docker_archive(handle, images, store)
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.root
def test_skopeo_accepts_the_saved_archive(saved, umoci_image, tmp_path):
    out, images, _ = saved
    for source in (f"docker-archive:{out}:@0", f"docker-archive:{out}:localhost:5000/team/zst:v2", f"oci-archive:{out}:v1"):
        config = skopeo_inspect(source, "--config")
        assert config == umoci_image.config(), source
        inspected = skopeo_inspect(source)
        assert inspected["Layers"] and inspected["Env"] == config["config"]["Env"]
    copy = tmp_path / "copy"
    skopeo_copy(f"docker-archive:{out}:test/app:v1", f"oci:{copy}:copied")
    index = json.loads((copy / "index.json").read_text())
    manifest = json.loads((copy / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    # skopeo re-serializes the config when it converts to OCI: the same content, other bytes
    assert json.loads((copy / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text()) == umoci_image.config()
    assert [layer["digest"] for layer in manifest["layers"]] == [layer.digest for layer in images[0].layers]


@pytest.mark.root
def test_podman_loads_the_saved_archive(saved, umoci_image):
    out, images, _ = saved
    with temp_podman() as podman:
        output = podman("load", "-i", out)
        assert "localhost:5000/team/zst:v2" in output
        listed = podman("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").split("\n")
        ids = {line.split()[1] for line in listed if line}
        assert ids == {images[0].config_digest[7:19]}
        assert any(line.startswith("localhost:5000/team/zst:v2 ") for line in listed)


def test_a_missing_blob_is_not_found(store, tmp_path):
    config = store.put_bytes(image_config([sha256(b"x")]))
    layer = LayerRef(sha256(b"x"), sha256(b"x"), 1, "application/vnd.oci.image.layer.v1.tar")
    with open(tmp_path / "out.tar", "wb") as handle, pytest.raises(NotFound, match="not in the content store"):
        write_docker_archive(handle, [ArchiveImage(config, (layer,), ("a:b",))], store)


def test_digest_references_cannot_be_saved_as_tags(store, tmp_path):
    config = store.put_bytes(image_config([]))
    with open(tmp_path / "out.tar", "wb") as handle, pytest.raises(InvalidArgument, match="it names a digest"):
        write_docker_archive(handle, [ArchiveImage(config, (), (f"a@{config}",))], store)


def test_manifests_are_pure_values():
    gz = LayerRef("sha256:" + "1" * 64, "sha256:" + "2" * 64, 10, "application/vnd.docker.image.rootfs.diff.tar.gzip")
    zst = LayerRef("sha256:" + "3" * 64, "sha256:" + "4" * 64, 20, "application/vnd.oci.image.layer.v1.tar+zstd")
    oci = json.loads(oci_manifest("sha256:" + "5" * 64, 30, (gz, zst)))
    assert oci == {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "5" * 64, "size": 30},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": gz.digest, "size": 10},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": zst.digest, "size": 20},
        ],
    }
    docker = json.loads(docker_manifest("sha256:" + "5" * 64, 30, (gz,)))
    assert docker["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert docker["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert docker["layers"] == [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": gz.digest, "size": 10}]
    with pytest.raises(InvalidArgument, match="zstd layer cannot be described in a Docker v2 manifest"):
        docker_manifest("sha256:" + "5" * 64, 30, (zst,))


@pytest.mark.parametrize("outer", ["gzip", "zstd"])
def test_truncated_compressed_archive(seeded_store, tmp_path, outer):
    image = HandImage.make(2, "none", random_bytes=100_000)
    whole = write_tar(tmp_path / "whole.tar", docker_archive_members(image, ["a:b"])).read_bytes()
    packed = compress(whole, outer)
    archive = tmp_path / "cut.tar"
    archive.write_bytes(packed[: len(packed) * 2 // 3])
    expect_refusal(seeded_store, archive, f"its {outer} data")


def test_platforms_listed_at_the_top(store, tmp_path):
    """Entries with platforms straight in index.json: several are a choice, a single one is loaded as is."""
    entries, images = [], {}
    for platform in ("linux/arm64", "linux/amd64"):
        image = HandImage.make(1, seed=platform)
        manifest = oci_manifest_for(image)
        images[platform] = image
        os_name, arch = platform.split("/")
        entries.append(({"mediaType": OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
                         "platform": {"os": os_name, "architecture": arch}}, oci_blobs(image, manifest)))
    [image] = load(write_tar(tmp_path / "two.tar", oci_layout_members(entries)), store, platform="linux/amd64")
    assert image.config_digest == sha256(images["linux/amd64"].config)
    [image] = load(write_tar(tmp_path / "one.tar", oci_layout_members(entries[:1])), store, platform="linux/amd64")
    assert image.config_digest == sha256(images["linux/arm64"].config)


def test_write_then_read_hand_made_images(store, tmp_path):
    """The writer on its own (no tools): shared layers once, both formats' files, read back the same."""
    first, second = HandImage.make(2, "gzip"), HandImage.make(1, "zstd", seed="b")
    shared = HandImage(first.tars[:1] + second.tars, first.blobs[:1] + second.blobs,
                       image_config([sha256(first.tars[0]), sha256(second.tars[0])]))
    loaded = []
    for number, image in enumerate((first, shared)):
        archive = write_tar(tmp_path / f"in{number}.tar", docker_archive_members(image, [], old_style=False))
        loaded += load(archive, store)
    images = [ArchiveImage(i.config_digest, i.layers, tags) for i, tags in zip(loaded, [("one:1",), ()])]
    out = tmp_path / "out.tar"
    with open(out, "wb") as handle:
        handle.write(b"")
        written = write_docker_archive(handle, images, store)
    read_back = load(out, store)
    assert [(i.config_digest, i.layers, i.repo_tags) for i in read_back] == [
        (loaded[0].config_digest, loaded[0].layers, ("one:1",)), (loaded[1].config_digest, loaded[1].layers, ()),
    ]
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert names.count(f"blobs/sha256/{sha256(first.blobs[0])[7:]}") == 1
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())
        index = json.load(tar.extractfile("index.json"))
        assert [m["digest"] for m in index["manifests"]] == [w.digest for w in written]
        assert "annotations" not in index["manifests"][1]
        for manifest in written:
            assert tar.extractfile(f"blobs/sha256/{manifest.digest[7:]}").read() == manifest.manifest


def test_a_missing_archive(store, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load(tmp_path / "nothing.tar", store)
    with pytest.raises(InvalidArgument, match="is a directory"):
        load(tmp_path, store)
