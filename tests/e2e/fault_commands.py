"""The commands of the kill-at-every-step matrix, each with the RPCs it makes in order, and what their cases need first."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.e2e.fault_matrix import Command, Inputs, MatrixHost, Step
from tests.netutil import free_port, free_subnets
from tests.registry import docker_registry

# run: the image's config first (cli/image_run.py), then record, rootfs, process.
CREATE = (
    Step("storage", "GetImage"),
    Step("state", "CreateContainer"),
    Step("storage", "PrepareRootfs"),
    Step("executor", "CreateContainer"),
)
RUN_DETACHED = Command(
    "run -d",
    lambda i: ["run", "-d", "--name", i.name, "busybox", "top"],
    # create_and_start: record, rootfs, process, then the start and RUNNING at once.
    (*CREATE, Step("executor", "StartContainer"), Step("state", "UpdateContainerStatus")),
    already=("is already in use",),
)
RUN_RM = Command(
    "run --rm",
    lambda i: ["run", "--rm", "--name", i.name, "busybox", "echo", "hi"],
    (
        *CREATE,
        # The attach stream opens before the start, so no output is lost.
        Step("executor", "Attach", streaming=True),
        # The start and its record at once (RUNNING takes the pid the create reported).
        Step("executor", "StartContainer"),
        Step("state", "UpdateContainerStatus", 1),  # RUNNING
        # The exit (and its OOM verdict) comes over Attach; then EXITED and on to REMOVING in one write,
        # with no read first.
        Step("state", "UpdateContainerStatus", 2),
        # remove_stopped: rootfs and process state at once, record.
        Step("storage", "RemoveRootfs"),
        Step("executor", "DeleteContainer"),
        Step("state", "DeleteContainer"),
    ),
    already=("is already in use",),
)
# remove: resolve and sync (GetContainer: one container), SIGKILL and wait, (unplug,) STOPPED and on to REMOVING in one
# write, then remove_stopped: (unplug,) rootfs, ...
KILL = (
    Step("state", "GetContainer"),
    Step("executor", "GetContainer"),
    Step("executor", "KillContainer"),
    Step("executor", "WaitContainer"),
)
REMOVE = (
    Step("storage", "RemoveRootfs"),
    Step("executor", "DeleteContainer"),
    Step("state", "DeleteContainer"),
)
RM_FORCE = Command(
    "rm -f",
    lambda i: ["rm", "-f", i.container],
    (*KILL, Step("state", "UpdateContainerStatus", 1), *REMOVE),  # 1: STOPPED, then REMOVING
    needs_container=True,
    already=("no such container",),
)
COMMIT = Command(
    "commit",
    lambda i: ["commit", i.container, f"img-{i.name}"],
    (
        Step("state", "GetContainer"),
        # The layer blob, the layer unpacked, the image record, then the tag.
        Step("storage", "CommitContainer", inner=("layer-written", "unpacked", "recorded")),
    ),
    needs_container=True,
    already=("already exists",),
    made_images=lambda i: (f"img-{i.name}",),
)
EXEC = Command(
    "exec",
    lambda i: ["exec", i.container, "true"],
    (Step("state", "GetContainer"), Step("executor", "GetContainer"), Step("executor", "Exec", streaming=True)),
    needs_container=True,
)
STOP = Command(
    "stop",
    # busybox top exits on SIGTERM: the TERM path, no escalation.
    lambda i: ["stop", "-t", "5", i.container],
    (
        Step("state", "GetContainer"),
        Step("executor", "GetContainer"),
        Step("executor", "KillContainer"),
        Step("executor", "WaitContainer"),
        Step("state", "UpdateContainerStatus"),  # STOPPED
    ),
    needs_container=True,
)
STOP_ESCALATION = Command(
    "stop, escalated",
    lambda i: ["stop", "-t", "1", i.container],
    # A PID 1 that ignores TERM: after the TERM and a wait that times out (the steps STOP covers), the
    # second kill (KILL) and the second wait.
    (
        Step("executor", "KillContainer", 2),
        Step("executor", "WaitContainer", 2),
        Step("state", "UpdateContainerStatus"),  # STOPPED
    ),
    needs_container=True,
    prepared=("busybox", "sh", "-c", "trap '' TERM; while true; do sleep 1; done"),
)
RUN_NETWORK = Command(
    "run -d --network",
    lambda i: ["run", "-d", "--name", i.name, "--network", i.network, "-p", f"{free_port()}:80", "busybox", "top"],
    # create_and_start with a network: the address before the rootfs, the plumbing before the start.
    (
        Step("storage", "GetImage"),
        Step("state", "CreateContainer"),
        Step("state", "AllocateAddress"),
        Step("storage", "PrepareRootfs"),
        Step("executor", "CreateContainer"),
        Step("executor", "ConnectContainer"),
        Step("executor", "StartContainer"),
        Step("state", "UpdateContainerStatus"),
    ),
    already=("is already in use",),
    network=True,
)
RM_NETWORK = Command(
    "rm -f --network",
    lambda i: ["rm", "-f", i.container],
    # Unplugged before STOPPED (which frees the address; REMOVING in the same write), once.
    (
        *KILL,
        Step("executor", "DisconnectContainer"),
        Step("state", "UpdateContainerStatus"),
        *REMOVE,
    ),
    needs_container=True,
    already=("no such container",),
    network=True,
)
NETWORK_CREATE = Command(
    "network create",
    lambda i: ["network", "create", "--subnet", free_subnets(1)[0], f"n{i.name}"],
    (Step("state", "CreateNetwork"), Step("executor", "CreateBridge")),
    already=("is already in use",),
    network=True,
)
NETWORK_RM = Command(
    "network rm",
    lambda i: ["network", "rm", f"n{i.name}"],
    # The record goes first, then the bridge and its rules.
    (Step("state", "GetNetwork"), Step("state", "DeleteNetwork"), Step("executor", "RemoveBridge")),
    already=("no such network",),
    network=True,
    prepared_network=True,
)


# -- images: what their cases load, import, pull and remove ---------------------------------------

LOADED = "fault-loaded"
PULLED = "fault/pulled:v1"


def write_rootfs_tar(path: Path, marker: str) -> Path:
    """A rootfs tar of one small file named after `marker`: each case's layer (and diff id) is its own."""
    data = f"{marker}\n".encode()
    with tarfile.open(path, "w") as tar:
        directory = tarfile.TarInfo("etc")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        member = tarfile.TarInfo(f"etc/{marker}")
        member.size, member.mode = len(data), 0o644
        tar.addfile(member, io.BytesIO(data))
    return path


