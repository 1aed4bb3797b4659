"""Loading image archives into the content store: docker-archive (docker save), OCI archives, plain rootfs tars.

Every blob is verified (digest, size, and each layer's diff id against its config) while it is copied
into the store, reading each archive member once with pread from the (uncompressed) archive file.
A failed load deletes the blobs it added, so nothing of a refused archive stays behind.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.common.errors import InvalidArgument, NotFound
from services.common.reference import Platform, host_platform, parse_platform, platform_matches
from services.storage import compression, tarsafe
from services.storage.archive_tar import COPY_CHUNK, ArchiveTar, named_digest, parse_json
from services.storage.content import BlobWriter, ContentStore, DigestMismatch, short
from services.storage.paths import digest_hex
from services.storage.tarsafe import UnsafeArchive

MAX_INDEX_DEPTH = 4
DOCKER_ARCHIVE, OCI_ARCHIVE, ROOTFS = "docker-archive", "oci-archive", "rootfs"
INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class LayerRef:
    digest: str  # of the blob as stored (maybe compressed)
    diff_id: str  # of the uncompressed layer tar
    size: int  # of the blob
    media_type: str


@dataclass(frozen=True)
class LoadedImage:
    config_digest: str
    layers: tuple[LayerRef, ...]
    repo_tags: tuple[str, ...]
    source_format: str


def read_archive(path: Path, store: ContentStore, *, what: str, platform: Platform | str | None = None,
                 flat_config: Callable[[str], bytes]) -> list[LoadedImage]:
    """The images in the archive at `path`, their blobs added to `store`; `flat_config(diff_id)` gives the
    config of a plain rootfs tar. Any failure removes the blobs this call added and raises one line."""
    wanted = parse_platform(platform) if isinstance(platform, str) else platform or host_platform()
    loader = _Loader(store, what, wanted)
    try:
        return _merge(loader.load(path, flat_config))
    except DigestMismatch as err:
        loader.rollback()
        raise DigestMismatch(f"{what}: {err}") from None
    except BaseException:
        loader.rollback()
        raise


def _merge(images: list[LoadedImage]) -> list[LoadedImage]:
    """One entry per image: an index names the same manifest once per tag."""
    merged: dict[tuple[str, tuple[LayerRef, ...]], LoadedImage] = {}
    for image in images:
        key = (image.config_digest, image.layers)
        previous = merged.get(key)
        if previous is None:
            merged[key] = image
        else:
            tags = previous.repo_tags + tuple(t for t in image.repo_tags if t not in previous.repo_tags)
            merged[key] = LoadedImage(image.config_digest, image.layers, tags, image.source_format)
    return list(merged.values())


def oci_names(annotations: dict) -> tuple[str, ...]:
    """The full image name an index entry's annotations give, if any (a bare tag names no repository)."""
    full = annotations.get(CONTAINERD_NAME)
    if isinstance(full, str) and full:
        return (full,)
    ref = annotations.get(OCI_REF_NAME)
    if isinstance(ref, str) and ("/" in ref or ":" in ref):
        return (ref,)
    return ()


def describe_platform(entry: dict) -> str:
    spec = entry.get("platform") if isinstance(entry.get("platform"), dict) else {}
    text = f"{spec.get('os', '?')}/{spec.get('architecture', '?')}"
    return text + (f"/{spec['variant']}" if spec.get("variant") else "")


