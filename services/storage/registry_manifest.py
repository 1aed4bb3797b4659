"""Pure pieces of the registry protocol: media types, digests, manifest checks, platform choice, error bodies."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from services.common.reference import Platform, normalized, parse_platform
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
MANIFEST_TYPES = INDEX_TYPES + IMAGE_MANIFEST_TYPES
MAX_MANIFEST_BYTES = 4 << 20  # the distribution spec's recommended limit, as containerd and the registry use

_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry sent it: the exact bytes, their media type and digest."""

    media_type: str
    digest: str
    data: bytes

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def is_digest(reference: str) -> bool:
    return bool(_DIGEST_RE.match(reference))


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def check_digest(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


def check_repository(repo: str) -> str:
    if len(repo) > 255 or not _REPO_RE.match(repo):
        raise InvalidArgument(f"invalid repository name {repo!r}: lower-case path components like team/app")
    return repo


def check_reference(reference: str) -> str:
    """A tag or a digest, as may follow /manifests/ in a URL."""
    if not (is_digest(reference) or _TAG_RE.match(reference)):
        raise InvalidArgument(f"invalid tag or digest {reference!r}")
    return reference


def display_name(host: str, repo: str, reference: str) -> str:
    """host/repo:tag or host/repo@digest, as users write it."""
    return f"{host}/{repo}{'@' if is_digest(reference) else ':'}{reference}"


def manifest_media_type(content_type: str | None, data: bytes, name: str) -> str:
    """The media type of a fetched manifest: the Content-Type, or the JSON's mediaType for a generic one.

    Refuses Docker schema 1 and anything that is not an image manifest or index, in one line naming `name`.
    """
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise FailedPrecondition(f"invalid manifest: {name} is not JSON") from None
    if not isinstance(body, dict):
        raise FailedPrecondition(f"invalid manifest: {name} is not a JSON object")
    in_body = body.get("mediaType") if isinstance(body.get("mediaType"), str) else ""
    media_type = declared if declared in MANIFEST_TYPES + DOCKER_SCHEMA1 else in_body
    if media_type in DOCKER_SCHEMA1 or body.get("schemaVersion") == 1:
        raise FailedPrecondition(f"unsupported manifest: {name} is a Docker schema 1 image, deprecated since 2017; "
                                 "push it again with a current Docker, Podman or skopeo")
    if not media_type and body.get("schemaVersion") == 2:
        # OCI lets mediaType be absent: an index lists manifests, an image manifest has a config.
        media_type = OCI_INDEX if "manifests" in body else OCI_MANIFEST if "config" in body else ""
    if media_type not in MANIFEST_TYPES:
        raise FailedPrecondition(f"unsupported manifest: {name} has media type {media_type or declared or 'none'!r}, "
                                 "not an OCI or Docker v2 image manifest or index")
    return media_type


# --- platforms ----------------------------------------------------------------------------------------------

def _descriptor_platform(descriptor: dict) -> Platform | None:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    os_name, arch = platform.get("os"), platform.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    variant = platform.get("variant")
    return Platform(os_name.lower(), arch.lower(), variant.lower() if isinstance(variant, str) else "")


def index_descriptors(index_bytes: bytes) -> list[dict]:
    """The image-manifest descriptors of an OCI index or Docker manifest list, each checked for shape."""
    try:
        body = json.loads(index_bytes)
    except (ValueError, UnicodeDecodeError):
        raise FailedPrecondition("invalid index: not JSON") from None
    manifests = body.get("manifests") if isinstance(body, dict) else None
    if not isinstance(manifests, list):
        raise FailedPrecondition("invalid index: it has no \"manifests\" list")
    for entry in manifests:
        if not (isinstance(entry, dict) and isinstance(entry.get("digest"), str) and is_digest(entry["digest"])
                and isinstance(entry.get("size"), int) and isinstance(entry.get("mediaType"), str)):
            raise FailedPrecondition(f"invalid index: descriptor {entry!r} lacks a mediaType, digest or size")
    return manifests


def select_platform(index_bytes: bytes, platform: str | Platform, name: str = "the index") -> dict:
    """The descriptor of `platform`'s image in an index: the first exact match, as Docker picks.

    A request without a variant takes any variant, preferring the one implied (arm64 -> v8).
    """
    wanted = parse_platform(platform) if isinstance(platform, str) else platform
    target = normalized(wanted)
    exact, loose, available = [], [], []
    for descriptor in index_descriptors(index_bytes):
        offered = _descriptor_platform(descriptor)
        if offered is None or descriptor["mediaType"] not in IMAGE_MANIFEST_TYPES:
            continue  # attestations and nested indexes are not runnable images
        available.append(str(offered))
        candidate = normalized(offered)
        if (candidate.os, candidate.architecture) != (target.os, target.architecture):
            continue
        (exact if candidate.variant == target.variant else loose).append(descriptor)
    if exact:
        return exact[0]
    if loose and not wanted.variant:
        return loose[0]
    listing = ", ".join(dict.fromkeys(available)) or "none"
    raise NotFound(f"no {wanted} image in {name}: it has {listing}; pick one with --platform")


# --- the registry's error bodies ----------------------------------------------------------------------------


def registry_error_text(body: bytes) -> str:
    """"CODE: message" of each error in a distribution-spec error body; "" when the body is not one."""
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return ""
    if not isinstance(errors, list):
        return ""
    texts = []
    for error in errors:
        if isinstance(error, dict):
            code, message = str(error.get("code", "")), str(error.get("message", ""))
            texts.append(": ".join(p for p in (code, message) if p))
    return "; ".join(t for t in texts if t).replace("\n", " ")
