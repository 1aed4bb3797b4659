"""Image verbs: images, rmi, tag, import, load, save, history and image inspect."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from cli.disk import image_prune
from cli.output import human_size
from cli.services import CliError, Services

CHUNK_SIZE = 256 * 1024
# Below this, a progress bar would only flicker.
PROGRESS_THRESHOLD = 16 * 1024 * 1024

image_app = typer.Typer(help="Images: ls, inspect, history, tag, rm, load, save, import.", no_args_is_help=True)


def progress_line(done: int, total: int, width: int = 30) -> str:
    """"[=========>          ]  45% 12.0MiB/26.5MiB"."""
    fraction = min(done / total, 1.0) if total else 1.0
    filled = int(fraction * width)
    bar = "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (width - filled)
    return f"[{bar}] {fraction * 100:3.0f}% {human_size(done)}/{human_size(total)}"


def short_id(image_id: str) -> str:
    """"sha256:0123456789ab..." -> "0123456789ab", as docker's IMAGE ID column."""
    return image_id.split(":", 1)[-1][:12]


def split_tag(tag: str) -> tuple[str, str]:
    """"localhost:5000/a/b:v1" -> ("localhost:5000/a/b", "v1"): the tag is after the last ":" past the last "/"."""
    slash = tag.rfind("/")
    colon = tag.rfind(":")
    if colon > slash:
        return tag[:colon], tag[colon + 1:]
    return tag, ""


def image_rows(images) -> list[tuple[str, str, str, str, str]]:
    """One row per tag (an untagged image: one <none> row), newest first, as `docker images`."""
    from cli.convert import timestamp_seconds
    from cli.output import format_time

    rows = []
    for image in sorted(images, key=lambda item: -(timestamp_seconds(item.created_at) or 0)):
        created = format_time(timestamp_seconds(image.created_at))
        for tag in list(image.repo_tags) or ["<none>:<none>"]:
            repository, version = split_tag(tag)
            rows.append((repository, version, short_id(image.id), created, human_size(image.size_bytes)))
    return rows


def images(quiet: bool = typer.Option(False, "--quiet", "-q", help="Only image ids.")) -> None:
    """List images: REPOSITORY TAG IMAGE ID CREATED SIZE."""
    from cli.output import table
    from protos.storage.v1 import storage_pb2

    reply = Services().call("storage", "ListImages", storage_pb2.ListImagesRequest())
    if quiet:
        for image in reply.images:
            typer.echo(short_id(image.id))
        return
    typer.echo(table(("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"), image_rows(reply.images)))


def rmi(
    names: list[str] = typer.Argument(..., help="Image names, tags, ids or id prefixes."),
    force: bool = typer.Option(False, "--force", "-f", help="Untag even while containers use it; remove an id with several tags."),
) -> None:
    """Remove images: untag a name; delete the image when its last tag goes and no container uses it."""
    from protos.storage.v1 import storage_pb2

    services = Services()
    failures = []
    for name in names:
        try:
            reply = services.call("storage", "RemoveImage", storage_pb2.RemoveImageRequest(name=name, force=force))
        except CliError as err:
            failures.append(str(err))
            continue
        for tag in reply.untagged:
            typer.echo(f"Untagged: {tag}")
        for image_id in reply.deleted:
            typer.echo(f"Deleted: {image_id}")
    if failures:
        raise CliError("; ".join(failures))


def tag(
    source: str = typer.Argument(..., help="Image to tag: name[:tag], id or id prefix."),
    target: str = typer.Argument(..., help="New tag: [registry/]name[:tag]."),
) -> None:
    """Give an image another name: `tag busybox localhost:5000/tools/busybox:1`."""
    from protos.storage.v1 import storage_pb2

    Services().call("storage", "TagImage", storage_pb2.TagImageRequest(source=source, target=target))


def _upload_requests(message, header, source: str):
    """The header, then the file (or stdin for "-") in chunks, with a progress bar on a terminal."""
    if source == "-":
        stream, total = sys.stdin.buffer, 0
    else:
        path = Path(source)
        try:
            stream, total = path.open("rb"), path.stat().st_size
        except OSError as err:
            raise CliError(f"cannot read {source}: {err.strerror}") from None
    header.expected_size = total
    show_progress = total >= PROGRESS_THRESHOLD and os.isatty(sys.stderr.fileno())

    def requests():
        yield message(header=header)
        sent = 0
        while chunk := stream.read(CHUNK_SIZE):
            sent += len(chunk)
            if show_progress:
                sys.stderr.write("\r" + progress_line(sent, total))
                sys.stderr.flush()
            yield message(chunk=chunk)
        if show_progress:
            sys.stderr.write("\n")

    return requests()


