"""Images between mydocker and the real tools: what Docker, skopeo and umoci write, mydocker loads and runs as they
do; what mydocker saves, Docker and podman load and run. No network: every image is built here.

Docker is the private dockerd of tests/dockerd.py (Debian's 20.10, its images gone with its temp dir); podman keeps
its own temp store. A container's file tree is compared as the image's own busybox lists it from inside
(tests/interop.py's LISTING); umoci's reference is its own `unpack`, listed by the same busybox under chroot.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.dockerd
from services.common.ctl import REPO
from tests.conftest import ServiceTracker, temp_config_dir
from tests.dockerd import Dockerd, mountinfo_lines, private_dockerd
from tests.e2e.conftest import Host, one_line_error, running_host
from tests.imagetools import (
    HandImage,
    docker_archive_members,
    image_config,
    run,
    sha256,
    skopeo_copy,
    write_tar,
)
from tests.interop import (
    UmociReference,
    assert_same_tree,
    docker_inspect,
    docker_tree,
    image_config_of,
    mydocker_tree,
    paths_in,
    podman_run_args,
    podman_store,
    store_snapshot,
    umoci_with_busybox,
)

pytestmark = pytest.mark.root

DOCKER_BASE = "mdk-interop-base:1"
DOCKER_TWO = "mdk-interop-two:1"
NATIVE_BASE = "mdk-interop-native:1"
NATIVE = "mdk-interop-native:2"
COMMITTED = "mdk-interop-committed:1"

# Run in Docker on the imported busybox: a deleted file, a deleted directory, a directory replaced as a whole
# (opaque), a changed file, new files and a symlink.
DOCKER_BUILD = (
    "rm /bin/vi && rm -rf /var && rm -rf /usr/sbin && mkdir /usr/sbin && echo only > /usr/sbin/only && "
    "mkdir -p /opt/app && echo hello > /opt/app/greeting && ln -s /opt/app/greeting /opt/app/link && "
    "echo extra:x:1000: >> /etc/group"
)
DOCKER_CMD = '["sh","-c","echo from-docker X=$X Y=$Y HOME=$HOME PATH=$PATH pwd=$(pwd) user=$(id -u):$(id -g)"]'
# Run in mydocker on its own import of busybox, committed as NATIVE.
NATIVE_BUILD = (
    "rm /bin/vi && rm -rf /home && rm -rf /usr/sbin && mkdir /usr/sbin && echo mine > /usr/sbin/only && "
    "mkdir -p /srv/data && echo data > /srv/data/f && ln -s /srv/data/f /srv/link"
)
NATIVE_CMD = '["sh","-c","echo from-mydocker N=$N HOME=$HOME pwd=$(pwd) user=$(id -u):$(id -g)"]'


# -- module fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def our_paths() -> Iterator[list[Path]]:
    """Set up first, checked last: no mount of the host's namespace names a temp dir this module made."""
    paths: list[Path] = []
    yield paths
    left = [line for line in mountinfo_lines() if any(str(path) in line for path in paths)]
    assert not left, "mounts left behind:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def host_unchanged(our_paths: list[Path]) -> Iterator[None]:
    """The host's iptables, ip_forward, /run/containerd and /etc/docker as before (tests/dockerd.py)."""
    with tests.dockerd.host_unchanged():
        yield


@pytest.fixture(scope="module")
def dockerd(host_unchanged: None, our_paths: list[Path]) -> Iterator[Dockerd]:
    with private_dockerd() as daemon:
        our_paths.append(daemon.base)
        yield daemon


@pytest.fixture(scope="module")
def mydocker(host_unchanged: None, our_paths: list[Path]) -> Iterator[Host]:
    """mydocker's services on temp roots for this module, with the busybox image; everything removed after."""
    tracker = ServiceTracker()
    with temp_config_dir() as config:
        our_paths.append(config.root)
        try:
            with running_host(config, tracker, cgroup_prefix="mdk-interop") as host:
                yield host
        finally:
            tracker.kill_leftovers()


@pytest.fixture(scope="module")
def work(our_paths: list[Path]) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mdk-interop-", dir="/tmp"))
    our_paths.append(base)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def busybox_tar(work: Path) -> Path:
    """The busybox rootfs tar scripts/up builds (byte for byte: the same layer): the bottom of every image here."""
    path = work / "busybox.tar"
    run(REPO / "scripts" / "build-busybox-image", path)
    return path


@dataclass(frozen=True)
class Built:
    name: str
    archive: Path  # a `docker save` / `mydocker save` of it


