"""An OCI distribution-spec client: manifests and blobs over HTTP(S), streamed, with bearer-token and basic auth."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator
from typing import NoReturn

import httpx

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.storage.registry_auth import Challenge, encode_auth, parse_www_authenticate, tls_context
from services.storage.registry_errors import (
    PermissionDenied,
    Unauthenticated,
    Unreachable,
    cause_chain,
    transport_reason,
)
from services.storage.registry_manifest import (
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    Manifest,
    check_digest,
    check_reference,
    check_repository,
    digest_of,
    display_name,
    is_digest,
    manifest_media_type,
    registry_error_text,
)

READ_CHUNK = 1 << 20
ERROR_BODY_LIMIT = 64 << 10
Progress = Callable[[int], None]


def _pull(repo: str) -> tuple[str, ...]:
    return (f"repository:{repo}:pull",)


def _push(repo: str, mount_from: str | None = None) -> tuple[str, ...]:
    return (f"repository:{repo}:pull,push",) + (_pull(mount_from) if mount_from and mount_from != repo else ())


class RegistryClient:
    """One registry host; thread-safe for parallel blob transfers; close() (or `with`) releases its connections."""

    def __init__(self, host: str, *, credentials: tuple[str, str] | None = None, scheme: str = "https",
                 ca_file: str | None = None, timeout: float = 30.0):
        if scheme not in ("http", "https"):
            raise InvalidArgument(f"invalid registry scheme {scheme!r}: expected http or https")
        self.host = host
        self.base = f"{scheme}://{host}"
        self.timeout = timeout
        self._credentials = credentials
        self._tokens: dict[tuple[str, ...], str] = {}
        self._basic = False
        # trust_env off: no netrc, proxy or SSL_CERT_FILE variables change what the storage service talks to.
        self._http = httpx.Client(verify=tls_context(ca_file), timeout=httpx.Timeout(timeout), trust_env=False,
                                  headers={"User-Agent": "mydocker"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- requests, auth and errors ----------------------------------------------------------------------------

    def _url(self, repo: str, *parts: str) -> str:
        return "/".join((self.base, "v2", check_repository(repo), *parts))

    def _auth_header(self, scope: tuple[str, ...]) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None:
            return {"Authorization": f"Bearer {token}"}
        if self._basic and self._credentials:
            return {"Authorization": f"Basic {encode_auth(*self._credentials)}"}
        return {}

    def _send(self, method: str, url: str | httpx.URL, scope: tuple[str, ...], repo: str | None, *,
              headers: dict[str, str] | None = None, content=None, follow: bool = False) -> httpx.Response:
        """An open streamed response; a 401 is answered once from its challenge, then the request is sent again."""
        replayable = content is None or isinstance(content, bytes)
        headers = dict(headers or {})
        if isinstance(content, bytes):
            headers["Content-Length"] = str(len(content))
        for attempt in (1, 2):
            # bytes go in as a one-shot iterator: httpx's Request/Response cycles would otherwise keep every
            # chunk of a chunked upload alive until the garbage collector runs.
            body = iter((content,)) if isinstance(content, bytes) else content
            auth = self._auth_header(scope)
            request = self._http.build_request(method, url, headers={**headers, **auth}, content=body)
            response = self._http.send(request, stream=True, follow_redirects=follow)
            if response.status_code != 401 or attempt == 2 or not replayable:
                return response
            challenges = parse_www_authenticate(", ".join(response.headers.get_list("www-authenticate")))
            response.close()
            self._authorize(challenges, scope, repo, sent_basic=auth.get("Authorization", "").startswith("Basic "))
        raise AssertionError("unreachable")

    def _authorize(self, challenges: list[Challenge], scope: tuple[str, ...], repo: str | None,
                   sent_basic: bool = False) -> None:
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            self._tokens[scope] = self._fetch_token(bearer, scope, repo)
        elif any(c.scheme == "basic" for c in challenges):
            # Refused only when this very request carried them: parallel requests sent before another
            # thread switched to Basic get their 401 too, and must simply be sent again.
            if not self._credentials or sent_basic:
                raise Unauthenticated(self._unauthorized_text(repo))
            self._basic = True
        else:
            offered = ", ".join(c.scheme for c in challenges) or "none"
            raise Unauthenticated(f"unauthorized: {self.host} asks for an authentication scheme mydocker does not "
                                  f"speak ({offered}); only Bearer and Basic are supported")

    def _fetch_token(self, challenge: Challenge, scope: tuple[str, ...], repo: str | None) -> str:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise FailedPrecondition(f"registry {self.host} sent a Bearer challenge without a usable realm ({realm!r})")
        query = [("service", challenge.params["service"])] if "service" in challenge.params else []
        query += [("scope", s) for s in scope or challenge.params.get("scope", "").split()]
        if self._credentials and self.base.startswith("https:") and not realm.startswith("https:"):
            raise FailedPrecondition(f"registry {self.host} sends us to a plain-HTTP token server ({realm}): "
                                     "refusing to send the credentials unencrypted")
        headers = {"Authorization": f"Basic {encode_auth(*self._credentials)}"} if self._credentials else {}
        response = self._http.get(realm, params=query, headers=headers, follow_redirects=True)
        if response.status_code in (401, 403):
            raise Unauthenticated(self._unauthorized_text(repo))
        if response.status_code != 200:
            text = registry_error_text(response.content) or response.reason_phrase
            raise FailedPrecondition(f"token server {realm} of registry {self.host} answered "
                                     f"{response.status_code}: {text}")
        try:
            body = response.json()
        except ValueError:
            body = None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise FailedPrecondition(f"token server {realm} of registry {self.host} sent no token")
        return token

    def _unauthorized_text(self, repo: str | None) -> str:
        what = "refused the credentials" if self._credentials else "requires credentials"
        target = f" for {repo}" if repo else ""
        return f"unauthorized: {self.host} {what}{target}: run mydocker login {self.host}"

    def _fail(self, response: httpx.Response, doing: str, repo: str | None,
              not_found: str | None = None) -> NoReturn:
        """Raise the domain error for an unexpected answer; the registry's own error text is kept."""
        status = response.status_code
        body = bytearray()
        with contextlib.suppress(httpx.HTTPError):
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_LIMIT:
                    break
        response.close()
        text = registry_error_text(bytes(body))
        if status == 401:
            raise Unauthenticated(self._unauthorized_text(repo))
        if status == 403:
            raise PermissionDenied(f"denied: {self.host} refused to let us {doing}" + (f" ({text})" if text else ""))
        if status == 404 and not_found:
            raise NotFound(not_found)
        detail = text or response.reason_phrase or "no reason given"
        raise FailedPrecondition(f"registry {self.host} answered {status} to {doing}: {detail}")

    @contextlib.contextmanager
    def _transport(self, doing: str) -> Iterator[None]:
        """Turn httpx's transport errors into one line naming the registry and what we were doing."""
        try:
            yield
        except httpx.TimeoutException:
            raise Unreachable(f"registry {self.host} did not answer within {self.timeout:g}s while {doing}") from None
        except httpx.ConnectError as exc:
            reason = transport_reason(exc)
            if any(isinstance(inner, ssl.SSLError) for inner in cause_chain(exc)):
                raise Unreachable(
                    f"TLS failure talking to registry {self.host}: {reason}: put its CA certificate in "
                    f"$MYDOCKER_ROOT/certs.d/{self.host}/ca.crt, or if it only speaks plain HTTP list it in "
                    f"$MYDOCKER_ROOT/registries.json's insecure_registries") from None
            raise Unreachable(f"cannot reach registry {self.host}: {reason}") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise FailedPrecondition(f"registry {self.host} sent an unusable URL while {doing}: {exc}") from None
        except httpx.TransportError as exc:
            raise Unreachable(f"connection to registry {self.host} failed while {doing}: "
                              f"{transport_reason(exc)}") from None

    # --- the API ------------------------------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/ with authentication: proves the host is a registry and accepts our credentials."""
        with self._transport("checking the API"):
            response = self._send("GET", f"{self.base}/v2/", (), None)
            try:
                if response.status_code != 200:
                    self._fail(response, "GET /v2/", None, not_found=f"{self.host} is not a registry: "
                                                                     "GET /v2/ answered 404")
            finally:
                response.close()

    def get_manifest(self, repo: str, reference: str, accept: tuple[str, ...] = MANIFEST_TYPES) -> Manifest:
        """The manifest or index `reference` names, its digest checked (against the reference when it is one)."""
        name = display_name(self.host, repo, check_reference(reference))
        with self._transport(f"fetching manifest {name}"):
            response = self._send("GET", self._url(repo, "manifests", reference), _pull(repo), repo,
                                  headers={"Accept": ", ".join(accept)})
            try:
                if response.status_code != 200:
                    self._fail(response, f"fetch manifest {name}", repo,
                               not_found=f"manifest unknown: {name} does not exist")
                data = self._read_limited(response, MAX_MANIFEST_BYTES, f"manifest {name}")
            finally:
                response.close()
        media_type = manifest_media_type(response.headers.get("content-type"), data, name)
        expected = reference if is_digest(reference) else response.headers.get("docker-content-digest", "")
        algorithm = expected.split(":", 1)[0] if is_digest(expected) else "sha256"
        digest = digest_of(data, algorithm)
        if is_digest(expected) and digest != expected:
            raise FailedPrecondition(f"digest mismatch: {name} came back as {digest}, not {expected}: "
                                     "the registry or something in between altered it")
        return Manifest(media_type, digest, data)

    def _read_limited(self, response: httpx.Response, limit: int, what: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FailedPrecondition(f"{what} is {int(declared)} bytes, over the {limit >> 20} MiB manifest limit")
        data = bytearray()
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > limit:
                raise FailedPrecondition(f"{what} is over the {limit >> 20} MiB manifest limit")
        return bytes(data)

    def blob_exists(self, repo: str, digest: str) -> int | None:
        """The blob's size when the repository has it, else None (HEAD)."""
        with self._transport(f"looking for blob {self.host}/{repo}@{digest}"):
            response = self._send("HEAD", self._url(repo, "blobs", check_digest(digest)), _pull(repo), repo,
                                  follow=True)
            try:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    self._fail(response, f"look for blob {digest} in {repo}", repo)
                length = response.headers.get("content-length", "")
                if not length.isdigit():
                    raise FailedPrecondition(f"registry {self.host} gave no size for blob {repo}@{digest}")
                return int(length)
            finally:
                response.close()

    def get_blob(self, repo: str, digest: str, write: Callable[[bytes], None], offset: int = 0,
                 progress: Progress | None = None) -> None:
        """Stream the blob from byte `offset` on into `write`; progress gets the bytes held so far (offset included).

        The caller checks the digest of what it wrote. An offset at or past the blob's end (416) writes nothing.
        """
        name = f"{self.host}/{repo}@{check_digest(digest)}"
        headers = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        with self._transport(f"downloading blob {name}"):
            response = self._send("GET", self._url(repo, "blobs", digest), _pull(repo), repo, headers=headers,
                                  follow=True)
            try:
                if response.status_code == 416 and offset > 0:
                    return
                if response.status_code not in (200, 206):
                    self._fail(response, f"download blob {digest} of {repo}", repo,
                               not_found=f"blob unknown: {name} does not exist")
                skip = offset if response.status_code == 200 else 0  # the server ignored the range
                if response.status_code == 206:
                    content_range = response.headers.get("content-range", "")
                    if not content_range.startswith(f"bytes {offset}-"):
                        raise FailedPrecondition(f"registry {self.host} answered the range request for {name} "
                                                 f"from byte {offset} with {content_range!r}")
                held = offset
                for chunk in response.iter_bytes(READ_CHUNK):
                    if skip:
                        cut = min(skip, len(chunk))
                        chunk, skip = chunk[cut:], skip - cut
                        if not chunk:
                            continue
                    write(chunk)
                    held += len(chunk)
                    if progress:
                        progress(held)
            finally:
                response.close()

    def upload_blob(self, repo: str, digest: str, size: int, read: Callable[[int], bytes], *,
                    chunk_size: int | None = None, mount_from: str | None = None,
                    progress: Progress | None = None) -> None:
        """Put a blob `size` bytes long, read from `read(n)` (at most n bytes a call), into `repo`.

        Nothing is sent when the repository has it; a mount from `mount_from` is tried first; then one streamed
        PUT, or PATCHes of `chunk_size` bytes and a closing PUT.
        """
        name = f"{self.host}/{repo}@{check_digest(digest)}"
        if chunk_size is not None and chunk_size <= 0:
            raise InvalidArgument(f"invalid chunk size {chunk_size}: it must be positive")
        if self.blob_exists(repo, digest) is not None:
            return
        scope = _push(repo, mount_from and check_repository(mount_from))
        params = {"mount": digest, "from": mount_from} if mount_from else {}
        with self._transport(f"uploading blob {name}"):
            url = httpx.URL(self._url(repo, "blobs", "uploads", "")).copy_merge_params(params)
            with contextlib.closing(self._send("POST", url, scope, repo)) as response:
                if response.status_code == 201 and mount_from:
                    return
                if response.status_code != 202:
                    self._fail(response, f"start an upload of blob {digest} to {repo}", repo)
                location = self._location(response)
            if chunk_size is None:
                response = self._send("PUT", location.copy_merge_params({"digest": digest}), scope, repo,
                                      headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(size)},
                                      content=self._body(read, size, digest, progress))
            else:
                response = self._patch_chunks(location, scope, repo, read, size, digest, chunk_size, progress)
            with contextlib.closing(response):
                if response.status_code != 201:
                    self._fail(response, f"upload blob {digest} to {repo}", repo)
            stored = response.headers.get("docker-content-digest")
            if stored and stored != digest:
                raise FailedPrecondition(f"registry {self.host} stored blob {name} as {stored}")

    def _patch_chunks(self, location: httpx.URL, scope: tuple[str, ...], repo: str, read: Callable[[int], bytes],
                      size: int, digest: str, chunk_size: int, progress: Progress | None) -> httpx.Response:
        """PATCH each chunk to the upload session (which moves with every Location), then the closing PUT."""
        sent = 0
        while sent < size:
            data = b"".join(self._body(read, min(chunk_size, size - sent), digest, None, sent))
            response = self._send("PATCH", location, scope, repo, content=data, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{sent}-{sent + len(data) - 1}",
                "Content-Length": str(len(data)),
            })
            with contextlib.closing(response):
                if response.status_code != 202:
                    self._fail(response, f"upload bytes {sent}-{sent + len(data) - 1} of blob {digest} to {repo}",
                               repo)
                location = self._location(response)
            sent += len(data)
            if progress:
                progress(sent)
        return self._send("PUT", location.copy_merge_params({"digest": digest}), scope, repo, content=b"",
                          headers={"Content-Length": "0"})

    @staticmethod
    def _body(read: Callable[[int], bytes], size: int, digest: str, progress: Progress | None,
              start: int = 0) -> Iterator[bytes]:
        """Exactly `size` bytes of `read`, in pieces of at most READ_CHUNK."""
        sent = 0
        while sent < size:
            data = read(min(READ_CHUNK, size - sent))
            if not data or len(data) > size - sent:
                got = "ended" if not data else "went on"
                raise FailedPrecondition(f"the content of blob {digest} {got} after {start + sent} bytes, "
                                         f"not {start + size} as declared")
            sent += len(data)
            if progress:
                progress(start + sent)
            yield data

    def _location(self, response: httpx.Response) -> httpx.URL:
        location = response.headers.get("location")
        if not location:
            raise FailedPrecondition(f"registry {self.host} answered {response.request.method} "
                                     f"{response.request.url.path} without a Location for the upload")
        return response.url.join(location)

    def put_manifest(self, repo: str, reference: str, media_type: str, data: bytes) -> str:
        """Store a manifest or index under a tag (or its digest); returns its digest."""
        name = display_name(self.host, repo, check_reference(reference))
        if len(data) > MAX_MANIFEST_BYTES:
            raise InvalidArgument(f"manifest for {name} is {len(data)} bytes, over the "
                                  f"{MAX_MANIFEST_BYTES >> 20} MiB limit registries accept")
        digest = digest_of(data)
        if is_digest(reference) and reference != digest_of(data, reference.split(":", 1)[0]):
            raise InvalidArgument(f"digest mismatch: the manifest to push as {name} has digest {digest}")
        with self._transport(f"pushing manifest {name}"):
            response = self._send("PUT", self._url(repo, "manifests", reference), _push(repo), repo,
                                  headers={"Content-Type": media_type}, content=data)
            with contextlib.closing(response):
                if response.status_code != 201:
                    self._fail(response, f"push manifest {name}", repo)
        stored = response.headers.get("docker-content-digest")
        if stored and stored != digest:
            raise FailedPrecondition(f"registry {self.host} stored manifest {name} as {stored}, not {digest}")
        return digest
