"""A worker of the warm CLI server (cli/forkserver.py): a forked copy of the CLI that runs one client's command line."""

from __future__ import annotations

import contextlib
import os
import socket
import sys

from cli import forkclient as proto

# A worker's stdio, directory and environment arrive with its request.
REQUEST_FDS = 4


def send(conn: socket.socket, message: tuple) -> None:
    """Best effort: a client that is gone cannot be told anything."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, ConnectionRefusedError):
        conn.send(proto.encode(message))


class Worker:
    """One command line in a forked copy of the CLI; never returns to the server's loop."""

    def __init__(self, handoff: socket.socket):
        self.handoff = handoff

    def run(self) -> int:
        self._warm_up()
        conn = self._receive_connection()
        if conn is None:
            return 0
        try:
            argv, environ, umask, fds = self._receive_request(conn)
        except ValueError as err:
            send(conn, (proto.FALLBACK, str(err)))
            return 0
        send(conn, (proto.PID, os.getpid()))
        self._adopt(environ, umask, fds)
        from cli.main import run_command

        status = run_command(argv)
        # The server reports it too, but this one survives a server that exits meanwhile.
        send(conn, (proto.EXIT, status))
        return status

    def _warm_up(self) -> None:
        """What every command would otherwise pay first, done while no command waits.

        gRPC's core start (threads, event engine); then one call through each service's stub and a
        parse of a `run` command line, against nothing: a fresh fork's first pass over those code
        paths copies every page its reference counts touch (~3 ms for `run`), and this pass copies
        them ahead of the command.
        """
        warm_up_calls()
        warm_up_parse()

    def _receive_connection(self) -> socket.socket | None:
        fds: list[int] = []
        try:
            _, fds, _, _ = socket.recv_fds(self.handoff, 1, 1)
        except OSError:
            pass
        self.handoff.close()
        if not fds:
            return None  # the server stopped before a command came
        return socket.socket(fileno=fds[0])

    def _receive_request(self, conn: socket.socket) -> tuple[list[str], dict[str, str], int, list[int]]:
        packet, fds, _, _ = socket.recv_fds(conn, proto.MAX_PACKET, REQUEST_FDS)
        try:
            message = proto.decode(packet)
            if message[:2] != (proto.RUN, proto.PROTOCOL) or len(fds) != REQUEST_FDS:
                raise ValueError(f"unexpected request {message[:2]!r} with {len(fds)} fds")
            _, _, argv, environ, umask = message
            return (
                # str from cli/forkclient.py, bytes from the compiled front (cli/front.c): the same once decoded.
                [os.fsdecode(arg) if isinstance(arg, bytes) else str(arg) for arg in argv],
                {os.fsdecode(key): os.fsdecode(value) for key, value in environ.items()},
                int(umask),
                fds,
            )
        except ValueError:
            for fd in fds:
                os.close(fd)
            raise

    def _adopt(self, environ: dict[str, str], umask: int, fds: list[int]) -> None:
        """Become the client's process: its directory, umask, environment and stdio."""
        cwd, *stdio = fds
        os.fchdir(cwd)
        os.close(cwd)
        os.umask(umask)
        os.environ.clear()
        os.environ.update(environ)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, "r", encoding="utf-8", errors="surrogateescape", closefd=False)
        # Line-buffered on a terminal, as Python sets up its own stdio (buffering=1 is per line).
        sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding="utf-8", errors="surrogateescape", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)


def warm_up_calls() -> None:
    """One unary call per service stub to an abstract socket nobody binds: refused at once, nothing is sent."""
    import secrets

    import grpc

    from protos.executor.v1 import executor_pb2, executor_pb2_grpc
    from protos.state.v1 import state_pb2, state_pb2_grpc
    from protos.storage.v1 import storage_pb2, storage_pb2_grpc

    with grpc.insecure_channel(f"unix-abstract:mydocker-warm-up-{os.getpid()}-{secrets.token_hex(8)}") as channel:
        calls = (
            (state_pb2_grpc.StateServiceStub(channel).GetContainer, state_pb2.GetContainerRequest(reference="warm-up")),
            (storage_pb2_grpc.StorageServiceStub(channel).GetImage, storage_pb2.GetImageRequest(name="warm-up")),
            (executor_pb2_grpc.ExecutorServiceStub(channel).GetContainer, executor_pb2.GetContainerRequest(id="warm-up")),
        )
        for call, request in calls:
            with contextlib.suppress(grpc.RpcError):
                call(request, timeout=1.0)


def warm_up_parse() -> None:
    """Parse `run --rm busybox true` as the CLI would, without running it (resilient parsing calls no callback)."""
    from cli.main import command

    group = command()
    context = group.make_context("mydocker", ["run", "--rm", "busybox", "true"], resilient_parsing=True)
    run = group.get_command(context, "run")
    run.make_context("run", ["--rm", "busybox", "true"], parent=context, resilient_parsing=True)


def preload() -> None:
    """Import what any command may need, so workers start with it."""
    import grpc  # noqa: F401

    import cli.containers  # noqa: F401
    import cli.image_run  # noqa: F401
    import cli.images  # noqa: F401
    import cli.lifecycle  # noqa: F401
    import cli.main

    cli.main.command()
    import cli.output  # noqa: F401
    import cli.parse  # noqa: F401
    import cli.security_options  # noqa: F401
    import cli.stdio  # noqa: F401
    import cli.streams  # noqa: F401
    import cli.system  # noqa: F401
    from protos.executor.v1 import executor_pb2_grpc  # noqa: F401
    from protos.state.v1 import state_pb2_grpc  # noqa: F401
    from protos.storage.v1 import storage_pb2_grpc  # noqa: F401
    from services.common import client, image_config  # noqa: F401
