"""The registry client against Debian's docker-registry: plain HTTP, HTTPS + basic auth, and a bearer-token proxy."""

from __future__ import annotations

import gzip
import io
import json
import random
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.storage.registry_client import RegistryClient, Unauthenticated, Unreachable
from services.storage.registry_manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    MAX_MANIFEST_BYTES,
    digest_of,
    select_platform,
)
from tests.registry import RunningRegistry, TokenProxy, docker_registry, require_tool, token_proxy

ALICE = ("alice", "wonderland")
BOB = ("bob", "builder")


@dataclass
class Image:
    """A tiny image built by hand: one gzip layer, a config, a manifest over them."""

    layer: bytes
    config: bytes
    manifest: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    def blobs(self) -> list[bytes]:
        return [self.layer, self.config]


def make_image(arch: str = "amd64", text: str = "hello", docker: bool = False, size: int = 200_000) -> Image:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (("hello.txt", text.encode()), ("noise.bin", random.Random(text).randbytes(size))):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": arch, "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(tar_bytes.getvalue())]},
    }, sort_keys=True).encode()
    manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    config_type = "application/vnd.docker.container.image.v1+json" if docker else "application/vnd.oci.image.config.v1+json"
    layer_type = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if docker
                  else "application/vnd.oci.image.layer.v1.tar+gzip")
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": digest_of(layer), "size": len(layer)}],
        **({} if docker else {"annotations": {"note": "aaaa"}}),
    }, indent=2).encode()
    return Image(layer, config, manifest, manifest_type)


def push(client: RegistryClient, repo: str, image: Image, reference: str, chunk_size: int | None = None) -> str:
    for blob in image.blobs():
        client.upload_blob(repo, digest_of(blob), len(blob), io.BytesIO(blob).read, chunk_size=chunk_size)
    return client.put_manifest(repo, reference, image.media_type, image.manifest)


def fetch(client: RegistryClient, repo: str, digest: str, offset: int = 0) -> bytes:
    out = bytearray()
    client.get_blob(repo, digest, out.extend, offset=offset)
    return bytes(out)


def skopeo(*args: str) -> dict:
    result = subprocess.run([require_tool("skopeo", "skopeo"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.strip() else {}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


@pytest.fixture(scope="module")
def plain() -> Iterator[RunningRegistry]:
    with docker_registry() as registry:
        yield registry


@pytest.fixture(scope="module")
def secure() -> Iterator[RunningRegistry]:
    with docker_registry(tls=True, users=dict([ALICE])) as registry:
        yield registry


@pytest.fixture(scope="module")
def bearer(plain: RunningRegistry) -> Iterator[TokenProxy]:
    with token_proxy(plain, dict([BOB])) as proxy:
        yield proxy


@pytest.fixture
def client(plain: RunningRegistry) -> Iterator[RegistryClient]:
    with RegistryClient(plain.host, scheme="http") as registry_client:
        yield registry_client


def test_round_trip_monolithic_and_chunked_proven_by_skopeo(client: RegistryClient, plain: RunningRegistry) -> None:
    image = make_image()
    sent: list[int] = []
    client.upload_blob("team/app", digest_of(image.layer), len(image.layer), io.BytesIO(image.layer).read,
                       chunk_size=64 << 10, progress=sent.append)
    assert sent[-1] == len(image.layer) and len(sent) == -(-len(image.layer) // (64 << 10))
    client.upload_blob("team/app", digest_of(image.config), len(image.config), io.BytesIO(image.config).read)
    assert client.put_manifest("team/app", "v1", image.media_type, image.manifest) == image.digest

    manifest = client.get_manifest("team/app", "v1")
    assert (manifest.media_type, manifest.digest, manifest.data) == (OCI_MANIFEST, image.digest, image.manifest)
    assert client.get_manifest("team/app", image.digest).data == image.manifest
    for blob in image.blobs():
        assert client.blob_exists("team/app", digest_of(blob)) == len(blob)
        assert fetch(client, "team/app", digest_of(blob)) == blob

    inspected = skopeo("inspect", "--tls-verify=false", f"docker://{plain.host}/team/app:v1")
    assert inspected["Digest"] == image.digest
    assert inspected["Layers"] == [digest_of(image.layer)]
    assert inspected["Architecture"] == "amd64"
    # skopeo copy checks every blob's digest on the way: the registry holds a whole, valid image.
    with tempfile.TemporaryDirectory(prefix="mdk-oci-", dir="/tmp") as target:
        skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{plain.host}/team/app:v1", f"oci:{target}:v1")
        assert (Path(target) / "blobs" / "sha256" / image.digest.split(":")[1]).read_bytes() == image.manifest


def test_docker_schema2_manifest_and_list(client: RegistryClient, plain: RunningRegistry) -> None:
    image = make_image(docker=True, text="docker")
    push(client, "team/docker", image, "v2", chunk_size=50_000)
    listing = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": image.digest, "size": len(image.manifest),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    client.put_manifest("team/docker", "list", DOCKER_MANIFEST_LIST, listing)
    assert client.get_manifest("team/docker", "v2").media_type == DOCKER_MANIFEST
    fetched = client.get_manifest("team/docker", "list")
    assert (fetched.media_type, fetched.is_index) == (DOCKER_MANIFEST_LIST, True)
    assert select_platform(fetched.data, "linux/amd64")["digest"] == image.digest
    assert skopeo("inspect", "--tls-verify=false", f"docker://{plain.host}/team/docker:list")["Digest"] == digest_of(
        listing)


def test_index_with_two_platforms(client: RegistryClient, plain: RunningRegistry) -> None:
    images = {arch: make_image(arch, text=arch) for arch in ("amd64", "arm64")}
    descriptors = []
    for arch, image in images.items():
        push(client, "team/multi", image, image.digest)  # by digest: untagged, as buildx pushes them
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest),
                            "platform": {"architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64"
                                                                                  else {})}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}).encode()
    client.put_manifest("team/multi", "latest", OCI_INDEX, index)

    fetched = client.get_manifest("team/multi", "latest")
    assert (fetched.media_type, fetched.digest) == (OCI_INDEX, digest_of(index))
    chosen = select_platform(fetched.data, "linux/arm64")
    arm = client.get_manifest("team/multi", chosen["digest"])
    assert arm.data == images["arm64"].manifest
    config_digest = json.loads(arm.data)["config"]["digest"]
    assert json.loads(fetch(client, "team/multi", config_digest))["architecture"] == "arm64"
    with pytest.raises(NotFound, match="no linux/s390x image in .*: it has linux/amd64, linux/arm64/v8"):
        select_platform(fetched.data, "linux/s390x", f"{plain.host}/team/multi:latest")
    for arch in ("amd64", "arm64"):
        inspected = skopeo("inspect", "--tls-verify=false", "--override-arch", arch,
                           f"docker://{plain.host}/team/multi:latest")
        # skopeo picks the platform's image out of our index; Digest stays the index's own.
        assert inspected["Architecture"] == arch and inspected["Digest"] == digest_of(index)
        assert inspected["Layers"] == [digest_of(images[arch].layer)]


