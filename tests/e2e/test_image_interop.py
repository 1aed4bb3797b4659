"""Images between mydocker and the real tools: what Docker, skopeo and umoci write, mydocker loads and runs as they
do; what mydocker saves, Docker and podman load and run. No network: every image is built here.

Docker is the private dockerd of tests/dockerd.py (Debian's 20.10, its images gone with its temp dir); podman keeps
its own temp store (tests/imagetools.Podman). A container's file tree is compared as the image's own busybox lists
it from inside (LISTING): every path below / on the root filesystem with its type, mode, owner and symlink target
(and link count for files), then the sha256 of each file under 1 MiB and of /bin/busybox. Left out are the mount
points every runtime makes (/proc, /sys, /dev, /etc/hosts, /etc/hostname, /etc/resolv.conf) and what only Docker
adds to every container (/.dockerenv, and /etc/mtab in its init layer). umoci's reference is its own `unpack`,
listed by the same busybox under chroot.
"""

from __future__ import annotations

import contextlib
import difflib
import gzip
import json
import os
import resource
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.dockerd
from tests.conftest import ServiceTracker, temp_config_dir
from tests.dockerd import Dockerd, cgroup_dirs_named, mountinfo_lines, private_dockerd, remove_cgroup_tree
from tests.e2e.conftest import Host, one_line_error, running_host
from tests.imagetools import (
    HandImage,
    Podman,
    build_umoci_image,
    docker_archive_members,
    image_config,
    require_tool,
    run,
    sha256,
    skopeo_copy,
    temp_podman,
    write_tar,
)

pytestmark = pytest.mark.root

EXCLUDED = (
    "/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
    # Docker's own: /.dockerenv in every container, /etc/mtab -> /proc/mounts in its init layer.
    "/.dockerenv", "/etc/mtab",
)
_PRUNED = "\\( " + " -o ".join(f"-path {path}" for path in EXCLUDED) + " \\) -prune -o"
# Directories' link counts are left out: overlay reports 1 for a directory merged from several layers.
LISTING = (
    f"find / -xdev -mindepth 1 {_PRUNED} -type d -exec stat -c '%N %F %a %u:%g' {{}} + | sort; "
    f"find / -xdev -mindepth 1 {_PRUNED} ! -type d -exec stat -c '%N %F %a %u:%g links=%h' {{}} + | sort; "
    "echo @@hashes; "
    f"find / -xdev -mindepth 1 {_PRUNED} -type f -size -1024k -exec sha256sum {{}} + | sort; "
    "sha256sum /bin/busybox"
)

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
def busybox_tar(mydocker: Host) -> Path:
    """scripts/up's busybox rootfs tar: the bottom layer of every image here."""
    path = mydocker.root / "image" / "busybox.tar"
    assert path.is_file(), f"scripts/up did not build {path}"
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
        mydocker.mydocker("commit", builder, NATIVE, "-c", "USER nobody")
    finally:
        mydocker.mydocker("rm", builder)
    archive = work / "native.tar"
    mydocker.mydocker("save", "-o", str(archive), NATIVE)
    return Built(NATIVE, archive)


# -- helpers -----------------------------------------------------------------------------------------


def docker_tree(dockerd: Dockerd, image: str) -> str:
    return dockerd.cli("run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh", image, "-c", LISTING).stdout


def mydocker_tree(host: Host, image: str) -> str:
    return host.mydocker("run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c", LISTING).stdout