@pytest.fixture(scope="module")
def docker_two_layers(dockerd: Dockerd, busybox_tar: Path, work: Path) -> Built:
    """busybox imported into Docker with a config, a container's changes committed on top, `docker save`d."""
    dockerd.cli(
        "import", "--change", 'CMD ["echo","from-docker"]', "--change", "ENV X=1", "--change", "WORKDIR /tmp",
        str(busybox_tar), DOCKER_BASE,
    )
    builder = f"mdk-interop-build-{uuid.uuid4().hex[:8]}"
    dockerd.cli("run", "--name", builder, "--network", "none", DOCKER_BASE, "sh", "-c", DOCKER_BUILD)
    try:
        dockerd.cli(
            "commit", "--change", "ENV Y=2", "--change", "WORKDIR /opt/app", "--change", "USER nobody",
            "--change", f"CMD {DOCKER_CMD}", builder, DOCKER_TWO,
        )
    finally:
        dockerd.cli("rm", builder)
    archive = work / "docker-two.tar"
    dockerd.cli("save", "-o", str(archive), DOCKER_TWO)
    return Built(DOCKER_TWO, archive)


@pytest.fixture(scope="module")
def loaded_two_layers(mydocker: Host, docker_two_layers: Built) -> str:
    """`mydocker load -i` of Docker's save: what it printed."""
    return mydocker.mydocker("load", "-i", str(docker_two_layers.archive)).stdout


@pytest.fixture(scope="module")
def native_two_layers(mydocker: Host, busybox_tar: Path, work: Path) -> Built:
    """busybox imported into mydocker with a config, a container's changes committed on top, `mydocker save`d."""
    mydocker.mydocker(
        "import", str(busybox_tar), NATIVE_BASE, "-c", f"CMD {NATIVE_CMD}", "-c", "ENV N=7", "-c", "WORKDIR /srv"
    )
    builder = f"mdk-interop-native-{uuid.uuid4().hex[:8]}"
    mydocker.mydocker("run", "--name", builder, NATIVE_BASE, "sh", "-c", NATIVE_BUILD)
    try:
        # As docker commit, the image would run the builder's command: -c gives it back the base's Cmd.
        mydocker.mydocker("commit", builder, NATIVE, "-c", "USER nobody", "-c", f"CMD {NATIVE_CMD}")
    finally:
        mydocker.mydocker("rm", builder)
    archive = work / "native.tar"
    mydocker.mydocker("save", "-o", str(archive), NATIVE)
    return Built(NATIVE, archive)


# -- helpers -----------------------------------------------------------------------------------------



# -- 1. docker save -> mydocker load -> mydocker run ---------------------------------------------------


def test_docker_save_loads_into_mydocker_and_runs_as_in_docker(
    dockerd: Dockerd, mydocker: Host, docker_two_layers: Built, loaded_two_layers: str
) -> None:
    """Docker's 2-layer image (whiteouts, an opaque directory) runs in mydocker with Docker's Cmd, Env,
    WorkingDir and User, and the same files."""
    assert loaded_two_layers == f"Loaded image: {DOCKER_TWO}\n"
    docker = docker_inspect(dockerd, DOCKER_TWO)
    ours = image_config_of(mydocker, DOCKER_TWO)
    assert ours["id"] == docker["Id"]
    assert [layer["diff_id"] for layer in ours["layers"]] == docker["RootFS"]["Layers"]
    assert len(ours["layers"]) == 2
    config = ours["config"]
    assert config["cmd"]["values"] == docker["Config"]["Cmd"]
    assert config["env"] == docker["Config"]["Env"]
    assert (config["working_dir"], config["user"]) == (docker["Config"]["WorkingDir"], docker["Config"]["User"])

    docker_says = dockerd.cli("run", "--rm", "--network", "none", DOCKER_TWO).stdout
    assert docker_says.startswith("from-docker X=1 Y=2 HOME=/home PATH=/"), docker_says
    assert docker_says.endswith(" pwd=/opt/app user=65534:65534\n"), docker_says
    assert mydocker.mydocker("run", "--rm", DOCKER_TWO).stdout == docker_says
    assert mydocker.mydocker("run", "--rm", DOCKER_TWO, "pwd").stdout == "/opt/app\n"
    greeting = ("--entrypoint", "cat", DOCKER_TWO, "/opt/app/greeting")
    assert mydocker.mydocker("run", "--rm", *greeting).stdout == "hello\n"
    assert dockerd.cli("run", "--rm", "--network", "none", *greeting).stdout == "hello\n"

    tree = docker_tree(dockerd, DOCKER_TWO)
    assert_same_tree(tree, mydocker_tree(mydocker, DOCKER_TWO), "mydocker run of Docker's image")
    paths = paths_in(tree)
    assert {"/opt/app/greeting", "/opt/app/link", "/usr/sbin/only", "/bin/sh"} <= paths
    assert not {"/bin/vi", "/var"} & paths
    assert sorted(p for p in paths if p.startswith("/usr/sbin/")) == ["/usr/sbin/only"]


