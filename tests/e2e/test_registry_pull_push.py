"""pull, push, login and logout end to end through ./mydocker, against registries each test starts on 127.0.0.1.

The registries are Debian's docker-registry (tests/registry.py: plain HTTP, or HTTPS with htpasswd), behind
the test's bearer-token proxy or its counting pass-through where a test must see the requests (a blob GET is a
download: "fetched once" and "not fetched again" are counted there). skopeo is the independent client: it
inspects and copies back what mydocker pushed, and pushes what mydocker pulls. A container's files are
compared as tests/interop.py lists them: LISTING run inside, against umoci's own unpack.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.config import Config
from services.common.ctl import REPO
from tests.conftest import ServiceTracker
from tests.e2e.conftest import Host, one_line_error, scripts_up
from tests.imagetools import run, sha256, skopeo_copy, skopeo_inspect, write_tar
from tests.interop import assert_same_tree, mydocker_tree, store_snapshot, umoci_with_busybox
from tests.netutil import free_port
from tests.registry import RunningRegistry, TokenProxy, counting_proxy, docker_registry, make_certificates, token_proxy

pytestmark = pytest.mark.root

ALICE = ("alice", "wonderland")
BOB = ("bob", "builder")
NO_TLS = "--tls-verify=false"  # skopeo's switch for plain HTTP (and, on the HTTPS registry, for our test CA)


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[RunningRegistry]:
    """A plain-HTTP docker-registry of this test alone (a tampered blob must not reach another test)."""
    with docker_registry() as started:
        yield started


@pytest.fixture
def counted(registry: RunningRegistry) -> Iterator[TokenProxy]:
    """`registry` behind a pass-through that notes every request."""
    with counting_proxy(registry) as proxy:
        yield proxy


@pytest.fixture
def work() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mdk-regtest-", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def image_of(host: Host, name: str) -> dict:
    return json.loads(host.mydocker("image", "inspect", name).stdout)[0]


def blobs_of(image: dict) -> list[str]:
    """The config's digest (the image id) and every layer blob's."""
    return [image["id"], *(layer["digest"] for layer in image["layers"])]


def short(digest: str) -> str:
    """The 12 hex digits the progress lines show."""
    return digest.removeprefix("sha256:")[:12]


def pushed_digest(host: Host, name: str) -> str:
    result = host.mydocker("push", name)
    # The progress lines come first; the digest line is the last.
    match = re.fullmatch(rf"{re.escape(name)}: digest: (sha256:[0-9a-f]{{64}})", result.stdout.splitlines()[-1])
    assert match, result.stdout
    return match[1]


def manifest_gets(proxy: TokenProxy) -> int:
    with proxy.lock:
        return sum(1 for method, path in proxy.requests if method == "GET" and "/manifests/" in path)


def commit(host: Host, image: str, name: str, script: str) -> str:
    """Run `script` in a container of `image`, commit it as `name`, remove the container; returns its output."""
    builder = f"mdk-reg-{uuid.uuid4().hex[:8]}"
    output = host.mydocker("run", "--name", builder, image, "sh", "-c", script).stdout
    host.mydocker("commit", builder, name)
    host.mydocker("rm", builder)
    return output


def blob_path(registry: RunningRegistry, digest: str) -> Path:
    """Where docker-registry's filesystem driver keeps a blob's bytes."""
    hex_digest = digest.removeprefix("sha256:")
    return registry.directory / "store/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


def restart_storage(host: Host, config: Config, tracker: ServiceTracker) -> None:
    down = subprocess.run([str(REPO / "scripts/down"), "storage"], env=host.env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert down.returncode == 0, down.stderr
    up = scripts_up(host.env)
    tracker.note(config)
    assert up.returncode == 0, up.stdout + up.stderr


def login(host: Host, server: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return host.mydocker("login", server, "-u", user, "--password-stdin", stdin=password + "\n", check=False)


# -- 1. plain HTTP: push, proven by skopeo, pulled back --------------------------------------------


def test_push_is_what_skopeo_reads_and_pull_brings_it_back_once(host: Host, counted: TokenProxy) -> None:
    name = f"{counted.host}/team/app:v1"
    secret = uuid.uuid4().hex
    commit(host, "busybox", "app", f"echo {secret} > /hello.txt && rm /bin/cpio")
    host.mydocker("tag", "app", name)
    built = image_of(host, name)
    assert len(built["layers"]) == 2

    pushed = host.mydocker("push", name)
    digest = pushed.stdout.splitlines()[-1].removeprefix(f"{name}: digest: ")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest) and pushed.stdout.endswith(f"{name}: digest: {digest}\n")
    for layer in built["layers"]:
        assert f"{short(layer['digest'])}: Complete" in pushed.stdout
    assert image_of(host, name)["repo_digests"] == [f"{counted.host}/team/app@{digest}"]

    # skopeo reads the same manifest, layers and config, and copies the whole image (checking every digest).
    raw = run("skopeo", "inspect", "--raw", NO_TLS, f"docker://{name}")
    assert sha256(raw.rstrip("\n").encode()) == digest
    assert json.loads(raw)["config"]["digest"] == built["id"]
    inspected = skopeo_inspect(f"docker://{name}", NO_TLS)
    assert inspected["Digest"] == digest
    assert inspected["Layers"] == [layer["digest"] for layer in built["layers"]]
    assert inspected["Architecture"] == "amd64" and inspected["Os"] == "linux"
    config = skopeo_inspect(f"docker://{name}", NO_TLS, "--config")
    assert config["rootfs"]["diff_ids"] == [layer["diff_id"] for layer in built["layers"]]
    with tempfile.TemporaryDirectory(prefix="mdk-oci-", dir="/tmp") as target:
        skopeo_copy(f"docker://{name}", f"oci:{target}:v1", "--src-tls-verify=false")
        index = json.loads((Path(target) / "index.json").read_text())
        manifest = json.loads((Path(target) / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
        assert manifest["config"]["digest"] == built["id"]

    host.mydocker("rmi", "app", name, "busybox")
    assert host.mydocker("images", "-q").stdout == ""
    assert not [d for d in blobs_of(built) if (host.root / "blobs/sha256" / d[7:]).exists()]

    fetched = {blob: counted.blob_gets(blob) for blob in blobs_of(built)}  # skopeo's, so far
    pulled = host.mydocker("pull", name)
    assert pulled.stdout.endswith(f"Digest: {digest}\n{name}\n")
    for layer in built["layers"]:
        assert f"{short(layer['digest'])}: Complete" in pulled.stdout
    assert {d: counted.blob_gets(d) - fetched[d] for d in fetched} == dict.fromkeys(fetched, 1)
    ran = host.mydocker("run", "--rm", name, "sh", "-c", "cat /hello.txt; ls /bin/cpio 2>&1; ls /bin/cat")
    assert ran.stdout == f"{secret}\nls: /bin/cpio: No such file or directory\n/bin/cat\n"
    again = image_of(host, name)
    assert again["id"] == built["id"]
    assert [layer["diff_id"] for layer in again["layers"]] == [layer["diff_id"] for layer in built["layers"]]
    assert again["repo_digests"] == [f"{counted.host}/team/app@{digest}"]

    # Pulled again: the manifest is asked for, no blob is downloaded.
    manifests = manifest_gets(counted)
    repeat = host.mydocker("pull", name)
    assert repeat.stdout.endswith(f"Digest: {digest}\n{name}\n")
    for layer in built["layers"]:
        assert f"{short(layer['digest'])}: Already exists" in repeat.stdout
    assert "Downloading" not in repeat.stdout
    assert manifest_gets(counted) > manifests
    assert {d: counted.blob_gets(d) - fetched[d] for d in fetched} == dict.fromkeys(fetched, 1)


# -- 2. an image skopeo pushed (umoci's layers: whiteouts, an opaque directory), gzip and zstd -------


def umoci_archive(work: Path, busybox_tar: Path) -> tuple[Path, str, list[str]]:
    """tests/interop's umoci image as an oci-archive: (the file, umoci unpack's LISTING, its five diff ids)."""
    image = umoci_with_busybox(work, busybox_tar)
    archive = work / "umoci.tar"
    skopeo_copy(image.ref, f"oci-archive:{archive}")
    assert len(image.diff_ids) == 5
    return archive, image.tree, image.diff_ids


def test_images_skopeo_pushed_gzip_and_zstd_pull_and_run_their_exact_files(
    host: Host, registry: RunningRegistry, work: Path, mydocker_config: Config, service_tracker: ServiceTracker
) -> None:
    busybox_tar = shutil.copy(host.root / "image" / "busybox.tar", work / "busybox.tar")
    archive, tree, umoci_diff_ids = umoci_archive(work, Path(busybox_tar))
    layer_types = {"zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
                   "gzip": "application/vnd.oci.image.layer.v1.tar+gzip"}
    # zstd first: skopeo reuses blobs a registry already has, which would keep gzip layers under the zstd tag.
    layer_blobs = {}
    for kind in ("zstd", "gzip"):
        options = ("--dest-compress-format", "zstd") if kind == "zstd" else ()
        skopeo_copy(f"oci-archive:{archive}", f"docker://{registry.host}/team/umoci:{kind}", NO_TLS, *options)
        raw = json.loads(run("skopeo", "inspect", "--raw", NO_TLS, f"docker://{registry.host}/team/umoci:{kind}"))
        assert {layer["mediaType"] for layer in raw["layers"]} == {layer_types[kind]}, raw
        layer_blobs[kind] = {layer["digest"][7:] for layer in raw["layers"]}

    before = store_snapshot(host.root)
    ids = set()
    for kind in ("zstd", "gzip"):
        name = f"{registry.host}/team/umoci:{kind}"
        assert host.mydocker("pull", "-q", name).stdout == f"{name}\n"
        image = image_of(host, name)
        ids.add(image["id"])
        assert [layer["diff_id"] for layer in image["layers"]] == umoci_diff_ids
        assert host.mydocker("run", "--rm", name, "sh", "-c", "echo $GREETING").stdout == "hi\n"
        assert_same_tree(tree, mydocker_tree(host, name), f"mydocker run of the {kind} image skopeo pushed")
    # One config, so one image: its record keeps the blobs of the first pull (zstd), the gzip copy's go.
    assert len(ids) == 1
    assert {layer["media_type"] for layer in image_of(host, f"{registry.host}/team/umoci:gzip")["layers"]} == {
        layer_types["zstd"]}
    host.mydocker("rmi", f"{registry.host}/team/umoci:zstd", f"{registry.host}/team/umoci:gzip")
    # The gzip copy's blobs, named by no record, may wait for the storage service's next start, which drops them.
    left = store_snapshot(host.root)
    assert set(left["blobs/sha256"]) - set(before["blobs/sha256"]) <= layer_blobs["gzip"]
    assert {**left, "blobs/sha256": before["blobs/sha256"]} == before
    restart_storage(host, mydocker_config, service_tracker)
    assert store_snapshot(host.root) == before


# -- 3. a multi-platform index -----------------------------------------------------------------------


def two_platform_layout(work: Path, busybox_tar: Path) -> tuple[Path, bytes, dict[str, str]]:
    """An OCI layout whose tag "multi" is an index of an amd64 and an arm64 image (busybox and /arch, the
    architecture set with umoci); (layout, the index's bytes, config digest by architecture)."""
    layout = work / "layout"
    run("umoci", "init", "--layout", layout)
    configs = {}
    descriptors = []
    for arch in ("amd64", "arm64"):
        target = f"{layout}:{arch}"
        run("umoci", "new", "--image", target)
        run("umoci", "raw", "add-layer", "--image", target, busybox_tar)
        marker = write_tar(work / f"{arch}.tar", [("arch", f"{arch}\n".encode())])
        run("umoci", "raw", "add-layer", "--image", target, marker)
        run("umoci", "config", "--image", target, "--architecture", arch, "--config.cmd", "/bin/sh")
        index = json.loads((layout / "index.json").read_text())
        entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == arch)
        manifest = json.loads((layout / "blobs/sha256" / entry["digest"][7:]).read_text())
        configs[arch] = manifest["config"]["digest"]
        descriptors.append({"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"],
                            "platform": {"architecture": arch, "os": "linux"}})
    data = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": descriptors}).encode()
    (layout / "blobs/sha256" / sha256(data)[7:]).write_bytes(data)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(data),
                               "size": len(data), "annotations": {"org.opencontainers.image.ref.name": "multi"}})
    (layout / "index.json").write_text(json.dumps(index))
    return layout, data, configs