def test_mount_skip_and_fallback(client: RegistryClient) -> None:
    image = make_image(text="mount")
    push(client, "team/base", image, "v1")

    def must_not_read(size: int) -> bytes:
        raise AssertionError("the blob was uploaded although the registry had it")

    layer = digest_of(image.layer)
    client.upload_blob("team/derived", layer, len(image.layer), must_not_read, mount_from="team/base")
    assert client.blob_exists("team/derived", layer) == len(image.layer)
    client.upload_blob("team/derived", layer, len(image.layer), must_not_read)  # there already: skipped
    # A mount from a repository without the blob is answered 202: the client uploads instead.
    fresh = b"fresh blob" * 1000
    client.upload_blob("team/derived", digest_of(fresh), len(fresh), io.BytesIO(fresh).read, mount_from="team/none")
    assert fetch(client, "team/derived", digest_of(fresh)) == fresh


def test_small_and_empty_blobs(client: RegistryClient) -> None:
    for blob in (b"", b"{}"):
        for chunk_size in (None, 1):
            repo = f"team/small{len(blob)}-{chunk_size or 0}"
            client.upload_blob(repo, digest_of(blob), len(blob), io.BytesIO(blob).read, chunk_size=chunk_size)
            assert client.blob_exists(repo, digest_of(blob)) == len(blob)
            assert fetch(client, repo, digest_of(blob)) == blob


def test_resumed_download(client: RegistryClient, bearer: TokenProxy) -> None:
    image = make_image(text="resume")
    push(client, "team/resume", image, "v1")
    layer = digest_of(image.layer)
    assert len(image.layer) > 100_000  # incompressible noise: the offsets below fall inside the blob
    held: list[int] = []
    out = bytearray(image.layer[:12345])
    client.get_blob("team/resume", layer, out.extend, offset=len(out), progress=held.append)
    assert bytes(out) == image.layer and held[-1] == len(image.layer)
    assert fetch(client, "team/resume", layer, offset=len(image.layer)) == b""  # 416: nothing left
    # A server that ignores Range answers 200 with the whole blob: the prefix is skipped.
    bearer.ignore_range = True
    try:
        with RegistryClient(bearer.host, scheme="http", credentials=BOB) as via_proxy:
            assert fetch(via_proxy, "team/resume", layer, offset=100_000) == image.layer[100_000:]
    finally:
        bearer.ignore_range = False