# -- 2. mydocker save -> docker load / podman load -----------------------------------------------------


def test_mydocker_save_loads_into_docker_and_runs_the_same(
    dockerd: Dockerd, mydocker: Host, native_two_layers: Built
) -> None:
    """mydocker's own 2-layer image (import, then commit with whiteouts and an opaque directory): Docker loads
    the save and runs it with the same config and the same files; a save of two images loads both."""
    loaded = dockerd.cli("load", "-i", str(native_two_layers.archive)).stdout
    assert f"Loaded image: {NATIVE}" in loaded, loaded
    both = native_two_layers.archive.with_name("native-both.tar")
    mydocker.mydocker("save", "-o", str(both), NATIVE_BASE, NATIVE)
    loaded = dockerd.cli("load", "-i", str(both)).stdout
    assert f"Loaded image: {NATIVE_BASE}" in loaded and f"Loaded image: {NATIVE}" in loaded, loaded
    assert docker_inspect(dockerd, NATIVE_BASE)["Id"] == image_config_of(mydocker, NATIVE_BASE)["id"]
    ours = image_config_of(mydocker, NATIVE)
    docker = docker_inspect(dockerd, NATIVE)
    assert docker["Id"] == ours["id"]
    assert docker["RootFS"]["Layers"] == [layer["diff_id"] for layer in ours["layers"]] and len(ours["layers"]) == 2
    assert docker["Config"]["Cmd"] == json.loads(NATIVE_CMD)
    assert (docker["Config"]["WorkingDir"], docker["Config"]["User"]) == ("/srv", "nobody")
    assert "N=7" in docker["Config"]["Env"]

    ours_says = mydocker.mydocker("run", "--rm", NATIVE).stdout
    assert ours_says == "from-mydocker N=7 HOME=/home pwd=/srv user=65534:65534\n"
    assert dockerd.cli("run", "--rm", "--network", "none", NATIVE).stdout == ours_says

    tree = mydocker_tree(mydocker, NATIVE)
    assert_same_tree(tree, docker_tree(dockerd, NATIVE), "docker run of mydocker's save")
    paths = paths_in(tree)
    assert {"/srv/data/f", "/srv/link", "/usr/sbin/only"} <= paths and not {"/bin/vi", "/home"} & paths
    assert sorted(p for p in paths if p.startswith("/usr/sbin/")) == ["/usr/sbin/only"]


def test_mydocker_save_loads_into_podman(mydocker: Host, native_two_layers: Built, our_paths: list[Path]) -> None:
    """podman loads the same save into a temp store, shows its config, and runs it with the same output."""
    ours = image_config_of(mydocker, NATIVE)
    with podman_store(our_paths) as (podman, cgroup_parent):
        loaded = podman("load", "-i", native_two_layers.archive)
        assert f"Loaded image: docker.io/library/{NATIVE}" in loaded, loaded
        inspected = json.loads(podman("image", "inspect", NATIVE))[0]
        assert inspected["Id"] == ours["id"].removeprefix("sha256:")
        assert inspected["RootFS"]["Layers"] == [layer["diff_id"] for layer in ours["layers"]]
        config = inspected["Config"]
        assert config["Cmd"] == json.loads(NATIVE_CMD) and "N=7" in config["Env"]
        assert (config["WorkingDir"], config["User"]) == ("/srv", "nobody")
        says = podman(
            "run", "--rm", "--network", "none", "--cgroup-parent", cgroup_parent, *podman_run_args(), NATIVE
        )
        assert says == mydocker.mydocker("run", "--rm", NATIVE).stdout


# -- 3. umoci's image through skopeo's archives --------------------------------------------------------


@pytest.fixture(scope="module")
def umoci_image(busybox_tar: Path, work: Path) -> UmociReference:
    return umoci_with_busybox(work, busybox_tar)


