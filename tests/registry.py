"""Test registries on 127.0.0.1: Debian's docker-registry (plain, or HTTPS + htpasswd) and a bearer-token proxy."""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.netutil import free_port

COPY_CHUNK = 1 << 16


def require_tool(command: str, package: str) -> str:
    """The tool's path; a missing tool fails the test with what to install (never a skip)."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is missing: apt-get install {package} (listed in scripts/debian-packages*.txt)")
    return path


@dataclass
class RunningRegistry:
    """A registry a test started: where it listens and what a client needs to talk to it."""

    host: str
    directory: Path
    scheme: str = "http"
    ca_file: str | None = None
    users: dict[str, str] = field(default_factory=dict)

    def credentials(self) -> tuple[str, str] | None:
        return next(iter(self.users.items()), None)


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run([require_tool("openssl", "openssl"), *args], cwd=directory, check=True, capture_output=True,
                   timeout=60)


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key): a throwaway CA and a server certificate for IP 127.0.0.1."""
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=mydocker-test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-addext", "basicConstraints=critical,CA:FALSE", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-keyout", "server.key", "-out", "server.crt")
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def _wait_until_serving(process: subprocess.Popen, port: int, log: Path, deadline: float = 20.0) -> None:
    """Until something answers HTTP(S) on the port; a registry that exits early fails with its log."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"docker-registry did not listen on 127.0.0.1:{port} within {deadline}s: {log.read_text()[-2000:]}")


def _answers_v2(registry: RunningRegistry, deadline: float = 20.0) -> None:
    """Until GET /v2/ gives any HTTP status (401 counts: the auth variant answers that)."""
    port = int(registry.host.rsplit(":", 1)[1])
    end = time.monotonic() + deadline
    while True:
        if registry.scheme == "https":
            context = ssl.create_default_context(cafile=registry.ca_file)
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)
        finally:
            conn.close()


@contextlib.contextmanager
def docker_registry(*, tls: bool = False, users: dict[str, str] | None = None) -> Iterator[RunningRegistry]:
    """docker-registry serving a fresh temp store on 127.0.0.1:<free port>; stopped by pid, its dir removed."""
    binary = require_tool("docker-registry", "docker-registry")
    directory = Path(tempfile.mkdtemp(prefix="mdk-registry-", dir="/tmp"))
    process = None
    try:
        port = free_port()
        registry = RunningRegistry(host=f"127.0.0.1:{port}", directory=directory, users=dict(users or {}))
        lines = ["version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", f"    rootdirectory: {directory / 'store'}",
                 "  delete:", "    enabled: true",
                 "http:", f"  addr: 127.0.0.1:{port}", f"  secret: {secrets.token_hex(16)}"]
        if tls:
            ca, cert, key = make_certificates(directory)
            registry.scheme, registry.ca_file = "https", str(ca)
            lines += ["  tls:", f"    certificate: {cert}", f"    key: {key}"]
        if users:
            htpasswd = require_tool("htpasswd", "apache2-utils")
            entries = []
            for user, password in users.items():
                # docker-registry reads bcrypt entries only: -B; -i takes the password on stdin.
                entries.append(subprocess.run([htpasswd, "-niB", user], input=password, capture_output=True,
                                              text=True, check=True, timeout=60).stdout.strip())
            (directory / "htpasswd").write_text("\n".join(entries) + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: mydocker-test", f"    path: {directory / 'htpasswd'}"]
        config = directory / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        log = directory / "registry.log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen([binary, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        _wait_until_serving(process, port, log)
        _answers_v2(registry)
        yield registry
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


# --- bearer-token proxy -------------------------------------------------------------------------------------

_REPO_PATH = re.compile(r"^/v2/(?P<repo>.+?)/(?:manifests|blobs|tags)(?:/|$)")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass
class TokenProxy:
    """The proxy's address, its users, the scopes of the tokens it issued, and what it saw."""

    host: str
    backend: RunningRegistry
    users: dict[str, str]
    token_field: str = "token"
    ignore_range: bool = False  # forward GETs without their Range header, as servers without range support do
    anonymous: bool = False  # forward every request without asking for a token: a counting pass-through
    tokens: dict[str, set[str]] = field(default_factory=dict)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request, in order
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header) of every ranged request
    lock: threading.Lock = field(default_factory=threading.Lock)

    def credentials(self) -> tuple[str, str]:
        return next(iter(self.users.items()))

    def blob_gets(self, digest: str) -> int:
        """How many GETs of the blob (any repository) the proxy received: a download each."""
        with self.lock:
            return sum(1 for method, path in self.requests if method == "GET" and path.endswith(f"/blobs/{digest}"))


