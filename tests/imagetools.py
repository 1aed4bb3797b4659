"""Image builders for tests: real images from umoci, skopeo and podman, and hand-made archives for hostile input."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

TOOL_PACKAGES = {"umoci": "umoci", "skopeo": "skopeo", "podman": "podman", "zstd": "zstd"}


def require_tool(name: str) -> str:
    """The tool's path; a failing test (never a skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {TOOL_PACKAGES.get(name, name)}")
    return path


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return f"sha256:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


# -- real images ------------------------------------------------------------------------------

@dataclass(frozen=True)
class UmociImage:
    layout: Path  # an OCI image layout directory
    tag: str
    cmd: str
    env: str

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    def manifest(self) -> dict:
        index = json.loads((self.layout / "index.json").read_text())
        entry = next(m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == self.tag)
        return json.loads(self.blob(entry["digest"]))

    def config(self) -> dict:
        return json.loads(self.blob(self.manifest()["config"]["digest"]))

    def config_digest(self) -> str:
        return self.manifest()["config"]["digest"]

    def diff_ids(self) -> list[str]:
        return self.config()["rootfs"]["diff_ids"]

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def build_umoci_image(workdir: Path, tag: str = "v1") -> UmociImage:
    """Three layers: files; a deleted file and directory (whiteouts) plus a new file; a symlink and a hardlink.
    Needs root (umoci unpack keeps owners)."""
    require_tool("umoci")
    layout, bundle = workdir / "layout", workdir / "bundle"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:{tag}")
    run("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "etc" / "sub").mkdir(parents=True)
    (rootfs / "data").mkdir()
    (rootfs / "etc" / "hello").write_text("hello\n")
    (rootfs / "etc" / "sub" / "x").write_text("x\n")
    (rootfs / "data" / "gone").write_text("gone\n")
    (rootfs / "data" / "kept").write_bytes(os.urandom(200_000))
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)
    shutil.rmtree(rootfs / "etc" / "sub")
    (rootfs / "data" / "gone").unlink()
    (rootfs / "new").write_text("new\n")
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)
    os.symlink("/etc/hello", rootfs / "link")
    os.link(rootfs / "new", rootfs / "new-hardlink")
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}", bundle)
    cmd, env = "/bin/sh", "GREETING=hi"
    run("umoci", "config", "--image", f"{layout}:{tag}", "--config.cmd", cmd, "--config.env", env)
    shutil.rmtree(bundle)
    return UmociImage(layout, tag, cmd, env)


def skopeo_copy(source: str, destination: str, *options: str) -> None:
    require_tool("skopeo")
    run("skopeo", "copy", "--quiet", *options, source, destination)


def skopeo_inspect(ref: str, *options: str) -> dict:
    require_tool("skopeo")
    return json.loads(run("skopeo", "inspect", *options, ref))


class Podman:
    """podman with its own store below a temp dir (vfs driver): the host's podman store is never touched."""

    def __init__(self, base: Path):
        self.base = base

    def __call__(self, *args: str | Path) -> str:
        return run(
            "podman", "--root", self.base / "root", "--runroot", self.base / "run", "--tmpdir", self.base / "tmp",
            "--storage-driver", "vfs", "--events-backend", "none", "--cgroup-manager", "cgroupfs", *args,
        )


@contextlib.contextmanager
def temp_podman() -> Iterator[Podman]:
    require_tool("podman")
    base = Path(tempfile.mkdtemp(prefix="mdk-podman-", dir="/tmp"))
    try:
        yield Podman(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- hand-made archives -----------------------------------------------------------------------

def tar_bytes(files: dict[str, bytes]) -> bytes:
    """A plain tar of regular files, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """A tar of (name, data) regular files and (name, "->target") symlinks, names exactly as given."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("->")
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return path


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    assert how == "none"
    return data


def image_config(diff_ids: list[str], cmd: str = "/bin/sh") -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": [cmd]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()


@dataclass
class HandImage:
    """The pieces of a hand-made image: each layer's tar, as stored (maybe compressed), and the config."""

    tars: list[bytes]
    blobs: list[bytes]
    config: bytes

    @classmethod
    def make(cls, count: int = 2, how: str = "none", seed: str = "", random_bytes: int = 0) -> "HandImage":
        """`count` one-file layers; `random_bytes` of incompressible data in each, to make them big."""
        tars = [
            tar_bytes({f"file{i}{seed}": f"layer {i} {seed}\n".encode() * 100 + os.urandom(random_bytes)})
            for i in range(count)
        ]
        blobs = [compress(t, how) for t in tars]
        return cls(tars, blobs, image_config([sha256(t) for t in tars]))


def docker_archive_members(image: HandImage, tags: list[str], old_style: bool = True) -> list[tuple[str, bytes | str]]:
    """docker save's members: <id>/layer.tar (old style, the repeated layer as a symlink) or blobs/sha256/<hex>."""
    config_hex = sha256(image.config)[7:]
    members: list[tuple[str, bytes | str]] = []
    layer_names = []
    seen: dict[bytes, str] = {}
    for index, blob in enumerate(image.blobs):
        if old_style:
            name = f"{index:064x}/layer.tar"
            if blob in seen:
                members.append((name, f"->../{seen[blob]}"))
            else:
                members.append((name, blob))
                seen[blob] = name
        else:
            name = f"blobs/sha256/{sha256(blob)[7:]}"
            if blob not in seen:
                members.append((name, blob))
                seen[blob] = name
        layer_names.append(name)
    config_name = f"{config_hex}.json" if old_style else f"blobs/sha256/{config_hex}"
    members.append((config_name, image.config))
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    return members


def oci_layout_members(entries: list[tuple[dict, list[tuple[str, bytes]]]]) -> list[tuple[str, bytes | str]]:
    """An OCI layout: index.json with the given descriptors, and every (digest hex, bytes) blob listed."""
    members: list[tuple[str, bytes | str]] = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
    seen = set()
    for _, blobs in entries:
        for hex_digest, data in blobs:
            if hex_digest not in seen:
                seen.add(hex_digest)
                members.append((f"blobs/sha256/{hex_digest}", data))
    index = {"schemaVersion": 2, "manifests": [descriptor for descriptor, _ in entries]}
    members.append(("index.json", json.dumps(index).encode()))
    return members


def oci_manifest_for(image: HandImage, how: str = "none") -> bytes:
    suffix = "" if how == "none" else f"+{how}"
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(image.config), "size": len(image.config)},
        "layers": [{"mediaType": f"application/vnd.oci.image.layer.v1.tar{suffix}", "digest": sha256(b), "size": len(b)} for b in image.blobs],
    }).encode()


def oci_blobs(image: HandImage, manifest: bytes) -> list[tuple[str, bytes]]:
    return [(sha256(b)[7:], b) for b in [*image.blobs, image.config, manifest]]