def chroot_tree(rootfs: Path) -> str:
    """LISTING run by the unpacked image's own busybox, chrooted into it (it only reads)."""
    result = subprocess.run(
        ["chroot", str(rootfs), "/bin/sh", "-c", LISTING], env={"PATH": "/bin:/usr/bin:/sbin:/usr/sbin"},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_same_tree(expected: str, actual: str, what: str) -> None:
    assert "@@hashes" in expected and "/bin/busybox" in expected, expected[:2000]
    if expected != actual:
        diff = "\n".join(difflib.unified_diff(expected.splitlines(), actual.splitlines(), "expected", what, lineterm=""))
        pytest.fail(f"the file tree differs ({what}):\n{diff[:6000]}")


def paths_in(tree: str) -> set[str]:
    """The paths a LISTING names (symlinks as "'path' -> 'target'" reduced to the path)."""
    paths = set()
    for line in tree.partition("@@hashes")[0].splitlines():
        first = line.split(" ", 1)[0]
        paths.add(first.strip("'"))
    return paths


def image_config_of(host: Host, image: str) -> dict:
    return json.loads(host.mydocker("image", "inspect", image).stdout)[0]


def docker_inspect(dockerd: Dockerd, image: str) -> dict:
    return json.loads(dockerd.cli("image", "inspect", image).stdout)[0]


def store_snapshot(root: Path) -> dict[str, list[str]]:
    """What the content store, the image records, the layers and the tag files hold (and their temp dirs)."""
    snapshot = {}
    for name in ("blobs/sha256", "blobs/tmp", "imagedb/sha256", "layers/sha256", "layers/tmp", "tmp/storage"):
        directory = root / name
        snapshot[name] = sorted(os.listdir(directory)) if directory.is_dir() else []
    snapshot["image"] = sorted(str(path.relative_to(root / "image")) for path in (root / "image").rglob("*"))
    return snapshot


def podman_run_args() -> tuple[str, ...]:
    """podman 4.3 asks runc for RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 4194304, which a process without
    CAP_SYS_RESOURCE (as here) may not set: lower limits, within ours."""
    nofile = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(1024, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    return ("--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}")


@contextlib.contextmanager
def podman_store(our_paths: list[Path]) -> Iterator[tuple[Podman, str]]:
    """A temp podman store and a cgroup parent of its own for its containers (podman's cgroupfs manager
    otherwise leaves /libpod_parent behind); both removed after."""
    cgroup_parent = f"mdk-podman-{uuid.uuid4().hex[:8]}"
    with temp_podman() as podman:
        our_paths.append(podman.base)
        try:
            yield podman, f"/{cgroup_parent}"
        finally:
            with contextlib.suppress(AssertionError):
                ids = podman("ps", "-a", "-q").split()
                if ids:
                    podman("rm", "-f", *ids)
            left = [line for line in mountinfo_lines() if str(podman.base) in line]
            for directory in cgroup_dirs_named(cgroup_parent):
                remove_cgroup_tree(directory)
            assert not left, f"podman left mounts: {left}"
            assert not cgroup_dirs_named(cgroup_parent)


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
    assert docker_says.startswith("from-docker X=1 Y=2 HOME=/home PATH=/") and "pwd=/opt/app user=65534:65534" in docker_says
    assert mydocker.mydocker("run", "--rm", DOCKER_TWO).stdout == docker_says
    assert mydocker.mydocker("run", "--rm", DOCKER_TWO, "pwd").stdout == "/opt/app\n"
    greeting = ("--entrypoint", "cat", DOCKER_TWO, "/opt/app/greeting")
    assert mydocker.mydocker("run", "--rm", *greeting).stdout == dockerd.cli("run", "--rm", *greeting).stdout == "hello\n"

    tree = docker_tree(dockerd, DOCKER_TWO)
    assert_same_tree(tree, mydocker_tree(mydocker, DOCKER_TWO), "mydocker run of Docker's image")
    paths = paths_in(tree)
    assert {"/opt/app/greeting", "/opt/app/link", "/usr/sbin/only", "/bin/sh"} <= paths
    assert not {"/bin/vi", "/var"} & paths
    assert sorted(p for p in paths if p.startswith("/usr/sbin/")) == ["/usr/sbin/only"]


# -- 2. mydocker save -> docker load / podman load -----------------------------------------------------


def test_mydocker_save_loads_into_docker_and_runs_the_same(dockerd: Dockerd, mydocker: Host, native_two_layers: Built) -> None:
    """mydocker's own 2-layer image (import, then commit with whiteouts and an opaque directory): Docker loads
    the save and runs it with the same config and the same files."""
    loaded = dockerd.cli("load", "-i", str(native_two_layers.archive)).stdout
    assert f"Loaded image: {NATIVE}" in loaded, loaded
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


@dataclass(frozen=True)
class UmociReference:
    ref: str  # skopeo's source reference of the OCI layout
    tree: str  # LISTING of `umoci unpack`'s rootfs
    diff_ids: list[str]


@pytest.fixture(scope="module")
def umoci_image(busybox_tar: Path, work: Path) -> UmociReference:
    """tests/imagetools' three umoci layers (files, then whiteouts, then links), busybox on top to run it, and a
    last layer that makes /data opaque with one new file; its reference tree is `umoci unpack`'s."""
    require_tool("chroot")
    image = build_umoci_image(work / "umoci")
    target = f"{image.layout}:{image.tag}"
    run("umoci", "raw", "add-layer", "--image", target, "--history.created_by", "busybox", busybox_tar)
    opaque = write_tar(work / "opaque.tar", [("data/.wh..wh..opq", b""), ("data/top-only", b"top\n")])
    run("umoci", "raw", "add-layer", "--image", target, "--history.created_by", "opaque /data", opaque)
    bundle = work / "umoci-bundle"
    run("umoci", "unpack", "--image", target, bundle)
    try:
        tree = chroot_tree(bundle / "rootfs")
    finally:
        shutil.rmtree(bundle)
    paths = paths_in(tree)
    assert {"/etc/hello", "/new", "/new-hardlink", "/link", "/data/top-only"} <= paths
    assert not {"/etc/sub", "/data/gone", "/data/kept"} & paths, "umoci's unpack is not the reference this test assumes"
    return UmociReference(image.ref, tree, image.diff_ids())


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
def test_umoci_image_from_skopeo_archives_runs_as_unpacked(mydocker: Host, umoci_image: UmociReference, work: Path, kind: str) -> None:
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


def test_one_image_loaded_from_two_archives_leaves_no_blob_after_rmi(
    mydocker: Host, umoci_image: UmociReference, work: Path
) -> None:
    """The same image (one config) from a docker-archive (plain layers) and then from an OCI archive (gzip layers)
    is one image; removing both tags removes every blob either load stored."""
    before = store_snapshot(mydocker.root)
    tags = []
    for kind in ("docker", "oci", "zstd"):
        archive, tag = skopeo_archive(umoci_image, work, kind)
        mydocker.mydocker("load", "-i", str(archive))
        tags.append(tag)
    ids = {image_config_of(mydocker, tag)["id"] for tag in tags}
    assert len(ids) == 1
    assert_same_tree(umoci_image.tree, mydocker_tree(mydocker, tags[-1]), "mydocker run after three loads")
    mydocker.mydocker("rmi", *tags)
    assert store_snapshot(mydocker.root) == before


# -- 4. hostile archives through the CLI ---------------------------------------------------------------


def _layer(work: Path, name: str, members: list[tuple[str, bytes | str]]) -> bytes:
    return write_tar(work / f"{name}.layer.tar", members).read_bytes()


def hostile_archive(kind: str, work: Path, docker_save: Path, escape: str) -> tuple[Path, str]:
    """(a hostile archive, a phrase its refusal must contain)."""
    path = work / f"hostile-{kind}.tar"
    if kind in ("truncated", "truncated-gzip"):
        whole = docker_save.read_bytes()
        cut = whole[: int(len(whole.rstrip(b"\0")) * 0.6)]
        path.write_bytes(gzip.compress(cut, mtime=0) if kind == "truncated-gzip" else cut)
        return path, "truncated" if kind == "truncated" else ""
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
    changes = "echo committed > /opt/app/added && rm /opt/app/greeting && rm -rf /usr/sbin && mkdir /usr/sbin && echo again > /usr/sbin/again"
    mydocker.mydocker("run", "--name", name, "--user", "0", "--entrypoint", "sh", DOCKER_TWO, "-c", changes)
    try:
        container_id = json.loads(mydocker.mydocker("inspect", name).stdout)[0]["id"]
        mydocker.mydocker(
            "commit", name, COMMITTED, "-c", 'ENTRYPOINT ["sh","-c"]',
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