def test_an_index_gives_this_hosts_platform_or_the_one_asked_for(
    host: Host, registry: RunningRegistry, work: Path
) -> None:
    busybox_tar = shutil.copy(host.root / "image" / "busybox.tar", work / "busybox.tar")
    layout, index, configs = two_platform_layout(work, Path(busybox_tar))
    name = f"{registry.host}/team/multi:latest"
    skopeo_copy(f"oci:{layout}:multi", f"docker://{name}", "--all", NO_TLS)
    assert run("skopeo", "inspect", "--raw", NO_TLS, f"docker://{name}").rstrip("\n").encode() == index

    # As Docker records it: the name's digest is the index's, whichever platform was taken.
    assert host.mydocker("pull", name).stdout.endswith(f"Digest: {sha256(index)}\n{name}\n")
    amd64 = image_of(host, name)
    assert (amd64["id"], amd64["architecture"], amd64["os"]) == (configs["amd64"], "amd64", "linux")
    assert amd64["repo_digests"] == [f"{registry.host}/team/multi@{sha256(index)}"]
    assert host.mydocker("run", "--rm", name, "cat", "/arch").stdout == "amd64\n"

    assert host.mydocker("pull", "-q", "--platform", "linux/arm64", name).stdout == f"{name}\n"
    arm64 = image_of(host, name)
    assert (arm64["id"], arm64["architecture"]) == (configs["arm64"], "arm64")
    # The amd64 image stays, untagged (dangling, as in Docker).
    assert image_of(host, configs["amd64"])["architecture"] == "amd64"

    before = store_snapshot(host.root)
    images = host.mydocker("images").stdout
    line = one_line_error(host.mydocker("pull", "-q", "--platform", "linux/s390x", name, check=False))
    assert line == (f"mydocker: no linux/s390x image in {name}: it has linux/amd64, linux/arm64; "
                    "pick one with --platform")
    assert store_snapshot(host.root) == before
    assert host.mydocker("images").stdout == images