def import_(
    source: str = typer.Argument(..., help="Rootfs tar file, or - for standard input."),
    name: str = typer.Argument(..., help="Image name to store it under."),
    replace: bool = typer.Option(False, "--replace", help="Move the name if another image has it."),
    change: Optional[list[str]] = typer.Option(None, "--change", "-c", help="Dockerfile instruction for the config (CMD, ENV, ...); repeatable."),
) -> None:
    """Import a plain rootfs tar as a one-layer image (an image archive: use load)."""
    from protos.storage.v1 import storage_pb2

    header = storage_pb2.ImportImageHeader(name=name, replace=replace, changes=change or [])
    requests = _upload_requests(storage_pb2.ImportImageRequest, header, source)
    image = Services().call("storage", "ImportImage", requests, timeout=3600).image
    typer.echo(image.id)


def load(
    input_: str = typer.Option("-", "--input", "-i", help="Archive to read (docker save, OCI archive or a rootfs tar); default stdin."),
    name: str = typer.Argument("", help="Name for a plain rootfs tar (archives carry their own names)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing."),
) -> None:
    """Load images from a docker-archive, an OCI archive or a rootfs tar (gzip and zstd too)."""
    from protos.storage.v1 import storage_pb2

    header = storage_pb2.ImportImageHeader(name=name)
    requests = _upload_requests(storage_pb2.LoadImageRequest, header, input_)
    reply = Services().call("storage", "LoadImage", requests, timeout=3600)
    if quiet:
        return
    for image in reply.images:
        for tag_name in image.repo_tags:
            typer.echo(f"Loaded image: {tag_name}")
        if not image.repo_tags:
            typer.echo(f"Loaded image ID: {image.id}")


def save(
    references: list[str] = typer.Argument(..., help="Images to save."),
    output: str = typer.Option("", "--output", "-o", help="File to write (default: stdout, if not a terminal)."),
) -> None:
    """Write images as one docker-archive (also an OCI layout) that docker load and podman load accept."""
    from protos.storage.v1 import storage_pb2

    import grpc

    from services.common.client import describe_rpc_error

    if not output and os.isatty(sys.stdout.fileno()):
        raise CliError("refusing to write an archive to a terminal: give -o FILE or redirect stdout")
    services = Services()
    stream = services.storage.SaveImage(storage_pb2.SaveImageRequest(references=references), timeout=3600)
    target = Path(output) if output else None
    # Written aside and renamed: an interrupted save never leaves a partial archive under the name.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}") if target else None
    try:
        out = open(tmp, "wb") if tmp else sys.stdout.buffer
        try:
            for message in stream:
                out.write(message.chunk)
        except grpc.RpcError as err:
            raise CliError(describe_rpc_error("storage", services.config, err)) from None
        except OSError as err:
            raise CliError(f"cannot write {output or 'stdout'}: {err.strerror}") from None
        finally:
            if tmp:
                out.close()
        if tmp:
            os.replace(tmp, target)
    finally:
        if tmp and tmp.exists():
            tmp.unlink()


def history(image: str = typer.Argument(..., help="Image name, id or id prefix.")) -> None:
    """The steps that built an image, newest first: CREATED CREATED BY SIZE COMMENT."""
    from cli.convert import timestamp_seconds
    from cli.output import format_time, table
    from protos.storage.v1 import storage_pb2

    reply = Services().call("storage", "GetImage", storage_pb2.GetImageRequest(name=image)).image
    sizes = [layer.size_bytes for layer in reply.layers]
    rows = []
    for entry in reply.history:
        size = "0B" if entry.empty_layer or not sizes else human_size(sizes.pop(0))
        rows.append((format_time(timestamp_seconds(entry.created_at)), entry.created_by, size, entry.comment))
    typer.echo(table(("CREATED", "CREATED BY", "SIZE", "COMMENT"), list(reversed(rows))))


def image_inspect(images_: list[str] = typer.Argument(..., help="Image names, ids or id prefixes.")) -> None:
    """Print images as JSON: id, tags, config (Entrypoint, Cmd, Env, ...), layers and history."""
    import json

    from google.protobuf.json_format import MessageToDict

    from protos.storage.v1 import storage_pb2

    services = Services()
    result = []
    for reference in images_:
        image = services.call("storage", "GetImage", storage_pb2.GetImageRequest(name=reference)).image
        result.append(MessageToDict(image, preserving_proto_field_name=True))
    typer.echo(json.dumps(result, indent=2))


def register(app: typer.Typer) -> None:
    app.command("images")(images)
    app.command("rmi")(rmi)
    app.command("tag")(tag)
    app.command("import")(import_)
    app.command("load")(load)
    app.command("save")(save)
    app.command("history")(history)
    image_app.command("ls")(images)
    image_app.command("inspect")(image_inspect)
    image_app.command("history")(history)
    image_app.command("tag")(tag)
    image_app.command("rm")(rmi)
    image_app.command("load")(load)
    image_app.command("save")(save)
    image_app.command("import")(import_)
    image_app.command("prune")(image_prune)
    app.add_typer(image_app, name="image")
