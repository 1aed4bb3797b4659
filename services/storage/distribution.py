"""Pull and push: images between the content store and a registry, layer blobs in parallel, each fetched once."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.common import image_config, reference
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.reference import Reference
from services.storage import compression
from services.storage.archive_read import LayerRef
from services.storage.archive_write import docker_manifest, oci_manifest
from services.storage.content import ContentStore
from services.storage.imagedb import ImageRecord
from services.storage.registry_auth import registry_settings
from services.storage.registry_client import RegistryClient
from services.storage.registry_manifest import DOCKER_MANIFEST, OCI_MANIFEST, select_platform

log = logging.getLogger(__name__)

# Parallel blob transfers per pull or push, as docker's default max-concurrent-downloads is 3.
PARALLEL_TRANSFERS = 3
PROGRESS_STEP = 1 << 20


@dataclass(frozen=True)
class Progress:
    """Where one blob of a transfer stands."""

    digest: str
    status: str
    current: int
    total: int


Report = Callable[[Progress], None]


@dataclass(frozen=True)
class PulledImage:
    """What a pull fetched: the config and layers (all in the content store), and the digest the reference
    resolved to (for a multi-platform image the index's, as Docker records it: name@digest pulls the same again)."""

    config_digest: str
    layers: tuple[LayerRef, ...]
    manifest_digest: str


def client_for(root: Path, ref: Reference) -> RegistryClient:
    settings = registry_settings(root, ref.domain)
    return RegistryClient(
        settings.endpoint, credentials=settings.credentials, scheme=settings.scheme, ca_file=settings.ca_file
    )


def _manifest_json(data: bytes, name: str) -> dict:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"the manifest of {name} is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict) or not isinstance(document.get("layers"), list):
        raise InvalidArgument(f"the manifest of {name} has no config or layers")
    return document


def _descriptor(entry: object, name: str) -> tuple[str, int, str]:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"the manifest of {name} has a descriptor that is not an object")
    digest, size, media_type = entry.get("digest"), entry.get("size"), entry.get("mediaType", "")
    if not isinstance(digest, str) or not isinstance(size, int) or size < 0 or not isinstance(media_type, str):
        raise InvalidArgument(f"the manifest of {name} has a descriptor without a digest or size")
    return digest, size, media_type


def fetch_blob(client: RegistryClient, store: ContentStore, repo: str, digest: str, size: int, report: Report) -> bool:
    """Store one blob, fetching it unless present; a partial download resumes. True when it was fetched.

    The per-digest lock makes concurrent pulls of one blob fetch it once: the second finds it stored.
    """
    with store.lock(digest):
        if store.has(digest):
            report(Progress(digest, "exists", size, size))
            return False
        last = [0]

        def progress(held: int) -> None:
            if held - last[0] >= PROGRESS_STEP or held == size:
                last[0] = held
                report(Progress(digest, "downloading", held, size))

        with store.writer(digest, size, resume=True) as blob:
            report(Progress(digest, "downloading", blob.offset, size))
            client.get_blob(repo, digest, blob.write, offset=blob.offset, progress=progress)
            report(Progress(digest, "verifying", blob.size, size))
            blob.commit()
        report(Progress(digest, "done", size, size))
        return True