# -- 4. HTTPS and basic auth ---------------------------------------------------------------------------


def test_https_with_basic_auth_login_push_pull_logout(host: Host, work: Path) -> None:
    with docker_registry(tls=True, users=dict([ALICE])) as secure:
        server = secure.host
        name = f"{server}/team/app:v1"
        host.mydocker("tag", "busybox", name)
        certs = host.root / "certs.d" / server
        # No CA for it: plain HTTP, this host's default for 127.0.0.0/8, meets a TLS server.
        line = one_line_error(host.mydocker("pull", "-q", name, check=False))
        assert line.startswith(f"mydocker: registry {server} answered 400 to fetch manifest {name}")
        # Another CA: the certificate is refused, and the line says where the right CA goes.
        other, _, _ = make_certificates(Path(tempfile.mkdtemp(prefix="ca-", dir=work)))
        certs.mkdir(parents=True)
        shutil.copy(other, certs / "ca.crt")
        line = one_line_error(host.mydocker("pull", "-q", name, check=False))
        assert line.startswith(f"mydocker: TLS failure talking to registry {server}: certificate verify failed")
        assert f"certs.d/{server}/ca.crt" in line

        shutil.copy(secure.ca_file, certs / "ca.crt")
        needs_login = f"mydocker: unauthorized: {server} requires credentials for team/app: run mydocker login {server}"
        assert one_line_error(host.mydocker("pull", "-q", name, check=False)) == needs_login
        assert one_line_error(host.mydocker("push", "-q", name, check=False)) == needs_login

        auth_file = host.root / "auth.json"
        assert one_line_error(login(host, server, "alice", "wrong")) == (
            f"mydocker: unauthorized: {server} refused the credentials: run mydocker login {server}")
        assert not auth_file.exists()
        assert login(host, server, *ALICE).stdout == f"Login Succeeded ({server})\n"
        assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
        entry = json.loads(auth_file.read_text())["auths"][server]
        assert base64.b64decode(entry["auth"]).decode() == ":".join(ALICE)

        digest = pushed_digest(host, name)
        inspected = skopeo_inspect(f"docker://{name}", NO_TLS, "--creds", ":".join(ALICE))
        assert inspected["Digest"] == digest
        host.mydocker("rmi", name, "busybox")
        assert host.mydocker("pull", "-q", name).stdout == f"{name}\n"
        assert image_of(host, name)["repo_digests"] == [f"{server}/team/app@{digest}"]
        assert host.mydocker("run", "--rm", name, "echo", "over TLS").stdout == "over TLS\n"

        assert host.mydocker("logout", server).stdout == f"Removed login credentials for {server}\n"
        assert server not in json.loads(auth_file.read_text())["auths"]
        assert one_line_error(host.mydocker("pull", "-q", name, check=False)) == needs_login
        assert one_line_error(host.mydocker("logout", server, check=False)) == f"mydocker: not logged in to {server}"
        # -p works as well as --password-stdin.
        assert host.mydocker("login", server, "-u", ALICE[0], "-p", ALICE[1]).stdout == f"Login Succeeded ({server})\n"
        host.mydocker("logout", server)


