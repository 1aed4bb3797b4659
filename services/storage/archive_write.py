"""Writing images as Docker 25+ `docker save` does: one tar that is both a docker-archive and an OCI layout.

Members: blobs/sha256/<hex> (every config, layer and manifest once), index.json, manifest.json and
oci-layout, in that order, with mtime 0 and owner 0:0, so the same images give the same bytes. Tar
headers come from tarfile; blob data goes from the content store to the output by copy_file_range
(sendfile across filesystems or into a pipe), never through Python buffers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from services.common import reference
from services.common.errors import InvalidArgument
from services.storage import compression
from services.storage.archive_read import CONTAINERD_NAME, OCI_REF_NAME, LayerRef
from services.storage.content import ContentStore
from services.storage.paths import digest_hex

BLOCK = tarfile.BLOCKSIZE
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass(frozen=True)
class ArchiveImage:
    config_digest: str
    layers: tuple[LayerRef, ...]
    repo_tags: tuple[str, ...]  # as `docker save` lists them: busybox:latest, localhost:5000/app:v1


@dataclass(frozen=True)
class WrittenManifest:
    """The OCI manifest written for one image (its digest is what index.json names)."""

    config_digest: str
    manifest: bytes
    digest: str


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _descriptor(media_type: str, digest: str, size: int) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size}


def oci_manifest(config_digest: str, config_size: int, layers: tuple[LayerRef, ...] | list[LayerRef]) -> bytes:
    """An OCI image manifest; layer media types in OCI spelling, whatever the layer was received as."""
    return _json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config_digest, config_size),
        "layers": [
            _descriptor(compression.layer_media_type(compression.compression_of_media_type(layer.media_type), oci=True),
                        layer.digest, layer.size)
            for layer in layers
        ],
    })


def docker_manifest(config_digest: str, config_size: int, layers: tuple[LayerRef, ...] | list[LayerRef]) -> bytes:
    """A Docker v2 schema 2 manifest; InvalidArgument for zstd layers, which it cannot describe."""
    return _json({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": _descriptor(DOCKER_CONFIG, config_digest, config_size),
        "layers": [
            _descriptor(compression.layer_media_type(compression.compression_of_media_type(layer.media_type), oci=False),
                        layer.digest, layer.size)
            for layer in layers
        ],
    })


def tagged(repo_tags: tuple[str, ...]) -> list[reference.Reference]:
    """The references of `repo_tags`; InvalidArgument for one with a digest (manifest.json lists tags only)."""
    refs = [reference.parse(tag) for tag in repo_tags]
    for text, ref in zip(repo_tags, refs):
        if ref.digest:
            raise InvalidArgument(f'cannot save "{text}" as a tag: it names a digest; use NAME[:TAG]')
    return refs


def index_entries(manifest_digest: str, manifest_size: int, refs: list[reference.Reference]) -> list[dict]:
    """index.json entries of one image: one per tag, annotated as Docker does; one bare entry without tags."""
    entry = _descriptor(OCI_MANIFEST, manifest_digest, manifest_size)
    if not refs:
        return [entry]
    return [{**entry, "annotations": {CONTAINERD_NAME: str(ref), OCI_REF_NAME: ref.tag}} for ref in refs]


def plan(images: list[ArchiveImage], store: ContentStore) -> tuple[list[WrittenManifest], dict[str, bytes]]:
    """The manifests of `images` and the small files of the archive (index.json, manifest.json, oci-layout)."""
    manifests, index, docker = [], [], []
    for image in images:
        for digest in (image.config_digest, *(layer.digest for layer in image.layers)):
            if not store.has(digest):
                store.open(digest).close()  # raises the one-line NotFound
        config_size = store.size(image.config_digest) or 0
        data = oci_manifest(image.config_digest, config_size, image.layers)
        manifests.append(WrittenManifest(image.config_digest, data, _digest(data)))
        refs = tagged(image.repo_tags)
        index.extend(index_entries(_digest(data), len(data), refs))
        docker.append({
            "Config": f"blobs/sha256/{digest_hex(image.config_digest)}",
            "RepoTags": [ref.familiar() for ref in refs],
            "Layers": [f"blobs/sha256/{digest_hex(layer.digest)}" for layer in image.layers],
        })
    files = {
        "index.json": _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}),
        "manifest.json": _json(docker),
        "oci-layout": OCI_LAYOUT,
    }
    return manifests, files


def _header(name: str, size: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_blob(src: int, dst: int, size: int) -> None:
    """size bytes of src (from its start) to dst's current position, by the kernel."""
    offset = 0
    use_sendfile = False
    while offset < size:
        if not use_sendfile:
            try:
                copied = os.copy_file_range(src, dst, size - offset, offset)
            except OSError as err:
                # Other filesystem (EXDEV), a pipe or socket (EINVAL), or no support: sendfile does those.
                if err.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                    raise
                use_sendfile = True
                continue
        else:
            copied = os.sendfile(dst, src, offset, size - offset)
        if copied == 0:
            raise OSError(errno.EIO, f"blob shrank while being written ({offset} of {size} bytes)")
        offset += copied


def _pad(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def write_docker_archive(
    out: BinaryIO, images: list[ArchiveImage], store: ContentStore, omit: frozenset[str] = frozenset()
) -> list[WrittenManifest]:
    """Write `images` as one `docker save` tar to `out` (written through its fd); returns their manifests.

    Blobs in `omit` are named by manifest.json and index.json but not written: a "thin" archive,
    complete only together with a content store that has them (see images.py's tag files).
    """
    manifests, files = plan(images, store)
    blobs: dict[str, bytes | None] = {}  # hex -> data for manifests, None for blobs copied from the store
    for image, written in zip(images, manifests):
        blobs.setdefault(digest_hex(image.config_digest), None)
        for layer in image.layers:
            blobs.setdefault(digest_hex(layer.digest), None)
        blobs[digest_hex(written.digest)] = written.manifest
    out.flush()
    fd = out.fileno()
    _write_all(fd, _header("blobs/", 0, directory=True) + _header("blobs/sha256/", 0, directory=True))
    for hex_digest in sorted(blobs):
        if f"sha256:{hex_digest}" in omit:
            continue
        data = blobs[hex_digest]
        if data is not None:
            _write_all(fd, _header(f"blobs/sha256/{hex_digest}", len(data)) + data + _pad(len(data)))
            continue
        with store.open(f"sha256:{hex_digest}") as blob:
            size = os.fstat(blob.fileno()).st_size
            _write_all(fd, _header(f"blobs/sha256/{hex_digest}", size))
            _copy_blob(blob.fileno(), fd, size)
            _write_all(fd, _pad(size))
    for name in sorted(files):
        data = files[name]
        _write_all(fd, _header(name, len(data)) + data + _pad(len(data)))
    _write_all(fd, b"\0" * (2 * BLOCK))
    return manifests
