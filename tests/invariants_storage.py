"""The storage invariants: image records against blobs, unpacked layers, tag files and temp files (see tests/invariants.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from protos.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.client import open_channel
from services.common.config import Config

STORAGE_TIMEOUT = 10.0
# How long `commit` and `tag` may take to complete their thin tag files in the background (milliseconds for our images).
THIN_TIMEOUT = 15.0


@dataclass(frozen=True)
class TagFile:
    """One tag file below ROOT/image: its path relative to it, what it holds, and what the service resolves it to."""

    relative: str
    # The image ids its manifest.json names (a docker-archive), () for a hand-made rootfs tar.
    archive_ids: tuple[str, ...]
    # Why it is not a readable tar or docker-archive, or "".
    unreadable: str
    # The id GetImage gave for the tag, or "".
    resolved: str
    # GetImage's refusal, or "".
    refused: str


@dataclass(frozen=True)
class StorageView:
    """The storage root as read once, after the tag files were resolved (resolving may load a hand-made one)."""

    tag_files: list[TagFile]
    # Markers of tag files still thin (ROOT/imagedb/thin) once THIN_TIMEOUT passed, as paths below ROOT.
    thin: list[str]
    # Image id -> the blobs its record needs (config and layer blobs) and its layers' diff ids.
    records: dict[str, tuple[frozenset[str], tuple[str, ...]]]
    unreadable_records: list[str]
    blobs: set[str]
    # Diff id -> whether layers/sha256/<hex> is complete (layer.json and fs/).
    layers: dict[str, bool]
    # Diff ids that rootfs records list or lower links point to.
    rootfs_layers: set[str]
    # Temp files that must not outlive a restart, as paths below ROOT.
    temps: list[str]
    # Image id -> tags (familiar), as ListImages shows them; and the ids with containers.
    listed: dict[str, tuple[str, ...]]
    in_use: set[str]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_archive_ids(path: Path) -> tuple[tuple[str, ...], str]:
    """(image ids in the docker-archive's manifest.json, "") or ((), why it is unreadable); ((), "") for a plain tar."""
    try:
        with tarfile.open(path) as archive:
            members = {member.name.removeprefix("./"): member for member in archive.getmembers()}
            if "manifest.json" not in members:
                return (), ""  # a rootfs tar dropped by hand, the seed's way
            manifest = json.loads(archive.extractfile(members["manifest.json"]).read())
            ids = []
            for entry in manifest:
                for layer in entry["Layers"]:
                    if layer not in members:
                        return (), f"its manifest names layer {layer}, which it does not hold"
                if entry["Config"] not in members:
                    return (), f"its manifest names config {entry['Config']}, which it does not hold"
                ids.append(_sha256(archive.extractfile(members[entry["Config"]]).read()))
            return tuple(ids), ""
    except (tarfile.TarError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return (), f"not a readable image archive ({type(err).__name__}: {'; '.join(str(err).splitlines())})"


def _files_below(directory: Path) -> list[Path]:
    """Every non-directory at any depth below `directory` (symlinks not followed), sorted."""
    found = []
    for parent, dirs, files in os.walk(directory):
        found += [Path(parent) / name for name in files]
        found += [Path(parent) / name for name in dirs if (Path(parent) / name).is_symlink()]
    return sorted(found)


def _temps(root: Path) -> list[str]:
    temps = [p for p in _files_below(root / "blobs" / "tmp") if not p.name.endswith(".partial")]
    temps += _files_below(root / "tmp" / "storage")
    temps += [p for p in _files_below(root / "image") + _files_below(root / "imagedb") if p.name.startswith(".")]
    layer_tmp = root / "layers" / "tmp"
    temps += sorted(layer_tmp.iterdir()) if layer_tmp.is_dir() else []
    return [str(p.relative_to(root)) for p in temps]


def _lower_layer(link: Path) -> str | None:
    try:
        parts = Path(os.readlink(link)).parts
    except OSError:
        return None
    return f"sha256:{parts[-2]}" if len(parts) >= 3 and parts[-1] == "fs" and parts[-3] == "sha256" else None


def wait_for_thin_tag_files(root: Path, timeout: float = THIN_TIMEOUT) -> list[str]:
    """Wait until the service completed every thin tag file (its marker goes last); the markers left after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        markers = [str(p.relative_to(root)) for p in _files_below(root / "imagedb" / "thin") if not p.name.startswith(".")]
        if not markers or time.monotonic() > deadline:
            return markers
        time.sleep(0.05)


def read_storage(config: Config) -> StorageView:
    root = Path(os.path.realpath(config.root))
    # First: a tag file read while thin names blobs it does not hold yet, and its completion writes a temp file.
    thin = wait_for_thin_tag_files(root)
    tag_files = []
    with open_channel(config, "storage") as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        for path in _files_below(root / "image"):
            if path.name.startswith(".") or path.suffix != ".tar":
                continue
            relative = str(path.relative_to(root / "image"))
            ids, unreadable = read_archive_ids(path)
            resolved = refused = ""
            try:
                request = storage_pb2.GetImageRequest(name=relative.removesuffix(".tar"), brief=True)
                resolved = stub.GetImage(request, timeout=STORAGE_TIMEOUT).image.id
            except grpc.RpcError as err:
                refused = f"{err.code().name}: {err.details()}"
            tag_files.append(TagFile(relative, ids, unreadable, resolved, refused))
        listing = stub.ListImages(storage_pb2.ListImagesRequest(), timeout=STORAGE_TIMEOUT).images
    records, unreadable_records = {}, []
    record_dir = root / "imagedb" / "sha256"
    for path in sorted(record_dir.glob("*.json")) if record_dir.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            image_id = data["id"]
            blobs = frozenset([image_id] + [layer["digest"] for layer in data["layers"]])
            records[image_id] = (blobs, tuple(layer["diff_id"] for layer in data["layers"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            unreadable_records.append(f"{path.relative_to(root)} ({type(err).__name__}: {err})")
            continue
        if path.stem != image_id.removeprefix("sha256:"):
            unreadable_records.append(f"{path.relative_to(root)} (it holds the record of {image_id})")
    blob_dir = root / "blobs" / "sha256"
    blobs = {f"sha256:{p.name}" for p in blob_dir.iterdir()} if blob_dir.is_dir() else set()
    layer_dir = root / "layers" / "sha256"
    layers = {
        f"sha256:{p.name}": (p / "layer.json").is_file() and (p / "fs").is_dir()
        for p in (layer_dir.iterdir() if layer_dir.is_dir() else ())
    }
    rootfs_layers = set()
    overlay = root / "overlay2"
    for rootfs in overlay.iterdir() if overlay.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            rootfs_layers |= set(json.loads((rootfs / ".rootfs.json").read_text())["layers"])
        if (lower := _lower_layer(rootfs / "lower")) is not None:
            rootfs_layers.add(lower)
    return StorageView(
        tag_files=tag_files,
        thin=thin,
        records=records,
        unreadable_records=unreadable_records,
        blobs=blobs,
        layers=layers,
        rootfs_layers=rootfs_layers,
        temps=_temps(root),
        listed={image.id: tuple(image.repo_tags) for image in listing},
        in_use={image.id for image in listing if image.container_ids},
    )


def check_storage(view: StorageView) -> list[str]:
    """What a crash left that the service's restart (reconcile, collect_blobs, collect_layers) did not explain or repair.

    An image record with no tag and no container is explained: `mydocker images` lists it as <none>,
    as Docker lists a dangling image. A tag file is checked complete: `commit` and `tag` publish it
    thin and complete it in the background (services/storage/tagfiles.py), and read_storage waits.
    """
    found = [f"image record {name} is unreadable" for name in view.unreadable_records]
    found += [f"a tag file is still thin after {THIN_TIMEOUT:.0f}s ({marker})" for marker in view.thin]
    for tag in view.tag_files:
        label = f"tag file image/{tag.relative}"
        if tag.unreadable:
            found.append(f"{label} is {tag.unreadable}")
        if tag.refused:
            found.append(f"{label}: the service cannot resolve it ({tag.refused})")
        elif tag.archive_ids and tag.resolved not in tag.archive_ids:
            found.append(f"{label} holds {', '.join(tag.archive_ids)} but resolves to {tag.resolved}")
        elif tag.resolved and tag.resolved not in view.records:
            found.append(f"{label} resolves to {tag.resolved}, which has no image record")
    used_blobs: set[str] = set()
    used_layers = set(view.rootfs_layers)
    for image_id, (blobs, diff_ids) in view.records.items():
        used_blobs |= blobs
        used_layers |= set(diff_ids)
        for missing in sorted(blobs - view.blobs):
            found.append(f"image {image_id} lacks its blob {missing}")
        if image_id not in view.listed:
            found.append(f"image record {image_id} is not listed by `mydocker images`")
    for orphan in sorted(view.blobs - used_blobs):
        found.append(f"blob {orphan} belongs to no image record")
    for diff_id, complete in sorted(view.layers.items()):
        if not complete:
            found.append(f"layer {diff_id} is incomplete (no layer.json or fs/)")
        if diff_id not in used_layers:
            found.append(f"layer {diff_id} is used by no image record and no rootfs")
    found += [f"temp file {temp} was left behind" for temp in view.temps]
    return found


def dangling_images(view: StorageView) -> list[str]:
    """Images with no tag and no container: what `mydocker images` shows as <none>."""
    return sorted(image_id for image_id, tags in view.listed.items() if not tags and image_id not in view.in_use)