# -- 5. bearer tokens ----------------------------------------------------------------------------------


def test_bearer_token_login_push_pull(host: Host, registry: RunningRegistry) -> None:
    with token_proxy(registry, dict([BOB])) as proxy:
        server = proxy.host
        name = f"{server}/team/tokens:v1"
        host.mydocker("tag", "busybox", name)
        needs_login = (f"mydocker: unauthorized: {server} requires credentials for team/tokens: "
                       f"run mydocker login {server}")
        assert one_line_error(host.mydocker("push", "-q", name, check=False)) == needs_login
        assert one_line_error(host.mydocker("pull", "-q", name, check=False)) == needs_login
        assert one_line_error(login(host, server, "bob", "wrong")) == (
            f"mydocker: unauthorized: {server} refused the credentials: run mydocker login {server}")
        assert not (host.root / "auth.json").exists()

        assert login(host, server, *BOB).stdout == f"Login Succeeded ({server})\n"
        digest = pushed_digest(host, name)
        scopes = {scope for request in proxy.token_requests for scope in request.get("scope", [])}
        assert "repository:team/tokens:pull,push" in scopes
        host.mydocker("rmi", name, "busybox")
        assert host.mydocker("pull", name).stdout.endswith(f"Digest: {digest}\n{name}\n")
        assert "repository:team/tokens:pull" in {s for r in proxy.token_requests for s in r.get("scope", [])}
        assert host.mydocker("run", "--rm", name, "echo", "with a token").stdout == "with a token\n"
        host.mydocker("logout", server)
        host.mydocker("rmi", name)
        assert one_line_error(host.mydocker("pull", "-q", name, check=False)) == needs_login