def pull(
    root: Path,
    store: ContentStore,
    ref: Reference,
    platform: str,
    report: Report,
    known: Callable[[str], tuple[LayerRef, ...] | None] = lambda config_digest: None,
) -> PulledImage:
    """Fetch the manifest (resolving an index to `platform`), the config and every layer blob into `store`.

    `known(config digest)` gives the layers of an image already stored whole: then no layer is fetched,
    even when this registry compresses them otherwise (the image id says the content is the same).
    """
    name = ref.familiar()
    wanted = platform or str(reference.host_platform())
    with client_for(root, ref) as client:
        repo = reference.repository(ref)
        manifest = client.get_manifest(repo, ref.digest or ref.tag)
        named_digest = manifest.digest
        if manifest.is_index:
            chosen = select_platform(manifest.data, wanted, name)
            manifest = client.get_manifest(repo, chosen["digest"])
            if manifest.is_index:
                raise InvalidArgument(f"{name}: the index for {wanted} points at another index, which mydocker does not follow")
        document = _manifest_json(manifest.data, name)
        config_digest, config_size, _ = _descriptor(document["config"], name)
        blobs = [_descriptor(entry, name) for entry in document["layers"]]
        fetch_blob(client, store, repo, config_digest, config_size, lambda progress: None)
        spec = image_config.parse_config(store.read_bytes(config_digest))
        if len(spec.diff_ids) != len(blobs):
            raise InvalidArgument(
                f"{name}: the config lists {len(spec.diff_ids)} layers but the manifest {len(blobs)}: the image is broken"
            )
        have = known(config_digest)
        if have is not None and tuple(layer.diff_id for layer in have) == spec.diff_ids:
            for digest, size, _ in blobs:
                report(Progress(digest, "exists", size, size))
            log.info("pulled %s (%s): image %s is here already", name, named_digest, config_digest)
            return PulledImage(config_digest, have, named_digest)
        for digest, size, _ in blobs:
            report(Progress(digest, "waiting", 0, size))
        errors: list[BaseException] = []
        lock = threading.Lock()

        def one(item: tuple[str, int, str]) -> None:
            try:
                fetch_blob(client, store, repo, item[0], item[1], report)
            except BaseException as exc:  # noqa: BLE001 - the first failure is raised below, after the others stop
                with lock:
                    errors.append(exc)

        with ThreadPoolExecutor(max_workers=PARALLEL_TRANSFERS, thread_name_prefix="pull") as pool:
            list(pool.map(one, dict.fromkeys(blobs)))
        if errors:
            raise errors[0]
    layers = tuple(
        LayerRef(digest=digest, diff_id=diff_id, size=size, media_type=_layer_media_type(media_type, store, digest))
        for (digest, size, media_type), diff_id in zip(blobs, spec.diff_ids)
    )
    log.info("pulled %s (%s, manifest %s): %d layer(s)", name, named_digest, manifest.digest, len(layers))
    return PulledImage(config_digest, layers, named_digest)


def _layer_media_type(media_type: str, store: ContentStore, digest: str) -> str:
    """The manifest's layer type when it is one we know, else what the blob's magic bytes say."""
    try:
        compression.compression_of_media_type(media_type)
        return media_type
    except InvalidArgument:
        with store.open(digest) as blob:
            kind = compression.detect(blob.read(8))
        return compression.layer_media_type(kind, oci=True)


def push(root: Path, store: ContentStore, ref: Reference, record: ImageRecord, report: Report) -> str:
    """Upload the image's blobs and a manifest tagged `ref.tag`; returns the manifest digest."""
    if ref.digest or not ref.tag:
        raise InvalidArgument(f'push needs a tag, not a digest: "{ref}"')
    repo = reference.repository(ref)
    mount_from = _mount_source(record, ref)
    config_size = store.size(record.id) or 0
    uses_zstd = any(compression.compression_of_media_type(layer.media_type) == compression.ZSTD for layer in record.layers)
    oci = uses_zstd or any("oci" in layer.media_type for layer in record.layers)
    manifest = (oci_manifest if oci else docker_manifest)(record.id, config_size, record.layers)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    with client_for(root, ref) as client:
        blobs = [(layer.digest, layer.size) for layer in record.layers] + [(record.id, config_size)]
        for digest, size in blobs:
            report(Progress(digest, "waiting", 0, size))
        errors: list[BaseException] = []
        lock = threading.Lock()

        def one(item: tuple[str, int]) -> None:
            digest, size = item
            try:
                if client.blob_exists(repo, digest) is not None:
                    report(Progress(digest, "exists", size, size))
                    return
                with store.open(digest) as source:
                    client.upload_blob(
                        repo,
                        digest,
                        size,
                        source.read,
                        mount_from=mount_from,
                        progress=lambda sent: report(Progress(digest, "uploading", sent, size)),
                    )
                report(Progress(digest, "done", size, size))
            except BaseException as exc:  # noqa: BLE001 - raised below
                with lock:
                    errors.append(exc)

        with ThreadPoolExecutor(max_workers=PARALLEL_TRANSFERS, thread_name_prefix="push") as pool:
            list(pool.map(one, dict.fromkeys(blobs)))
        if errors:
            raise errors[0]
        digest = client.put_manifest(repo, ref.tag, media_type, manifest)
    log.info("pushed %s as %s", ref.familiar(), digest)
    return digest


def _mount_source(record: ImageRecord, ref: Reference) -> str | None:
    """Another repository of the same registry known to hold this image: blobs can be mounted from it."""
    for repo_digest in record.repo_digests:
        try:
            known = reference.parse(repo_digest)
        except InvalidArgument:
            continue
        if known.domain == ref.domain and known.path != ref.path:
            return reference.repository(known)
    return None


def check_pushable(ref: Reference) -> None:
    if ref.domain == "docker.io" and ref.path.startswith("library/"):
        raise FailedPrecondition(
            f'refusing to push "{ref.familiar()}" to Docker Hub\'s official library: tag it with your own repository first'
        )
