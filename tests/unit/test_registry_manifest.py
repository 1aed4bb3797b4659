"""Unit tests of the registry protocol's pure pieces: media types, digests, platform choice, error bodies."""

from __future__ import annotations

import json

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.reference import Platform
from services.storage.registry_manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    check_digest,
    check_reference,
    check_repository,
    digest_of,
    display_name,
    manifest_media_type,
    registry_error_text,
    select_platform,
)

DIGEST = "sha256:" + "a" * 64


def descriptor(digest_char: str, os_name: str | None, arch: str | None, variant: str | None = None,
               media_type: str = OCI_MANIFEST) -> dict:
    entry: dict = {"mediaType": media_type, "digest": "sha256:" + digest_char * 64, "size": 100}
    if os_name is not None:
        entry["platform"] = {"os": os_name, "architecture": arch}
        if variant is not None:
            entry["platform"]["variant"] = variant
    return entry


def index(*descriptors: dict) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(descriptors)}).encode()


def test_checks_and_names() -> None:
    assert check_digest(DIGEST) == DIGEST
    assert check_reference("v1.2_rc-3") == "v1.2_rc-3"
    assert check_repository("team/my-app/x__y") == "team/my-app/x__y"
    for bad in ("sha256:abc", "md5:" + "a" * 32, "SHA256:" + "a" * 64):
        with pytest.raises(InvalidArgument):
            check_digest(bad)
    for bad in ("Team/app", "app/", "/app", "a//b", "../x", "a?b"):
        with pytest.raises(InvalidArgument):
            check_repository(bad)
    for bad in (".tag", "-tag", "a" * 129, "t/g"):
        with pytest.raises(InvalidArgument):
            check_reference(bad)
    assert display_name("h:5000", "t/a", "v1") == "h:5000/t/a:v1"
    assert display_name("h:5000", "t/a", DIGEST) == f"h:5000/t/a@{DIGEST}"
    assert digest_of(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest_of(b"", "sha512").startswith("sha512:cf83e1357eefb8bd")


@pytest.mark.parametrize(("content_type", "body", "media_type"), [
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {}}, OCI_MANIFEST),
    (DOCKER_MANIFEST + "; charset=utf-8", {"schemaVersion": 2}, DOCKER_MANIFEST),
    ("application/json", {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST}, DOCKER_MANIFEST_LIST),
    (None, {"schemaVersion": 2, "manifests": []}, OCI_INDEX),
    ("text/plain", {"schemaVersion": 2, "config": {}, "layers": []}, OCI_MANIFEST),
])
def test_manifest_media_type(content_type: str | None, body: dict, media_type: str) -> None:
    assert manifest_media_type(content_type, json.dumps(body).encode(), "h/r:t") == media_type


def test_manifest_media_type_refuses_schema1_and_strangers() -> None:
    schema1 = json.dumps({"schemaVersion": 1, "name": "r", "fsLayers": []}).encode()
    for content_type in ("application/vnd.docker.distribution.manifest.v1+prettyjws", "application/json"):
        with pytest.raises(FailedPrecondition, match="h/r:t is a Docker schema 1 image"):
            manifest_media_type(content_type, schema1, "h/r:t")
    with pytest.raises(FailedPrecondition, match="media type 'application/vnd.oci.artifact"):
        manifest_media_type("application/vnd.oci.artifact.manifest.v1+json",
                            b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}', "x")
    with pytest.raises(FailedPrecondition, match="is not JSON"):
        manifest_media_type(OCI_MANIFEST, b"\x00garbage", "x")


def test_select_platform() -> None:
    data = index(
        descriptor("1", "linux", "amd64"),
        descriptor("2", "linux", "arm64", "v8"),
        descriptor("3", "linux", "arm", "v6"),
        descriptor("4", "linux", "arm", "v7"),
        descriptor("5", "unknown", "unknown"),
        descriptor("6", None, None),
    )
    assert select_platform(data, "linux/amd64")["digest"].endswith("1" * 64)
    assert select_platform(data, "linux/arm64")["digest"].endswith("2" * 64)
    assert select_platform(data, "linux/aarch64/v8")["digest"].endswith("2" * 64)
    assert select_platform(data, "linux/arm")["digest"].endswith("4" * 64)
    assert select_platform(data, Platform("linux", "arm", "v6"))["digest"].endswith("3" * 64)
    with pytest.raises(NotFound) as info:
        select_platform(data, "linux/riscv64", "h/r:t")
    assert str(info.value) == ("no linux/riscv64 image in h/r:t: it has linux/amd64, linux/arm64/v8, linux/arm/v6, "
                               "linux/arm/v7, unknown/unknown; pick one with --platform")


def test_select_platform_variants_and_kinds() -> None:
    # A request without a variant takes any; an exact variant is preferred when there is one.
    data = index(descriptor("1", "linux", "amd64", "v3"), descriptor("2", "linux", "amd64"))
    assert select_platform(data, "linux/amd64")["digest"].endswith("2" * 64)
    assert select_platform(index(descriptor("1", "linux", "amd64", "v3")), "linux/amd64")["digest"].endswith("1" * 64)
    with pytest.raises(NotFound):
        select_platform(index(descriptor("1", "linux", "arm", "v7")), "linux/arm/v6")
    # Nested indexes are not images: skipped.
    with pytest.raises(NotFound, match="it has none"):
        select_platform(index(descriptor("1", "linux", "amd64", media_type=OCI_INDEX)), "linux/amd64")
    docker_list = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [
        descriptor("7", "linux", "amd64", media_type=DOCKER_MANIFEST)]}).encode()
    assert select_platform(docker_list, "linux/amd64")["mediaType"] == DOCKER_MANIFEST


def test_select_platform_refuses_broken_indexes() -> None:
    with pytest.raises(FailedPrecondition, match="no \"manifests\" list"):
        select_platform(b'{"schemaVersion": 2}', "linux/amd64")
    with pytest.raises(FailedPrecondition, match="lacks a mediaType, digest or size"):
        select_platform(index({"mediaType": OCI_MANIFEST, "digest": "sha256:x", "size": 1}), "linux/amd64")


def test_registry_error_text() -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_INVALID", "message": "manifest invalid", "detail": {}},
                                  {"code": "DENIED", "message": "no\nway"}]}).encode()
    assert registry_error_text(body) == "MANIFEST_INVALID: manifest invalid; DENIED: no way"
    assert registry_error_text(b"<html>502</html>") == ""
    assert registry_error_text(b'{"errors": "x"}') == ""
    assert registry_error_text(b"[]") == ""