def _entry_matches(entry: dict, wanted: Platform) -> bool:
    spec = entry.get("platform")
    if not isinstance(spec, dict):
        return False
    return platform_matches(wanted, *(str(spec.get(key, "")) for key in ("os", "architecture", "variant")))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _dicts(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


class _Loader:
    def __init__(self, store: ContentStore, what: str, platform: Platform):
        self.store, self.what, self.platform = store, what, platform
        self.created: list[str] = []
        self.layer_cache: dict[str, tuple[str, str, int, str]] = {}
        self.tar: ArchiveTar

    def rollback(self) -> None:
        for digest in self.created:
            self.store.delete(digest)

    def fail(self, message: str) -> InvalidArgument:
        return InvalidArgument(f"{self.what}: {message}")

    # -- the outer file -----------------------------------------------------------------------

    def load(self, path: Path, flat_config: Callable[[str], bytes]) -> list[LoadedImage]:
        try:
            source = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"{self.what} does not exist: check the path") from None
        except IsADirectoryError:
            raise InvalidArgument(f"{self.what} is a directory: give the archive file") from None
        with source:
            outer = compression.detect(source.read(compression.HEAD_SIZE))
            source.seek(0)
            if outer == compression.NONE:
                return self._load_tar(source, None, flat_config)
            # Decompressed into the store's tmp: tar members need random access; kept as the blob of a rootfs.
            with self.store.writer() as staged:
                compression.decompress_to(source, staged, self.what)
                with open(staged.path, "rb") as plain:
                    return self._load_tar(plain, staged, flat_config)

    def _load_tar(self, archive: BinaryIO, staged: BlobWriter | None, flat_config) -> list[LoadedImage]:
        self.tar = ArchiveTar(archive, self.what)
        if self.tar.has("manifest.json") or self.tar.has("index.json"):
            if self.tar.unsafe:
                raise UnsafeArchive(f"{self.what} is refused: {tarsafe.describe(self.tar.unsafe)}")
            return self._docker_archive() if self.tar.has("manifest.json") else self._oci_archive()
        problems = tarsafe.check_members(self.tar.members)
        if problems:
            raise UnsafeArchive(f"{self.what} is refused: {tarsafe.describe(problems)}")
        return [self._rootfs(archive, staged, flat_config)]

    def _rootfs(self, archive: BinaryIO, staged: BlobWriter | None, flat_config) -> LoadedImage:
        if staged is None:
            archive.seek(0)
            with self.store.writer() as blob:
                while chunk := archive.read(COPY_CHUNK):
                    blob.write(chunk)
                diff_id, size = self._commit(blob), blob.size
        else:
            diff_id, size = self._commit(staged), staged.size
        config_digest = self._put(flat_config(diff_id), None)
        layer = LayerRef(diff_id, diff_id, size, compression.layer_media_type(compression.NONE, oci=True))
        return LoadedImage(config_digest, (layer,), (), ROOTFS)

    # -- storing blobs ------------------------------------------------------------------------

    def _commit(self, blob: BlobWriter) -> str:
        digest = blob.commit()
        if blob.created:
            self.created.append(digest)
        return digest

    def _put(self, data: bytes, expected: str | None) -> str:
        with self.store.writer(expected, len(data)) as blob:
            blob.write(data)
            return self._commit(blob)

    def store_layer(self, member: tarfile.TarInfo, expected: str | None, expected_size: int | None,
                    media_type: str | None) -> tuple[str, str, int, str]:
        """(digest, diff id, size, media type) of a layer member, stored as is; each member is read once."""
        cached = self.layer_cache.get(member.name)
        if cached is not None:
            return cached
        found = compression.detect(self.tar.head(member, compression.HEAD_SIZE))
        if found not in (compression.NONE, compression.GZIP, compression.ZSTD):
            raise self.fail(f'layer "{member.name}" is {found}-compressed: only plain, gzip and zstd layers are supported')
        if media_type is not None:
            try:
                announced = compression.compression_of_media_type(media_type)
            except InvalidArgument as err:
                raise self.fail(str(err)) from None
            if announced != found:
                raise self.fail(f'layer "{member.name}" is announced as {media_type} but its data is {found}')
        if expected_size is not None and member.size != expected_size:
            raise self.fail(f'blob "{member.name}" is {member.size} bytes, its descriptor says {expected_size}')
        if expected is not None and self.store.has(expected):
            result = self._hash_layer(member, self.store.verifier(expected, member.size), found)
        else:
            with self.store.writer(expected, member.size) as blob:
                result = self._hash_layer(member, blob, found)
        digest, diff_id = result
        entry = (digest, diff_id, member.size, media_type or compression.layer_media_type(found, oci=True))
        self.layer_cache[member.name] = entry
        return entry

    def _hash_layer(self, member: tarfile.TarInfo, blob: BlobWriter, found: str) -> tuple[str, str]:
        source = self.tar.reader(member, blob)
        if found == compression.NONE:
            source.drain()
            digest = self._commit(blob)
            return digest, digest
        label = f'{self.what}: layer "{member.name}"'
        diff_id, _ = compression.decompress_to(io.BufferedReader(source, COPY_CHUNK), _Discard(), label)
        source.drain()  # bytes after the compressed stream are part of the blob all the same
        return self._commit(blob), diff_id

    def check_layers(self, config_name: str, config: dict, layers: list[tuple[str, str, int, str]]) -> None:
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise self.fail(f'image config "{config_name}" has no rootfs.diff_ids list')
        if len(diff_ids) != len(layers):
            raise self.fail(
                f'image config "{config_name}" has {len(diff_ids)} rootfs.diff_ids but the manifest lists {len(layers)} layers'
            )
        for index, ((digest, diff_id, _, _), expected) in enumerate(zip(layers, diff_ids), start=1):
            if diff_id != expected:
                raise self.fail(
                    f"layer {index} ({digest}) unpacks to {diff_id} but the image config says {expected}: the archive is corrupt"
                )

    # -- formats ------------------------------------------------------------------------------

    def _docker_archive(self) -> list[LoadedImage]:
        manifest = self.tar.read_json(self.tar.by_name[("manifest.json",)], list)
        if not manifest:
            raise self.fail("manifest.json lists no image")
        images = []
        for number, entry in enumerate(manifest, start=1):
            referrer = f"manifest.json entry {number}"
            if not isinstance(entry, dict):
                raise self.fail(f"{referrer} is not a JSON object")
            config_name, layer_names, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags")
            if not isinstance(config_name, str) or not _strings(layer_names):
                raise self.fail(f"{referrer} needs a Config name and a Layers list of names")
            if tags is not None and not _strings(tags):
                raise self.fail(f"{referrer}: RepoTags is not a list of names")
            config_member = self.tar.resolve(config_name, referrer)
            config_bytes = self.tar.read_small(config_member)
            config = parse_json(config_bytes, f'image config "{config_name}"', self.what)
            layers = [
                self.store_layer(member, named_digest(member), None, None)
                for member in (self.tar.resolve(name, referrer) for name in layer_names)
            ]
            self.check_layers(config_name, config, layers)
            config_digest = self._put(config_bytes, named_digest(config_member))
            refs = tuple(LayerRef(*layer) for layer in layers)
            images.append(LoadedImage(config_digest, refs, tuple(tags or ()), DOCKER_ARCHIVE))
        return images

    def _oci_archive(self) -> list[LoadedImage]:
        index = self.tar.read_json(self.tar.by_name[("index.json",)])
        entries = index.get("manifests")
        if not entries or not _dicts(entries):
            raise self.fail("index.json lists no manifests")
        with_platform = [e for e in entries if isinstance(e.get("platform"), dict)]
        chosen = entries
        if len(with_platform) > 1:
            # Several platforms side by side at the top: one index in all but name. One alone is loaded
            # whatever it says, as docker load does.
            chosen = [e for e in entries if e not in with_platform or _entry_matches(e, self.platform)]
            if not chosen:
                raise self._no_platform(with_platform)
        images = []
        for entry in chosen:
            annotations = entry.get("annotations") if isinstance(entry.get("annotations"), dict) else {}
            images.append(self._oci_image(entry, oci_names(annotations), "index.json", 0))
        return images

    def _no_platform(self, entries: list[dict]) -> InvalidArgument:
        available = ", ".join(sorted({describe_platform(e) for e in entries})) or "none"
        return self.fail(f"no image for platform {self.platform} (the archive has: {available}): choose one with --platform")

    def _descriptor(self, entry: dict, referrer: str) -> tuple[tarfile.TarInfo, str, int]:
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool):
            raise self.fail(f"{referrer} has a descriptor without digest and size")
        try:
            hex_digest = digest_hex(digest)
        except InvalidArgument as err:
            raise self.fail(f"{referrer}: {err}") from None
        member = self.tar.resolve(f"blobs/sha256/{hex_digest}", referrer)
        if member.size != size:
            raise self.fail(f"blob {digest} is {member.size} bytes, {referrer} says {size}")
        return member, digest, size

    def _json_blob(self, entry: dict, referrer: str) -> dict:
        """A verified index or manifest (not stored: the image is its config and layers)."""
        member, digest, _ = self._descriptor(entry, referrer)
        data = self.tar.read_small(member)
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if actual != digest:
            raise DigestMismatch(f"blob {short(digest)} is corrupt: its content has digest {short(actual)}")
        return parse_json(data, f"manifest {digest} (named by {referrer})", self.what)

    def _oci_image(self, entry: dict, names: tuple[str, ...], referrer: str, depth: int) -> LoadedImage:
        if depth > MAX_INDEX_DEPTH:
            raise self.fail(f"indexes nested deeper than {MAX_INDEX_DEPTH} levels")
        document = self._json_blob(entry, referrer)
        media_type = entry.get("mediaType") or document.get("mediaType")
        if media_type in INDEX_TYPES or (media_type is None and "manifests" in document):
            manifests = document.get("manifests")
            if not _dicts(manifests):
                raise self.fail(f"image index {entry.get('digest')} lists no manifests")
            matching = [m for m in manifests if _entry_matches(m, self.platform)]
            if not matching:
                raise self._no_platform(manifests)
            return self._oci_image(matching[0], names, f"image index {entry.get('digest')}", depth + 1)
        if media_type not in MANIFEST_TYPES and media_type is not None:
            raise self.fail(f'unsupported manifest media type "{media_type}"')
        config_entry, layer_entries = document.get("config"), document.get("layers")
        if not isinstance(config_entry, dict) or not _dicts(layer_entries):
            raise self.fail(f"manifest {entry.get('digest')} needs a config and a layers list")
        referrer = f"manifest {entry.get('digest')}"
        config_member, config_digest, _ = self._descriptor(config_entry, referrer)
        config_bytes = self.tar.read_small(config_member)
        config = parse_json(config_bytes, f"image config {config_digest}", self.what)
        layers = []
        for layer_entry in layer_entries:
            member, digest, size = self._descriptor(layer_entry, referrer)
            announced = layer_entry.get("mediaType")
            if not isinstance(announced, str):
                raise self.fail(f"{referrer} has a layer without a mediaType")
            layers.append(self.store_layer(member, digest, size, announced))
        self.check_layers(config_member.name, config, layers)
        self._put(config_bytes, config_digest)
        return LoadedImage(config_digest, tuple(LayerRef(*layer) for layer in layers), names, OCI_ARCHIVE)


class _Discard(io.RawIOBase):
    """Where a layer's decompressed bytes go once hashed: only the diff id is kept."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return len(data)