def test_https_with_basic_auth(secure: RunningRegistry) -> None:
    with RegistryClient(secure.host, scheme="https", credentials=ALICE, ca_file=secure.ca_file) as client:
        client.ping()
        image = make_image(text="tls")
        push(client, "team/app", image, "v1", chunk_size=100_000)
        assert client.get_manifest("team/app", "v1").digest == image.digest
        assert fetch(client, "team/app", digest_of(image.layer), offset=7) == image.layer[7:]
    inspected = skopeo("inspect", "--tls-verify=false", "--creds", ":".join(ALICE),
                       f"docker://{secure.host}/team/app:v1")
    assert inspected["Digest"] == image.digest


def test_parallel_requests_share_basic_auth(secure: RunningRegistry) -> None:
    """Requests sent together all get the first 401: each is sent again with the credentials, none is refused."""
    for _ in range(5):  # a fresh client each time: the race is on the first requests
        with RegistryClient(secure.host, scheme="https", credentials=ALICE, ca_file=secure.ca_file) as client:
            with ThreadPoolExecutor(max_workers=4) as pool:
                found = list(pool.map(lambda i: client.blob_exists("team/app", digest_of(b"%d" % i)), range(8)))
            assert found == [None] * 8


def test_https_errors(secure: RunningRegistry, plain: RunningRegistry) -> None:
    with RegistryClient(plain.host, scheme="https") as client:  # a plain-HTTP registry spoken to in TLS
        with pytest.raises(Unreachable) as info:
            client.ping()
        assert one_line(info).startswith(f"TLS failure talking to registry {plain.host}: wrong version number")
    host = secure.host
    with RegistryClient(host, scheme="https", credentials=("alice", "wrong"), ca_file=secure.ca_file) as client:
        with pytest.raises(Unauthenticated) as info:
            client.get_manifest("team/app", "v1")
        assert one_line(info) == (f"unauthorized: {host} refused the credentials for team/app: "
                                  f"run mydocker login {host}")
        with pytest.raises(Unauthenticated, match="refused the credentials: run mydocker login"):
            client.ping()
    with RegistryClient(host, scheme="https", ca_file=secure.ca_file) as client:
        with pytest.raises(Unauthenticated) as info:
            client.blob_exists("team/app", digest_of(b"x"))
        assert one_line(info) == f"unauthorized: {host} requires credentials for team/app: run mydocker login {host}"
    with RegistryClient(host, scheme="https", credentials=ALICE) as client:  # the test CA is not trusted
        with pytest.raises(Unreachable) as info:
            client.ping()
        assert one_line(info).startswith(f"TLS failure talking to registry {host}: certificate verify failed")
        assert "insecure_registries" in str(info.value)
    with RegistryClient(host, scheme="http", credentials=ALICE) as client:
        with pytest.raises(FailedPrecondition) as info:
            client.ping()
        assert one_line(info).startswith(f"registry {host} answered 400 to GET /v2/")


def test_bearer_tokens(bearer: TokenProxy) -> None:
    with RegistryClient(bearer.host, scheme="http", credentials=BOB) as client:
        client.ping()
        image = make_image(text="bearer")
        push(client, "team/tokens", image, "v1", chunk_size=80_000)
        push(client, "team/tokens", image, "v1")  # blobs there: nothing re-sent; the manifest put again
        assert client.get_manifest("team/tokens", "v1").data == image.manifest
        fresh = b"mounted through the proxy"
        client.upload_blob("team/tokens", digest_of(fresh), len(fresh), io.BytesIO(fresh).read)
        client.upload_blob("team/other", digest_of(fresh), len(fresh), io.BytesIO(b"").read, mount_from="team/tokens")
        assert fetch(client, "team/other", digest_of(fresh)) == fresh
    scopes = [tuple(request.get("scope", [])) for request in bearer.token_requests]
    assert ("repository:team/tokens:pull,push",) in scopes
    assert ("repository:team/other:pull,push", "repository:team/tokens:pull") in scopes
    # One token per scope, cached: far fewer token requests than registry requests.
    assert len(scopes) == len(set(scopes))
    # Expired tokens (the server forgot them) are answered by a fresh one, once.
    with RegistryClient(bearer.host, scheme="http", credentials=BOB) as client:
        assert client.get_manifest("team/tokens", "v1").data == image.manifest
        with bearer.lock:
            bearer.tokens.clear()
        assert client.get_manifest("team/tokens", "v1").data == image.manifest