def skopeo_archive(umoci: UmociReference, work: Path, kind: str) -> tuple[Path, str]:
    """The umoci image copied by skopeo as a docker-archive, an OCI archive or one with zstd layers; (file, tag)."""
    tag = f"mdk-umoci:{kind}"
    path = work / f"umoci-{kind}.tar"
    if not path.exists():
        if kind == "docker":
            skopeo_copy(umoci.ref, f"docker-archive:{path}:{tag}")
        elif kind == "oci":
            skopeo_copy(umoci.ref, f"oci-archive:{path}:{tag}")
        else:
            skopeo_copy(umoci.ref, f"oci-archive:{path}:{tag}", "--dest-compress", "--dest-compress-format", "zstd")
    return path, tag


@pytest.mark.parametrize("kind", ["docker", "oci", "zstd"])
def test_umoci_image_from_skopeo_archives_runs_as_unpacked(
    mydocker: Host, umoci_image: UmociReference, work: Path, kind: str
) -> None:
    """Each archive loads, runs exactly umoci's tree (deleted files gone, the opaque /data showing only the top
    layer's file), and its rmi leaves the stores as they were."""
    archive, tag = skopeo_archive(umoci_image, work, kind)
    before = store_snapshot(mydocker.root)
    assert mydocker.mydocker("load", "-i", str(archive)).stdout == f"Loaded image: {tag}\n"
    inspected = image_config_of(mydocker, tag)
    assert [layer["diff_id"] for layer in inspected["layers"]] == umoci_image.diff_ids
    if kind == "zstd":
        assert {layer["media_type"] for layer in inspected["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    assert mydocker.mydocker("run", "--rm", tag, "sh", "-c", "echo $GREETING").stdout == "hi\n"
    assert_same_tree(umoci_image.tree, mydocker_tree(mydocker, tag), f"mydocker run of skopeo's {kind} archive")
    mydocker.mydocker("rmi", tag)
    assert store_snapshot(mydocker.root) == before


def test_one_image_from_three_archives_keeps_one_set_of_blobs(
    mydocker: Host, umoci_image: UmociReference, work: Path
) -> None:
    """The same image (one config) loaded from plain, gzip and zstd layers is one image whose blobs are the first
    load's: the later loads add no blob, and removing the three tags removes everything the loads stored."""
    before = store_snapshot(mydocker.root)
    tags = []
    for kind in ("docker", "oci", "zstd"):
        archive, tag = skopeo_archive(umoci_image, work, kind)
        mydocker.mydocker("load", "-i", str(archive))
        tags.append(tag)
        if kind == "docker":
            after_first = store_snapshot(mydocker.root)
    assert {image_config_of(mydocker, tag)["id"] for tag in tags} == {image_config_of(mydocker, tags[0])["id"]}
    assert {k: v for k, v in store_snapshot(mydocker.root).items() if k != "image"} == {
        k: v for k, v in after_first.items() if k != "image"
    }
    assert_same_tree(umoci_image.tree, mydocker_tree(mydocker, tags[-1]), "mydocker run after three loads")
    mydocker.mydocker("rmi", *tags)
    assert store_snapshot(mydocker.root) == before


# -- 4. hostile archives through the CLI ---------------------------------------------------------------


def _layer(work: Path, name: str, members: list[tuple[str, bytes | str]]) -> bytes:
    return write_tar(work / f"{name}.layer.tar", members).read_bytes()


def hostile_archive(kind: str, work: Path, docker_save: Path, escape: str) -> tuple[Path, str]:
    """(a hostile archive, a phrase its refusal must contain)."""
    path = work / f"hostile-{kind}.tar"
    if kind == "truncated":
        whole = docker_save.read_bytes()
        path.write_bytes(whole[: int(len(whole.rstrip(b"\0")) * 0.6)])
        return path, "corrupt tar archive"
    if kind == "truncated-gzip":
        whole = gzip.compress(docker_save.read_bytes(), mtime=0)
        path.write_bytes(whole[: int(len(whole) * 0.6)])
        return path, "gzip data is corrupt or truncated"
    good = _layer(work, "good", [("etc/ok", b"ok\n")])
    if kind == "dotdot":
        # Were it followed, this name would reach /tmp/<escape> from any layer directory.
        evil = _layer(work, "dotdot", [("etc/fine", b"fine\n"), ("../" * 16 + f"tmp/{escape}", b"out\n")])
        expected = '".." component'
    elif kind == "symlink":
        evil = _layer(work, "symlink", [("evil", f"->{work / escape}"), ("evil/pwned", b"out\n")])
        expected = "is a symlink"
    else:
        assert kind == "diff-id"
        other = _layer(work, "other", [("etc/other", b"other\n")])
        image = HandImage([good, other], [good, good], image_config([sha256(good), sha256(other)]))
        write_tar(path, docker_archive_members(image, ["mdk-interop-hostile:diff-id"]))
        return path, "unpacks to"
    image = HandImage([good, evil], [good, evil], image_config([sha256(good), sha256(evil)]))
    write_tar(path, docker_archive_members(image, [f"mdk-interop-hostile:{kind}"]))
    return path, expected


@pytest.mark.parametrize("kind", ["truncated", "truncated-gzip", "dotdot", "symlink", "diff-id"])
def test_hostile_archive_is_refused_with_one_line_and_leaves_nothing(
    mydocker: Host, docker_two_layers: Built, work: Path, kind: str
) -> None:
    """Refused in one line; no blob, image record, layer, tag or temp file stays; the services still serve."""
    escape = f"mdk-interop-escape-{uuid.uuid4().hex[:8]}"
    archive, phrase = hostile_archive(kind, work, docker_two_layers.archive, escape)
    (work / escape).mkdir()
    images_before = mydocker.mydocker("images").stdout
    before = store_snapshot(mydocker.root)
    message = one_line_error(mydocker.mydocker("load", "-i", str(archive), check=False))
    assert phrase in message, message
    assert store_snapshot(mydocker.root) == before
    assert not Path("/tmp", escape).exists() and not any((work / escape).iterdir())
    assert not list(mydocker.root.rglob(f"*{escape}*"))
    assert mydocker.mydocker("images").stdout == images_before


# -- 5. commit on a multi-layer image ------------------------------------------------------------------


def test_commit_of_a_two_layer_image_adds_one_layer_that_docker_runs(
    dockerd: Dockerd, mydocker: Host, loaded_two_layers: str, work: Path
) -> None:
    """A container of Docker's 2-layer image, committed: 3 layers, its history one step longer, and its save
    runs in Docker with the same files and the same output."""
    parent = image_config_of(mydocker, DOCKER_TWO)
    name = f"mdk-interop-commit-{uuid.uuid4().hex[:8]}"
    changes = (
        "echo committed > /opt/app/added && rm /opt/app/greeting && "
        "rm -rf /usr/sbin && mkdir /usr/sbin && echo again > /usr/sbin/again"
    )
    mydocker.mydocker("run", "--name", name, "--user", "0", "--entrypoint", "sh", DOCKER_TWO, "-c", changes)
    try:
        container_id = json.loads(mydocker.mydocker("inspect", name).stdout)[0]["id"]
        mydocker.mydocker(
            # The container ran as --user 0, which commit keeps (as docker's does): -c sets the parent's user back.
            "commit", name, COMMITTED, "-c", 'ENTRYPOINT ["sh","-c"]', "-c", "USER nobody",
            "-c", 'CMD ["echo committed-cmd X=$X Y=$Y pwd=$(pwd) user=$(id -u):$(id -g)"]', "-m", "interop commit",
        )
    finally:
        mydocker.mydocker("rm", name)
    committed = image_config_of(mydocker, COMMITTED)
    assert len(committed["layers"]) == 3 and committed["layers"][:2] == parent["layers"]
    assert len(committed["history"]) == len(parent["history"]) + 1
    assert committed["history"][-1]["created_by"] == f"mydocker commit {container_id}"
    assert committed["history"][-1]["comment"] == "interop commit"
    history = mydocker.mydocker("history", COMMITTED).stdout.splitlines()
    assert len(history) == 1 + len(committed["history"]), history
    assert f"mydocker commit {container_id}" in history[1] and "interop commit" in history[1]

    ours_says = mydocker.mydocker("run", "--rm", COMMITTED).stdout
    assert ours_says == "committed-cmd X=1 Y=2 pwd=/opt/app user=65534:65534\n"
    archive = work / "committed.tar"
    mydocker.mydocker("save", "-o", str(archive), COMMITTED)
    loaded = dockerd.cli("load", "-i", str(archive)).stdout
    assert f"Loaded image: {COMMITTED}" in loaded, loaded
    docker = docker_inspect(dockerd, COMMITTED)
    assert docker["RootFS"]["Layers"] == [layer["diff_id"] for layer in committed["layers"]]
    assert docker["Config"]["Entrypoint"] == ["sh", "-c"]
    assert dockerd.cli("run", "--rm", "--network", "none", COMMITTED).stdout == ours_says
    tree = mydocker_tree(mydocker, COMMITTED)
    assert_same_tree(tree, docker_tree(dockerd, COMMITTED), "docker run of mydocker's commit")
    paths = paths_in(tree)
    assert "/opt/app/added" in paths and "/opt/app/greeting" not in paths
    assert sorted(p for p in paths if p.startswith("/usr/sbin/")) == ["/usr/sbin/again"]