# -- 6. failures leave nothing ---------------------------------------------------------------------------


def test_a_tampered_blob_or_an_unreachable_registry_fail_in_one_line_and_store_nothing(
    host: Host, registry: RunningRegistry
) -> None:
    name = f"{registry.host}/team/tamper:v1"
    made = commit(host, "busybox", name, "head -c 300000 /dev/urandom > /big && sha256sum /big")
    image = image_of(host, name)
    pushed_digest(host, name)
    layer = image["layers"][-1]
    stored = blob_path(registry, layer["digest"])
    original = stored.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF  # same size: only the digest can tell
    stored.write_bytes(bytes(damaged))
    host.mydocker("rmi", name)  # busybox stays: the bottom layer is there already

    before = store_snapshot(host.root)
    line = one_line_error(host.mydocker("pull", "-q", name, check=False))
    assert line == (f"mydocker: blob {layer['digest'][:19]}… is corrupt: received {len(damaged)} bytes with digest "
                    f"{sha256(bytes(damaged))[:19]}…: the source sent other data than it announced")
    after = store_snapshot(host.root)
    # No image record, tag file or unpacked layer; no partial download of the bad blob. The config, fetched
    # and verified before the layers, stays in the content store: the next pull of the image uses it.
    assert after == {**before, "blobs/sha256": sorted([*before["blobs/sha256"], image["id"][7:]])}
    # Without -q the progress lines go to stdout, as docker pull's, and stderr is the one line.
    noisy = host.mydocker("pull", name, check=False)
    assert noisy.returncode == 1 and "Downloading" in noisy.stdout
    assert noisy.stderr.splitlines() == [line]
    assert store_snapshot(host.root) == after

    stored.write_bytes(original)
    assert host.mydocker("pull", "-q", name).stdout == f"{name}\n"
    assert host.mydocker("run", "--rm", name, "sha256sum", "/big").stdout == made

    port = free_port()
    gone = f"127.0.0.1:{port}/team/app:v1"
    unreachable = f"mydocker: cannot reach registry 127.0.0.1:{port}: connection refused"
    before = store_snapshot(host.root)
    assert one_line_error(host.mydocker("pull", "-q", gone, check=False)) == unreachable
    host.mydocker("tag", "busybox", gone)
    assert one_line_error(host.mydocker("push", "-q", gone, check=False)) == unreachable
    assert one_line_error(login(host, f"127.0.0.1:{port}", *ALICE)) == unreachable
    host.mydocker("rmi", gone)
    assert store_snapshot(host.root) == before
    assert not (host.root / "auth.json").exists()


