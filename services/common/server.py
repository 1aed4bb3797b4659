"""Server bootstrap shared by every service: unix socket, health, reflection, error mapping, logs, SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import faults
from services.common.config import Config, check_socket_path, unix_target
from services.common.grpc_errors import DomainErrorInterceptor
from services.common.limits import MAX_MESSAGE_BYTES
from services.common.runfiles import WATCH_SECONDS, Identity, RunFiles, SocketKeeper, identity_of, write_pidfile

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0
MAX_WORKERS = 32


@dataclass
class ServiceDefinition:
    """What a service contributes to the shared bootstrap."""

    # Short name: "state", "storage" or "executor".
    name: str
    # Fully qualified gRPC service name, e.g. "mydocker.state.v1.StateService".
    full_name: str
    # Registers the servicer on the server; called once per server built.
    register: Callable[[grpc.Server], None]
    # Releases what the servicer holds besides the server (e.g. the executor's shim launcher), after the last call.
    on_stop: Callable[[], None] | None = None


@dataclass
class RunningServer:
    """A started server plus the handles needed to stop it cleanly."""

    server: grpc.Server
    health: health.HealthServicer
    address: str
    socket: Path | None
    on_stop: Callable[[], None] | None = None
    # On a unix socket: binds it again when someone deletes or replaces it (check_socket).
    keeper: SocketKeeper | None = None
    # Servers a rebind replaced, still finishing their calls in flight, each with its shutdown event.
    draining: list[tuple[grpc.Server, threading.Event]] = field(default_factory=list)

    def keep_socket(
        self, service: str, full_name: str, build: Callable[[], tuple[grpc.Server, health.HealthServicer]], bound: Identity | None
    ) -> None:
        """Let check_socket() serve on a new socket through a new server from `build` (grpc adds no port once started)."""

        def rebind() -> Identity:
            server, health_servicer = build()
            try:
                identity = bind_unix(server, self.socket)
            except BaseException:
                server.stop(None)
                raise
            server.start()
            mark_serving(health_servicer, full_name)
            old, old_health = self.server, self.health
            self.server, self.health = server, health_servicer
            old_health.enter_graceful_shutdown()
            # No new connection can reach the old server: its calls in flight (a WaitContainer, an
            # attached stream) run to their end however long they take, and its clients' next calls
            # reconnect to the new one. stop() cuts them after its grace, as it does the new server's.
            self.draining = [(server, done) for server, done in self.draining if not done.is_set()]
            self.draining.append((old, old.stop(threading.TIMEOUT_MAX)))
            return identity

        assert self.socket is not None
        self.keeper = SocketKeeper(service, self.socket, bound, rebind)

    def check_socket(self) -> bool:
        """Serve on a new socket if ours was deleted or replaced (see SocketKeeper); True when it did. Cheap: one lstat."""
        return self.keeper is not None and self.keeper.check()

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Refuse new calls, let in-flight ones finish within `grace`, then remove the socket if it is still ours."""
        self.health.enter_graceful_shutdown()
        stopped = [self.server.stop(grace), *(server.stop(grace) for server, _ in self.draining)]
        for done in stopped:
            done.wait()
        if self.on_stop is not None:
            self.on_stop()
        # A socket another live server took over since (see SocketKeeper) stays theirs.
        if self.socket is not None and (self.keeper is None or identity_of(self.socket) == self.keeper.bound):
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()


def prepare_unix_socket(socket: Path) -> None:
    """Create the parent dir (root only) and remove a stale socket left by a dead server."""
    check_socket_path(socket)
    socket.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(socket.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        socket.unlink()


@contextlib.contextmanager
def root_only_socket(socket: Path) -> Iterator[None]:
    """Around the bind of a unix socket: a clean path before, mode 0600 after.

    The umask closes the window between bind() and chmod() in which others could connect.
    """
    prepare_unix_socket(socket)
    old_umask = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old_umask)
    os.chmod(socket, 0o600)


# Private names a server binds before its socket is renamed into place, unique within the process.
_bind_names = itertools.count(1)


def bind_unix(server: grpc.Server, socket: Path) -> Identity | None:
    """Bind `server` to a new root-only socket that atomically replaces whatever is at `socket`; its identity.

    grpc binds a private name first, renamed into place after: grpc removes the path it bound when
    its server stops, and an old server stopping after a rebind must not take the new socket along.
    """
    check_socket_path(socket)
    temp = socket.with_name(f".{socket.stem}.{next(_bind_names)}")
    with root_only_socket(temp):
        server.add_insecure_port(unix_target(temp))
    try:
        os.rename(temp, socket)
    except OSError:
        temp.unlink(missing_ok=True)
        raise
    return identity_of(socket)


def mark_serving(health_servicer: health.HealthServicer, full_name: str) -> None:
    for name in ("", full_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


@dataclass(frozen=True)
class MutualTls:
    """PEM files of a TCP listener: its certificate and key, and the CA every client certificate must chain to."""

    cert: Path
    key: Path
    client_ca: Path

    def credentials(self) -> grpc.ServerCredentials:
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            client_ca = self.client_ca.read_bytes()
        except OSError as err:
            raise SystemExit(f"mydocker: cannot read a TLS file: {err.filename}: {err.strerror}") from None
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=True)


def is_unix_address(address: str) -> bool:
    return address.startswith("unix:")


