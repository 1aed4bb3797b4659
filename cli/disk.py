"""Disk and clean-up verbs: `system df`, `system prune`, `container prune`."""

from __future__ import annotations

import click
import typer

from cli.output import human_size
from cli.services import CliError, Services

STOPPED_QUESTION = "This removes every stopped container (their rootfs; volumes' host data is kept)."
LAYERS_QUESTION = "It also removes every untagged image no container uses, and every extracted layer no image uses."
IMAGES_QUESTION = "This removes every untagged image no container uses."
ALL_IMAGES_QUESTION = "This removes every image no container uses, tagged or not."


def df() -> None:
    """Show disk usage: images and their shared layers (each counted once), containers' writable layers, volumes."""
    from cli.output import table
    from protos.storage.v1 import storage_pb2

    usage = Services().call("storage", "GetUsage", storage_pb2.GetUsageRequest(), timeout=120)
    layers = sum(layer.size_bytes for layer in usage.layers)
    in_use = sum(layer.size_bytes for layer in usage.layers if layer.rootfs_count)
    uppers = sum(rootfs.upper_size_bytes for rootfs in usage.rootfs)
    volumes = sum(volume.size_bytes for volume in usage.volumes)
    # A layer blob shared by several images is stored once: counted once.
    blobs = {layer.digest: layer.size_bytes for image in usage.images for layer in image.layers}
    tars = sum(blobs.values())
    rows = [
        ("Images", str(len(usage.images)), human_size(tars), f"{sum(1 for i in usage.images if i.container_ids)} in use; layer blobs, each counted once"),
        ("Layers", str(len(usage.layers)), human_size(layers), f"{human_size(in_use)} under running or stopped containers"),
        ("Containers", str(len(usage.rootfs)), human_size(uppers), "writable layers (upper dirs)"),
        ("Volumes", str(len(usage.volumes)), human_size(volumes), "host directories, never deleted by mydocker"),
    ]
    typer.echo(table(("TYPE", "COUNT", "SIZE", "NOTE"), rows))
    typer.echo(f"Total: {human_size(tars + layers + uppers + volumes)}")


def _confirm(force: bool, *lines: str) -> None:
    if force:
        return
    for line in lines:
        typer.echo(line)
    # No terminal to answer on (a script) reads end of file: that is a no, never a silent yes.
    try:
        confirmed = typer.confirm("Are you sure you want to continue?", default=False, err=True)
    except click.exceptions.Abort:
        confirmed = False
    if not confirmed:
        raise CliError("nothing removed: answer y, or pass -f to skip the question")


def _remove_stopped(services: Services) -> list[str]:
    """Remove every stopped or exited container; their ids. Running ones (and work in progress) stay."""
    from cli import lifecycle
    from protos.state.v1 import state_pb2 as st

    containers = list(services.call("state", "ListContainers", st.ListContainersRequest()).containers)
    removed = []
    for container in lifecycle.sync(services, containers, auto_remove=False):
        if container.status in (st.CONTAINER_STATUS_STOPPED, st.CONTAINER_STATUS_EXITED):
            lifecycle.remove_stopped(services, container)
            removed.append(container.id)
    return removed


def container_prune(force: bool = typer.Option(False, "--force", "-f", help="Do not ask for confirmation.")) -> None:
    """Remove all stopped containers."""
    _confirm(force, STOPPED_QUESTION)
    for container_id in _remove_stopped(Services()):
        typer.echo(container_id)


def system_prune(force: bool = typer.Option(False, "--force", "-f", help="Do not ask for confirmation.")) -> None:
    """Remove all stopped containers and every extracted layer no image uses."""
    from protos.storage.v1 import storage_pb2

    _confirm(force, STOPPED_QUESTION, LAYERS_QUESTION)
    services = Services()
    usage = services.call("storage", "GetUsage", storage_pb2.GetUsageRequest(), timeout=120)
    upper_sizes = {rootfs.container_id: rootfs.upper_size_bytes for rootfs in usage.rootfs}
    removed = _remove_stopped(services)
    for container_id in removed:
        typer.echo(f"deleted container {container_id}")
    images = services.call("storage", "PruneImages", storage_pb2.PruneImagesRequest(), timeout=600)
    for image_id in images.deleted:
        typer.echo(f"deleted image {image_id}")
    pruned = services.call("storage", "PruneLayers", storage_pb2.PruneLayersRequest(), timeout=600)
    for digest in pruned.digests:
        typer.echo(f"deleted layer {digest}")
    reclaimed = images.reclaimed_bytes + pruned.reclaimed_bytes
    reclaimed += sum(upper_sizes.get(container_id, 0) for container_id in removed)
    typer.echo(f"Total reclaimed space: {human_size(reclaimed)}")


def image_prune(
    force: bool = typer.Option(False, "--force", "-f", help="Do not ask for confirmation."),
    all_: bool = typer.Option(False, "--all", "-a", help="Every image no container uses, not only untagged ones."),
) -> None:
    """Remove untagged images no container uses (with -a: every unused image)."""
    from protos.storage.v1 import storage_pb2

    _confirm(force, ALL_IMAGES_QUESTION if all_ else IMAGES_QUESTION)
    reply = Services().call("storage", "PruneImages", storage_pb2.PruneImagesRequest(all=all_), timeout=600)
    for tag in reply.untagged:
        typer.echo(f"Untagged: {tag}")
    for image_id in reply.deleted:
        typer.echo(f"Deleted: {image_id}")
    typer.echo(f"Total reclaimed space: {human_size(reply.reclaimed_bytes)}")


container_app = typer.Typer(help="Manage containers.", no_args_is_help=True)
container_app.command("prune")(container_prune)


def register(app: typer.Typer, system_app: typer.Typer) -> None:
    system_app.command("df")(df)
    system_app.command("prune")(system_prune)
    app.add_typer(container_app, name="container")
