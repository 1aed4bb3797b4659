"""Registry verbs: pull, push, login and logout, with a progress line per layer."""

from __future__ import annotations

import getpass
import os
import sys
import time
from typing import Optional

import typer

from cli.output import human_size
from cli.services import CliError, Services

STATUS_WORDS = {
    "waiting": "Waiting",
    "downloading": "Downloading",
    "uploading": "Pushing",
    "exists": "Already exists",
    "mounted": "Mounted",
    "verifying": "Verifying",
    "unpacking": "Unpacking",
    "done": "Complete",
}
BAR_WIDTH = 24


def short_digest(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class ProgressBoard:
    """One line per blob: redrawn in place on a terminal, one line per status change otherwise."""

    def __init__(self, out, live: bool):
        self._out = out
        self._live = live
        self._order: list[str] = []
        self._lines: dict[str, str] = {}
        self._status: dict[str, str] = {}
        self._started: dict[str, tuple[float, int]] = {}
        self._drawn = 0

    def update(self, progress) -> None:
        digest = progress.digest
        if digest not in self._lines:
            self._order.append(digest)
        line = self._line(progress)
        self._lines[digest] = line
        changed = self._status.get(digest) != progress.status
        self._status[digest] = progress.status
        if self._live:
            self._redraw()
        elif changed and progress.status not in ("waiting", "verifying"):
            self._out.write(line + "\n")
            self._out.flush()

    def _line(self, progress) -> str:
        word = STATUS_WORDS.get(progress.status, progress.status)
        text = f"{short_digest(progress.digest)}: {word}"
        if progress.status in ("downloading", "uploading") and progress.total_bytes:
            now = time.monotonic()
            start_time, start_bytes = self._started.setdefault(progress.digest, (now, progress.current_bytes))
            fraction = min(progress.current_bytes / progress.total_bytes, 1.0)
            filled = int(fraction * BAR_WIDTH)
            bar = "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (BAR_WIDTH - filled)
            elapsed = now - start_time
            speed = (progress.current_bytes - start_bytes) / elapsed if elapsed > 0.2 else 0
            rate = f" {human_size(int(speed))}/s" if speed else ""
            text += f" [{bar}] {human_size(progress.current_bytes)}/{human_size(progress.total_bytes)}{rate}"
        return text

    def _redraw(self) -> None:
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}A")
        for digest in self._order:
            self._out.write("\x1b[2K" + self._lines[digest] + "\n")
        self._drawn = len(self._order)
        self._out.flush()


def _stream(services: Services, method: str, request, quiet: bool):
    """Call a streaming transfer RPC, drawing progress; returns the last (result) message."""
    import grpc

    from services.common.client import describe_rpc_error

    # Progress on stdout, as docker pull prints it: stderr keeps the one-line error, if any.
    board = None if quiet else ProgressBoard(sys.stdout, os.isatty(sys.stdout.fileno()))
    last = None
    try:
        for message in getattr(services.storage, method)(request, timeout=24 * 3600):
            if message.WhichOneof("event") == "progress":
                if board is not None:
                    board.update(message.progress)
            else:
                last = message
    except grpc.RpcError as err:
        raise CliError(describe_rpc_error("storage", services.config, err)) from None
    if last is None:
        raise CliError(f"the storage service ended the {method} stream without a result: see its log")
    return last


def pull(
    reference: str = typer.Argument(..., help="Image: [registry[:port]/]name[:tag|@sha256:...]."),
    platform: str = typer.Option("", "--platform", help="Platform to pick from a multi-platform image, e.g. linux/arm64."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print the image's name."),
) -> None:
    """Fetch an image from its registry (HTTPS; plain HTTP for localhost, 127.0.0.0/8 and insecure registries)."""
    from protos.storage.v1 import storage_pb2

    request = storage_pb2.PullImageRequest(reference=reference, platform=platform)
    image = _stream(Services(), "PullImage", request, quiet).image
    if not quiet:
        for digest in image.repo_digests:
            typer.echo(f"Digest: {digest.split('@', 1)[-1]}")
            break
    typer.echo(image.repo_tags[0] if image.repo_tags else image.id)


def push(
    reference: str = typer.Argument(..., help="A local tag naming the registry: localhost:5000/team/app:v1."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print the manifest digest."),
) -> None:
    """Upload an image to the registry its name points at."""
    from protos.storage.v1 import storage_pb2

    digest = _stream(Services(), "PushImage", storage_pb2.PushImageRequest(reference=reference), quiet).manifest_digest
    typer.echo(digest if quiet else f"{reference}: digest: {digest}")


def login(
    registry: str = typer.Argument(..., help="Registry host[:port] (docker.io for Docker Hub)."),
    username: str = typer.Option("", "--username", "-u", help="User name (asked for on a terminal if not given)."),
    password: Optional[str] = typer.Option(None, "--password", "-p", help="Password (prefer --password-stdin)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
) -> None:
    """Check credentials with the registry and store them in <root>/auth.json (0600)."""
    from protos.storage.v1 import storage_pb2

    if password_stdin:
        if password is not None:
            raise CliError("give the password with --password or --password-stdin, not both")
        password = sys.stdin.readline().rstrip("\r\n")
    if not username:
        if not os.isatty(sys.stdin.fileno()):
            raise CliError("no user name: give --username")
        username = input("Username: ")
    if password is None:
        if not os.isatty(sys.stdin.fileno()):
            raise CliError("no password: give --password-stdin and pipe it in")
        password = getpass.getpass("Password: ")
    request = storage_pb2.LoginRequest(registry=registry, username=username, password=password)
    host = Services().call("storage", "Login", request, timeout=60).registry
    typer.echo(f"Login Succeeded ({host})")


def logout(registry: str = typer.Argument(..., help="Registry host[:port].")) -> None:
    """Forget the credentials stored for a registry."""
    from protos.storage.v1 import storage_pb2

    Services().call("storage", "Logout", storage_pb2.LogoutRequest(registry=registry))
    typer.echo(f"Removed login credentials for {registry}")


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
    app.command("push")(push)
    app.command("login")(login)
    app.command("logout")(logout)
