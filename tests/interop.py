"""Comparing an image across runtimes: its file tree as the image's own busybox lists it from inside a container
(or chrooted into an unpacked rootfs), what a mydocker root's stores hold, and podman in a temp store.

LISTING prints every path below / on the root filesystem with its type, mode, owner and symlink target (and link
count for non-directories), then the sha256 of each file under 1 MiB and of /bin/busybox. Left out are the mount
points every runtime makes (/proc, /sys, /dev, /etc/hosts, /etc/hostname, /etc/resolv.conf) and what only Docker
adds to every container (/.dockerenv, and /etc/mtab in its init layer).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import resource
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dockerd import Dockerd, cgroup_dirs_named, mountinfo_lines, remove_cgroup_tree
from tests.e2e.conftest import Host
from tests.imagetools import Podman, temp_podman

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


def docker_tree(dockerd: Dockerd, image: str) -> str:
    return dockerd.cli(
        "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh", image, "-c", LISTING
    ).stdout


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
        lines = difflib.unified_diff(expected.splitlines(), actual.splitlines(), "expected", what, lineterm="")
        diff = "\n".join(lines)
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
    """Limits podman's runc can set here. podman 4.3's default RLIMIT_NOFILE (1048576) is above our hard limit,
    which nothing without CAP_SYS_RESOURCE (as here) may raise, and its conmon runs with RLIMIT_NPROC 32768,
    below what podman asks for: runc fails with "error setting rlimit type 7 (then 6): operation not permitted"."""
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


@dataclass(frozen=True)
class UmociReference:
    """tests/imagetools' umoci image with busybox and an opaque /data on top, and what `umoci unpack` makes of it."""

    ref: str  # skopeo's source reference of the OCI layout
    tree: str  # LISTING of `umoci unpack`'s rootfs
    diff_ids: list[str]


def umoci_with_busybox(work: Path, busybox_tar: Path) -> UmociReference:
    """tests/imagetools' three umoci layers (files; a deleted file and directory; links), busybox to run it,
    and a last layer making /data opaque with one new file; its reference tree is `umoci unpack`'s."""
    from tests.imagetools import build_umoci_image, require_tool, run, write_tar

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
