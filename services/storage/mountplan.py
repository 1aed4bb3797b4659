"""Mount plans of a container rootfs as pure data (overlay options, layer stacks, volumes), and doing them.

The overlay is mounted with redirect_dir=off, metacopy=off and index=off, so `upper` stays a plain
diff. One layer: lowerdir is the `lower` symlink, as in the seed's mount command; a stack: the layers'
directories, top first, and a read-only view of them at `lower`; a stack past one page of mount
options: layer by layer through the new mount API.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from services.common import linux
from services.common.errors import FailedPrecondition
from services.storage.model import Mount, RootfsRecord, Volume
from services.storage.paths import RootfsPaths
from services.storage.volumes import bind_options, mount_order

log = logging.getLogger(__name__)

OVERLAY_PARAMETERS = Path("/sys/module/overlay/parameters")
# Turned off so the upper dir is a plain diff (no redirect or metacopy xattrs) and no index dir is used.
OVERLAY_OFF_FEATURES = ("redirect_dir", "metacopy", "index")
# Overlay mount data must fit one page with the rest of the options.
MAX_MOUNT_DATA = 4000


def overlay_options(lower: str, upper: str, work: str, supported: frozenset[str] | None = None) -> list[str]:
    """Overlay mount options; features the kernel does not know (per `supported`) are left out. Pure."""
    # lowerdir may be a stack ("top:...:bottom"); each of its paths was checked by lowerdir().
    checks = [("lowerdir", path) for path in lower.split(":")] + [("upperdir", upper), ("workdir", work)]
    for label, path in checks:
        if not path or any(character in path for character in (",", ":", "\0")):
            raise ValueError(f"{label} {path!r} contains a character overlay options cannot carry")
    options = [f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"]
    options += [f"{name}=off" for name in OVERLAY_OFF_FEATURES if supported is None or name in supported]
    return options


def kernel_overlay_features(parameters: Path = OVERLAY_PARAMETERS) -> frozenset[str] | None:
    """The overlay module's parameters, i.e. the features this kernel has; None if unknown (module not loaded)."""
    try:
        return frozenset(os.listdir(parameters))
    except FileNotFoundError:
        return None


def lowerdir(paths: RootfsPaths, layer_dirs: list[str]) -> str:
    """The lowerdir option value: the `lower` symlink for one layer (the seed's mount), else the stack, top first."""
    if len(layer_dirs) <= 1:
        return str(paths.lower)
    for layer in layer_dirs:
        if any(character in layer for character in (",", ":", "\0")):
            raise ValueError(f"layer {layer!r} contains a character overlay options cannot carry")
    return ":".join(reversed(layer_dirs))


LAYER_BY_LAYER = "lowerdir+"


def fit_mount_data(options: list[str], layer_dirs: list[str]) -> list[str]:
    """`options` when they fit one mount data page; else the same with one "lowerdir+=" per layer, top first.

    The second form is for the new mount API (Linux 6.8's overlay takes layers one fsconfig at a time):
    the way past the page limit, where containerd mounts relative paths from its snapshot directory.
    """
    if len(",".join(options)) <= MAX_MOUNT_DATA:
        return options
    rest = [option for option in options if not option.startswith("lowerdir=")]
    return [f"{LAYER_BY_LAYER}={layer}" for layer in reversed(layer_dirs)] + rest


def is_layer_by_layer(mount: Mount) -> bool:
    return any(option.startswith(f"{LAYER_BY_LAYER}=") for option in mount.options)


def overlay_mount(paths: RootfsPaths, supported: frozenset[str] | None, layer_dirs: list[str] | None = None) -> Mount:
    """The overlay at `merged`: the image's layers under the container's upper."""
    options = overlay_options(lowerdir(paths, layer_dirs or []), str(paths.upper), str(paths.work), supported)
    options = fit_mount_data(options, layer_dirs or [])
    return Mount(type="overlay", source="overlay", target=str(paths.merged), options=tuple(options))


def lower_view_mount(paths: RootfsPaths, layer_dirs: list[str]) -> Mount | None:
    """For a stack of layers, the read-only overlay at `lower` that shows the image; None for one layer."""
    if len(layer_dirs) <= 1:
        return None
    options = fit_mount_data([f"lowerdir={lowerdir(paths, layer_dirs)}"], layer_dirs)
    return Mount(type="overlay", source="overlay", target=str(paths.lower), options=tuple(options + ["ro"]))


def mount_overlay(mount: Mount) -> None:
    """Perform an overlay Mount: mount(2) with its options as data, or layer by layer with the new mount API."""
    read_only = "ro" in mount.options
    options = [option for option in mount.options if option != "ro"]
    if not is_layer_by_layer(mount):
        linux.mount("overlay", mount.target, "overlay", linux.MS_RDONLY if read_only else 0, ",".join(options))
        return
    settings = [(key, value) for key, _, value in (option.partition("=") for option in options)]
    try:
        linux.mount_configured("overlay", mount.target, settings, linux.MOUNT_ATTR_RDONLY if read_only else 0)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        layers = sum(1 for option in options if option.startswith(f"{LAYER_BY_LAYER}="))
        raise FailedPrecondition(
            f"the image has {layers} layers, more than one overlay mount can name on this kernel "
            "(layer by layer needs Linux 6.8): flatten it (export a container of it, then import)"
        ) from None


def volume_mount(paths: RootfsPaths, volume: Volume, relative: str | None = None) -> Mount:
    """The bind mount of a volume; `relative` is the resolved target below merged when known."""
    target = os.path.join(str(paths.merged), (relative if relative is not None else volume.container_path).lstrip("/"))
    return Mount(type="bind", source=volume.host_path, target=target, options=bind_options(volume))


def make_readonly(target: str) -> None:
    """The bind at `target` and every mount below it read-only: a submount of a `:ro` volume is no way to write.

    mount_setattr(2) with AT_RECURSIVE (Linux 5.12) does the whole tree at once; an older kernel gets
    the top mount only, as before, and a warning.
    """
    try:
        linux.mount_setattr(target, linux.MOUNT_ATTR_RDONLY, recursive=True)
    except OSError as err:
        if err.errno != errno.ENOSYS:
            raise
        log.warning("kernel without mount_setattr: only the top mount of the :ro volume at %s is read-only", target)
        linux.mount(None, target, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY)


def planned_mounts(
    paths: RootfsPaths, record: RootfsRecord, supported: frozenset[str] | None, layer_dirs: list[str]
) -> list[Mount]:
    """The mounts of a rootfs in order (the lower view, the overlay, then volumes parents first)."""
    view = lower_view_mount(paths, layer_dirs)
    mounts = [view] if view is not None else []
    mounts.append(overlay_mount(paths, supported, layer_dirs))
    return mounts + [volume_mount(paths, volume) for volume in mount_order(record.volumes)]