def create_server(
    definition: ServiceDefinition, address: str, max_workers: int = MAX_WORKERS, tls: MutualTls | None = None
) -> RunningServer:
    """Build and start a server on `address` ("unix:/abs/path", or "host:port" with mutual TLS) with health and reflection.

    A service can start containers as root: TCP without client certificates would hand that to the network.
    """
    if not is_unix_address(address) and tls is None:
        raise SystemExit(
            f"mydocker-{definition.name}: --listen {address} needs mutual TLS: give --tls-cert, --tls-key and "
            "--tls-client-ca, or use the default root-only unix socket"
        )
    interceptors: list[grpc.ServerInterceptor] = [DomainErrorInterceptor()]
    # Only when MYDOCKER_FAULT names this service (crash tests): otherwise no interceptor, no cost.
    fault = faults.interceptor_for(definition.name, definition.full_name)
    if fault is not None:
        interceptors.append(fault)

    def build() -> tuple[grpc.Server, health.HealthServicer]:
        """The service with health and reflection on a new server: one at start, one more per socket bound again."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=definition.name),
            interceptors=interceptors,
            options=(("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),),
        )
        definition.register(server)
        health_servicer = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (definition.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server, health_servicer

    server, health_servicer = build()
    socket: Path | None = None
    if is_unix_address(address):
        socket = Path(address.removeprefix("unix://").removeprefix("unix:"))
        bound = bind_unix(server, socket)
    else:
        port = server.add_secure_port(address, tls.credentials())
        address = f"{address.rsplit(':', 1)[0]}:{port}"
    server.start()
    mark_serving(health_servicer, definition.full_name)
    running = RunningServer(server, health_servicer, address, socket, definition.on_stop)
    if socket is not None:
        running.keep_socket(definition.name, definition.full_name, build, bound)
    return running


@contextlib.contextmanager
def single_instance(lock_path: Path, service: str) -> Iterator[int]:
    """Hold an exclusive lock for the process lifetime, so two instances never share a socket or database.

    Yields the lock's fd, which a process that forks must close in its children.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"mydocker-{service}: another {service} service holds {lock_path}: stop it first") from None
        yield fd
    finally:
        os.close(fd)


def setup_logging(log_file: Path, service: str) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {service}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


# As containerd does for itself and its shims: a container using up memory is killed, never the
# services or shims that record its exit. Containers set their own score (0 by default) in init.
SERVICE_OOM_SCORE_ADJ = -999


def protect_from_oom_killer() -> None:
    """Lower our OOM score (inherited by the shim launcher and shims) where the host lets us.

    Lowering needs CAP_SYS_RESOURCE; a sandbox may have taken it from even root's bounding set, and
    then the services run at the score they were started with, which is logged.
    """
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(str(SERVICE_OOM_SCORE_ADJ))
    except PermissionError:
        log.warning("cannot lower our OOM score to %d (no CAP_SYS_RESOURCE): left as it is", SERVICE_OOM_SCORE_ADJ)


def parse_args(service: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"mydocker-{service}", description=f"mydocker {service} service")
    parser.add_argument("--root", help="state root (default: $MYDOCKER_ROOT or /var/lib/mydocker)")
    parser.add_argument("--run", help="runtime root for sockets and pids (default: $MYDOCKER_RUN or /run/mydocker)")
    parser.add_argument(
        "--listen",
        help="address to serve on: unix:/path (default: <run>/<service>.sock), or host:port for TCP, "
        "which requires mutual TLS (--tls-cert, --tls-key, --tls-client-ca)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate of a TCP listener")
    parser.add_argument("--tls-key", help="PEM private key of a TCP listener")
    parser.add_argument("--tls-client-ca", help="PEM CA certificate(s) that client certificates must chain to")
    parser.add_argument("--log-file", help="log file (default: <root>/log/<service>.log)")
    return parser.parse_args(argv)


def serve(service: str, build: Callable[[Config], ServiceDefinition], argv: list[str] | None = None) -> int:
    """Run one service until SIGTERM or SIGINT; `build` makes its servicer from the configuration."""
    args = parse_args(service, argv)
    config = Config.from_env(root=args.root, run=args.run)
    setup_logging(Path(args.log_file) if args.log_file else config.log_path(service), service)
    address = args.listen or f"unix:{config.socket_path(service)}"
    tls_files = (args.tls_cert, args.tls_key, args.tls_client_ca)
    if any(tls_files) and not all(tls_files):
        raise SystemExit(f"mydocker-{service}: give all of --tls-cert, --tls-key and --tls-client-ca, or none")
    tls = MutualTls(*(Path(path) for path in tls_files)) if all(tls_files) else None

    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())

    config.run.mkdir(parents=True, exist_ok=True)
    os.chmod(config.run, 0o700)
    protect_from_oom_killer()
    with single_instance(config.lock_path(service), service) as lock_fd:
        running = create_server(build(config), address, tls=tls)
        write_pidfile(config.pid_path(service))
        run_files = RunFiles(service, config.pid_path(service), config.lock_path(service), lock_fd)
        log.info("serving %s on %s (root %s, run %s)", service, running.address, config.root, config.run)
        try:
            # A socket, pidfile or lock someone deleted is made again within WATCH_SECONDS.
            while not stop_requested.wait(WATCH_SECONDS):
                running.check_socket()
                run_files.check()
            log.info("stopping: finishing in-flight calls within %.0fs", GRACE_SECONDS)
            running.stop()
        finally:
            with contextlib.suppress(FileNotFoundError):
                config.pid_path(service).unlink()
        log.info("stopped")
    return 0


def main_for(service: str, build: Callable[[Config], ServiceDefinition]) -> None:
    """Entry point body of `python -m services.<service>`."""
    sys.exit(serve(service, build))