def commit_two_layers(matrix: MatrixHost, image: str) -> None:
    """`image`: busybox plus a committed layer of one file (its container made and removed for it)."""
    host = matrix.host
    name = matrix.unique("source-")
    host.mydocker("run", "--name", name, "busybox", "sh", "-c", f"echo {image} > /etc/source")
    host.mydocker("commit", name, image)
    host.mydocker("rm", name)


def make_archive(matrix: MatrixHost) -> None:
    """files/archive.tar: `mydocker save` of a two-layer image, which then leaves the host (each load stores it anew)."""
    archive = matrix.files / "archive.tar"
    commit_two_layers(matrix, LOADED)
    matrix.host.mydocker("save", "-o", str(archive), LOADED)
    matrix.host.mydocker("rmi", LOADED)
    with tarfile.open(archive) as tar:
        (entry,) = json.loads(tar.extractfile("manifest.json").read())
    assert len(entry["Layers"]) == 2, f"the saved archive should have two layers: {entry}"


def push_to_registry(matrix: MatrixHost) -> None:
    """A registry for the command's life, holding a two-layer image that then leaves the host (each pull fetches it)."""
    matrix.registry = matrix.stack.enter_context(docker_registry()).host
    reference = f"{matrix.registry}/{PULLED}"
    commit_two_layers(matrix, reference)
    matrix.host.mydocker("push", reference)
    matrix.host.mydocker("rmi", reference)


def write_case_tar(matrix: MatrixHost, inputs: Inputs) -> None:
    write_rootfs_tar(inputs.files / f"{inputs.name}.tar", inputs.name)


def import_own_image(matrix: MatrixHost, inputs: Inputs) -> None:
    """An image whose only tag is the case's name: removing the tag removes the image, its blobs and its layer."""
    tar = write_rootfs_tar(inputs.files / f"{inputs.name}.tar", inputs.name)
    matrix.host.mydocker("import", str(tar), inputs.name)


def tag_busybox(matrix: MatrixHost, inputs: Inputs) -> None:
    """A second tag of busybox: removing it only untags."""
    matrix.host.mydocker("tag", "busybox", inputs.name)


# load and import: the upload stored (blobs and records), every layer unpacked, then the tags.
LOAD = Command(
    "load",
    lambda i: ["load", "-i", str(i.files / "archive.tar")],
    (Step("storage", "LoadImage", inner=("stored", "unpacked")),),
    setup=make_archive,
    made_images=lambda i: (LOADED,),
)
IMPORT = Command(
    "import",
    lambda i: ["import", str(i.files / f"{i.name}.tar"), i.name],
    (Step("storage", "ImportImage", inner=("stored", "unpacked")),),
    already=("already exists",),
    prepare=write_case_tar,
    made_images=lambda i: (i.name,),
)
# pull: every blob fetched, the record, every layer unpacked, then the tag file (hidden, in the subdirectories
# of a name with "/", until its rename). Quiet: a failure is then one line.
PULL = Command(
    "pull",
    lambda i: ["pull", "-q", f"{i.registry}/{PULLED}"],
    (Step("storage", "PullImage", streaming=True, inner=("fetched", "recorded", "unpacked", "tag-written")),),
    setup=push_to_registry,
    made_images=lambda i: (f"{i.registry}/{PULLED}",),
)
# rmi: the tags go, then (for the last tag) the image, its blobs and its unpacked layers.
RMI = Command(
    "rmi",
    lambda i: ["rmi", i.name],
    (Step("storage", "RemoveImage", inner=("untagged",)),),
    already=("not found",),
    prepare=tag_busybox,
    made_images=lambda i: (i.name,),
)
RMI_LAST_TAG = Command(
    "rmi, last tag",
    lambda i: ["rmi", i.name],
    (Step("storage", "RemoveImage", inner=("untagged",)),),
    already=("not found",),
    prepare=import_own_image,
    made_images=lambda i: (i.name,),
)

COMMANDS = (
    RUN_DETACHED, RUN_RM, RM_FORCE, COMMIT, EXEC, STOP, STOP_ESCALATION, RUN_NETWORK, RM_NETWORK, NETWORK_CREATE, NETWORK_RM,
    LOAD, IMPORT, PULL, RMI, RMI_LAST_TAG,
)