# -- 7. two pulls at once ------------------------------------------------------------------------------


def test_two_concurrent_pulls_fetch_each_blob_once(host: Host, counted: TokenProxy) -> None:
    name = f"{counted.host}/team/big:v1"
    commit(host, "busybox", "mdk-big-1", "head -c 6000000 /dev/urandom > /one")
    commit(host, "mdk-big-1", "mdk-big-2", "head -c 6000000 /dev/urandom > /two")
    host.mydocker("tag", "mdk-big-2", name)
    image = image_of(host, name)
    assert len(image["layers"]) == 3
    digest = pushed_digest(host, name)
    host.mydocker("rmi", "mdk-big-1", "mdk-big-2", name, "busybox")
    assert host.mydocker("images", "-q").stdout == ""

    pulls = [
        subprocess.Popen([str(REPO / "mydocker"), "pull", name], env=host.env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        results = [pull.communicate(timeout=120) for pull in pulls]
    finally:
        for pull in pulls:
            if pull.poll() is None:
                pull.kill()
                pull.wait()
    for pull, (stdout, stderr) in zip(pulls, results):
        assert pull.returncode == 0, stderr
        assert stdout.endswith(f"Digest: {digest}\n{name}\n")
    assert {d: counted.blob_gets(d) for d in blobs_of(image)} == dict.fromkeys(blobs_of(image), 1)
    gets = [path for method, path in counted.requests if method == "GET"]
    manifests = [i for i, path in enumerate(gets) if path.endswith("/manifests/v1")]
    layers = [i for i, path in enumerate(gets) if "/blobs/" in path]
    assert len(manifests) == 2 and manifests[1] < layers[-1], f"the pulls did not overlap: {gets}"
    assert image_of(host, name)["id"] == image["id"]
    listed = host.mydocker("run", "--rm", name, "sh", "-c", "wc -c < /one; wc -c < /two").stdout.split()
    assert listed == ["6000000", "6000000"]
    assert len(os.listdir(host.root / "imagedb/sha256")) == 1


def test_a_pull_cut_short_resumes_where_its_download_stopped(host: Host, counted: TokenProxy, registry: RunningRegistry) -> None:
    """A partial blob a killed pull left in ROOT/blobs/tmp is continued with a ranged GET, not fetched again."""
    name = f"{counted.host}/team/resume:v1"
    commit(host, "busybox", "resume", "head -c 3000000 /dev/urandom > /big && sha256sum /big > /big.sum")
    host.mydocker("tag", "resume", name)
    host.mydocker("push", "-q", name)
    top = image_of(host, name)["layers"][-1]
    data = blob_path(registry, top["digest"]).read_bytes()
    assert len(data) > 1_000_000
    host.mydocker("rmi", "resume", name)
    # What a pull killed halfway through this blob leaves: its first half, verified as it was written.
    half = len(data) // 2
    partial = host.root / "blobs" / "tmp" / f"{top['digest'][7:]}.partial"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data[:half])
    host.mydocker("pull", "-q", name)
    assert (f"/v2/team/resume/blobs/{top['digest']}", f"bytes={half}-") in counted.ranges
    assert not partial.exists()
    assert host.mydocker("run", "--rm", name, "sha256sum", "-c", "/big.sum").stdout == "/big: OK\n"
    host.mydocker("rmi", name)
