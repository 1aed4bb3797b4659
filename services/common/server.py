"""Server bootstrap shared by every service: unix socket, health, reflection, error mapping, logs, SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import faults
from services.common.config import Config, check_socket_path, unix_target
from services.common.grpc_errors import DomainErrorInterceptor

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

    def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Refuse new calls, let in-flight ones finish within `grace`, then remove the socket."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.on_stop is not None:
            self.on_stop()
        if self.socket is not None:
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
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=definition.name),
        interceptors=interceptors,
    )
    definition.register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (definition.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    socket: Path | None = None
    if is_unix_address(address):
        socket = Path(address.removeprefix("unix://").removeprefix("unix:"))
        with root_only_socket(socket):
            server.add_insecure_port(unix_target(socket))
    else:
        port = server.add_secure_port(address, tls.credentials())
        address = f"{address.rsplit(':', 1)[0]}:{port}"
    server.start()
    for name in ("", definition.full_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health_servicer, address, socket, definition.on_stop)


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


def write_pidfile(path: Path) -> None:
    """Write our pid atomically, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


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
    with single_instance(config.lock_path(service), service):
        running = create_server(build(config), address, tls=tls)
        write_pidfile(config.pid_path(service))
        log.info("serving %s on %s (root %s, run %s)", service, running.address, config.root, config.run)
        try:
            stop_requested.wait()
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