def test_bearer_access_token_field(plain: RunningRegistry) -> None:
    with token_proxy(plain, dict([BOB]), token_field="access_token") as proxy:
        with RegistryClient(proxy.host, scheme="http", credentials=BOB) as client:
            assert client.blob_exists("team/app", digest_of(b"absent")) is None


def test_bearer_errors(bearer: TokenProxy) -> None:
    host = bearer.host
    with RegistryClient(host, scheme="http", credentials=("bob", "wrong")) as client:
        with pytest.raises(Unauthenticated) as info:
            client.get_manifest("team/app", "v1")
        assert one_line(info) == f"unauthorized: {host} refused the credentials for team/app: run mydocker login {host}"
    with RegistryClient(host, scheme="http") as client:  # no credentials: the token server gives no token
        with pytest.raises(Unauthenticated) as info:
            client.ping()
        assert one_line(info) == f"unauthorized: {host} requires credentials: run mydocker login {host}"


def test_not_found_and_unreachable(client: RegistryClient, plain: RunningRegistry) -> None:
    with pytest.raises(NotFound) as info:
        client.get_manifest("team/app", "v9")
    assert one_line(info) == f"manifest unknown: {plain.host}/team/app:v9 does not exist"
    with pytest.raises(NotFound) as info:
        client.get_manifest("nobody/here", "latest")
    assert one_line(info) == f"manifest unknown: {plain.host}/nobody/here:latest does not exist"
    missing = digest_of(b"missing")
    with pytest.raises(NotFound) as info:
        fetch(client, "team/app", missing)
    assert one_line(info) == f"blob unknown: {plain.host}/team/app@{missing} does not exist"
    assert client.blob_exists("team/app", missing) is None
    port = closed_port()
    with RegistryClient(f"127.0.0.1:{port}", scheme="http") as gone:
        with pytest.raises(Unreachable) as info:
            gone.get_manifest("team/app", "v1")
        assert one_line(info) == f"cannot reach registry 127.0.0.1:{port}: connection refused"
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        with RegistryClient(host, scheme="http", timeout=0.3) as mute:
            with pytest.raises(Unreachable) as info:
                mute.blob_exists("team/app", missing)
            assert one_line(info) == (f"registry {host} did not answer within 0.3s while looking for blob "
                                      f"{host}/team/app@{missing}")


def test_refusals(client: RegistryClient, plain: RunningRegistry) -> None:
    image = make_image(text="refusals")
    with pytest.raises(FailedPrecondition) as info:  # the blobs are missing: the registry says which
        client.put_manifest("team/refused", "v1", image.media_type, image.manifest)
    assert one_line(info).startswith(f"registry {plain.host} answered 400 to push manifest "
                                     f"{plain.host}/team/refused:v1: MANIFEST_BLOB_UNKNOWN")
    with pytest.raises(InvalidArgument, match="over the 4 MiB limit"):
        client.put_manifest("team/refused", "v1", OCI_MANIFEST, b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        client.put_manifest("team/refused", digest_of(b"other"), image.media_type, image.manifest)
    blob = b"short source"
    with pytest.raises(FailedPrecondition, match="ended after 12 bytes, not 20 as declared"):
        client.upload_blob("team/refused", digest_of(blob), 20, io.BytesIO(blob).read)
    with pytest.raises(FailedPrecondition, match="DIGEST_INVALID"):
        client.upload_blob("team/refused", digest_of(b"something else"), len(blob), io.BytesIO(blob).read)
    assert client.blob_exists("team/refused", digest_of(blob)) is None


def test_manifest_digest_mismatch(client: RegistryClient, plain: RunningRegistry) -> None:
    image = make_image(text="tamper")
    push(client, "team/tamper", image, "v1")
    hex_digest = image.digest.split(":")[1]
    stored = plain.directory / "store/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    stored.write_bytes(image.manifest.replace(b'"aaaa"', b'"bbbb"'))  # bit rot in the registry's storage
    with pytest.raises(FailedPrecondition) as info:
        client.get_manifest("team/tamper", image.digest)
    tampered = digest_of(image.manifest.replace(b'"aaaa"', b'"bbbb"'))
    assert one_line(info) == (f"digest mismatch: {plain.host}/team/tamper@{image.digest} came back as {tampered}, "
                              f"not {image.digest}: the registry or something in between altered it")
    with pytest.raises(FailedPrecondition, match="digest mismatch: .*team/tamper:v1 came back as"):
        client.get_manifest("team/tamper", "v1")