def _needed_scopes(method: str, path: str, query: dict[str, list[str]]) -> set[str]:
    match = _REPO_PATH.match(path)
    if not match:
        return set()
    repo = match["repo"]
    needed = {f"repository:{repo}:{'pull' if method in ('GET', 'HEAD') else 'push'}"}
    if "from" in query:
        needed.add(f"repository:{query['from'][0]}:pull")
    return needed


def _granted(scopes: list[str]) -> set[str]:
    """repository:x:pull,push -> {repository:x:pull, repository:x:push}."""
    granted = set()
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        granted.update(f"{kind}:{name}:{action}" for action in actions.split(",") if action)
    return granted


def _chunked_body(stream) -> Iterator[bytes]:
    while True:
        size = int(stream.readline().split(b";", 1)[0].strip(), 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        yield stream.read(size)
        stream.readline()


def _handler(proxy: TokenProxy) -> type[http.server.BaseHTTPRequestHandler]:
    backend_port = int(proxy.backend.host.rsplit(":", 1)[1])

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _token(self, query: dict[str, list[str]]) -> None:
            with proxy.lock:
                proxy.token_requests.append(query)
            auth = self.headers.get("Authorization", "")
            pair = base64.b64decode(auth[6:]).decode() if auth.startswith("Basic ") else ""
            user, _, password = pair.partition(":")
            if not user or proxy.users.get(user) != password:
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
                return self._reply(401, body, {"Content-Type": "application/json"})
            token = secrets.token_hex(16)
            with proxy.lock:
                proxy.tokens[token] = _granted(query.get("scope", []))
            self._reply(200, f'{{"{proxy.token_field}": "{token}"}}'.encode(), {"Content-Type": "application/json"})

        def _handle(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            with proxy.lock:
                proxy.requests.append((self.command, url.path))
                if self.headers.get("Range"):
                    proxy.ranges.append((url.path, self.headers["Range"]))
            if url.path == "/token":
                return self._token(query)
            length = int(self.headers.get("Content-Length") or 0)
            if proxy.anonymous:
                return self._forward(length)
            needed = _needed_scopes(self.command, url.path, query)
            auth = self.headers.get("Authorization", "")
            with proxy.lock:
                granted = proxy.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
            if granted is None or not needed <= granted:
                if self.command in ("PUT", "PATCH", "POST"):
                    self._drain(length)
                scope = " ".join(sorted(s.rsplit(":", 1)[0] + (":pull" if s.endswith("pull") else ":pull,push")
                                        for s in needed))
                challenge = f'Bearer realm="http://{proxy.host}/token",service="test"'
                challenge += f',scope="{scope}"' if scope else ""
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                return self._reply(401, body, {"WWW-Authenticate": challenge, "Content-Type": "application/json"})
            self._forward(length)

        def _drain(self, length: int) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                for _ in _chunked_body(self.rfile):
                    pass
            else:
                self.rfile.read(length)

        def _forward(self, length: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                for name, value in self.headers.items():
                    if name.lower() in ("authorization", "range" if proxy.ignore_range else ""):
                        continue
                    if name.lower() not in _HOP_BY_HOP:
                        conn.putheader(name, value)  # Host stays ours: the registry's Locations point here
                if chunked:
                    conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                if chunked:
                    for piece in _chunked_body(self.rfile):
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                    conn.send(b"0\r\n\r\n")
                else:
                    remaining = length
                    while remaining:
                        piece = self.rfile.read(min(COPY_CHUNK, remaining))
                        if not piece:
                            break
                        conn.send(piece)
                        remaining -= len(piece)
                response = conn.getresponse()
                self.send_response(response.status, response.reason)
                declared = response.getheader("Content-Length")
                for name, value in response.getheaders():
                    if name.lower() in _HOP_BY_HOP:
                        continue
                    if name.lower() == "location":
                        value = value.replace(f"127.0.0.1:{backend_port}", proxy.host)
                    self.send_header(name, value)
                if declared is None and self.command != "HEAD":
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                while piece := response.read(COPY_CHUNK):
                    self.wfile.write(piece)
            finally:
                conn.close()

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


@contextlib.contextmanager
def token_proxy(backend: RunningRegistry, users: dict[str, str], token_field: str = "token",
                anonymous: bool = False) -> Iterator[TokenProxy]:
    """A bearer-token registry front on 127.0.0.1:<ephemeral>: /token checks basic credentials, the rest is
    forwarded to `backend` (a plain registry) only with a token whose scopes cover the request (`anonymous`:
    forwarded as is). Every request is noted in `requests`."""
    proxy = TokenProxy(host="", backend=backend, users=dict(users), token_field=token_field, anonymous=anonymous)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.host = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="token-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def counting_proxy(backend: RunningRegistry) -> Iterator[TokenProxy]:
    """A plain pass-through to `backend` on 127.0.0.1:<ephemeral> that notes every request (see blob_gets)."""
    with token_proxy(backend, {}, anonymous=True) as proxy:
        yield proxy
