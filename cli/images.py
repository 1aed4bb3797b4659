"""Image verbs: images, rmi and import."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from cli.output import human_size
from cli.services import CliError, Services

CHUNK_SIZE = 256 * 1024
# Below this, a progress bar would only flicker.
PROGRESS_THRESHOLD = 16 * 1024 * 1024


def progress_line(done: int, total: int, width: int = 30) -> str:
    """"[=========>          ]  45% 12.0MiB/26.5MiB"."""
    fraction = min(done / total, 1.0) if total else 1.0
    filled = int(fraction * width)
    bar = "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (width - filled)
    return f"[{bar}] {fraction * 100:3.0f}% {human_size(done)}/{human_size(total)}"


def images() -> None:
    """List images: NAME SIZE CREATED CONTAINERS."""
    from cli.convert import timestamp_seconds
    from cli.output import format_time, table
    from protos.storage.v1 import storage_pb2

    reply = Services().call("storage", "ListImages", storage_pb2.ListImagesRequest())
    rows = [
        (
            image.name,
            human_size(image.size_bytes),
            format_time(timestamp_seconds(image.created_at)),
            str(len(image.container_ids)),
        )
        for image in reply.images
    ]
    typer.echo(table(("NAME", "SIZE", "CREATED", "CONTAINERS"), rows))


def rmi(names: list[str] = typer.Argument(..., help="Image names.")) -> None:
    """Remove images; refused while a container uses one."""
    from protos.storage.v1 import storage_pb2

    services = Services()
    failures = []
    for name in names:
        try:
            typer.echo(services.call("storage", "RemoveImage", storage_pb2.RemoveImageRequest(name=name)).image.name)
        except CliError as err:
            failures.append(str(err))
    if failures:
        raise CliError("; ".join(failures))


def import_(
    source: str = typer.Argument(..., help="Rootfs tar file, or - for standard input."),
    name: str = typer.Argument(..., help="Image name to store it under."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing image of that name."),
) -> None:
    """Import a rootfs tar as an image, streaming it to the storage service."""
    from protos.storage.v1 import storage_pb2

    if source == "-":
        stream, total = sys.stdin.buffer, 0
    else:
        path = Path(source)
        try:
            stream, total = path.open("rb"), path.stat().st_size
        except OSError as err:
            raise CliError(f"cannot read {source}: {err.strerror}") from None
    show_progress = total >= PROGRESS_THRESHOLD and os.isatty(sys.stderr.fileno())

    def requests():
        yield storage_pb2.ImportImageRequest(
            header=storage_pb2.ImportImageHeader(name=name, replace=replace, expected_size=total)
        )
        sent = 0
        while chunk := stream.read(CHUNK_SIZE):
            sent += len(chunk)
            if show_progress:
                sys.stderr.write("\r" + progress_line(sent, total))
                sys.stderr.flush()
            yield storage_pb2.ImportImageRequest(chunk=chunk)
        if show_progress:
            sys.stderr.write("\n")

    image = Services().call("storage", "ImportImage", requests(), timeout=3600).image
    typer.echo(image.name)


def register(app: typer.Typer) -> None:
    app.command("images")(images)
    app.command("rmi")(rmi)
    app.command("import")(import_)
