"""Conversions between storage protos and the storage service's dataclasses."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from protos.storage.v1 import storage_pb2
from protos.types.v1 import types_pb2
from services.common.errors import InvalidArgument
from services.common.image_config import HistoryEntry, ImageConfig, RunSpec, parse_created
from services.storage.model import Image, LayerUsage, Mount, Rootfs, RootfsUsage, Usage, Volume, VolumeUsage


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _string_list(values: tuple[str, ...] | None) -> storage_pb2.StringList | None:
    return None if values is None else storage_pb2.StringList(values=values)


def image_config_to_proto(config: ImageConfig) -> storage_pb2.ImageConfig:
    return storage_pb2.ImageConfig(
        entrypoint=_string_list(config.entrypoint),
        cmd=_string_list(config.cmd),
        env=config.env,
        working_dir=config.working_dir,
        user=config.user,
        exposed_ports=config.exposed_ports,
        stop_signal=config.stop_signal,
        labels=dict(config.labels),
        volumes=config.volumes,
    )


def history_to_proto(entry: HistoryEntry) -> storage_pb2.HistoryEntry:
    return storage_pb2.HistoryEntry(
        created_at=timestamp(parse_created(entry.created)),
        created_by=entry.created_by,
        comment=entry.comment,
        empty_layer=entry.empty_layer,
        author=entry.author,
    )


def image_to_proto(image: Image) -> storage_pb2.Image:
    return storage_pb2.Image(
        name=image.name,
        size_bytes=image.size_bytes,
        created_at=timestamp(image.created_at),
        digest=image.id,
        container_ids=image.container_ids,
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        config=image_config_to_proto(image.spec.config),
        layers=[
            storage_pb2.ImageLayer(
                digest=layer.digest, diff_id=layer.diff_id, size_bytes=layer.size, media_type=layer.media_type
            )
            for layer in image.layers
        ],
        architecture=image.spec.architecture,
        os=image.spec.os,
        history=[history_to_proto(entry) for entry in image.spec.history],
        author=image.spec.author,
    )


def volume_from_proto(message: types_pb2.Volume) -> Volume:
    return Volume(host_path=message.host_path, container_path=message.container_path, read_only=message.read_only)


def volume_to_proto(volume: Volume) -> types_pb2.Volume:
    return types_pb2.Volume(host_path=volume.host_path, container_path=volume.container_path, read_only=volume.read_only)


def mount_to_proto(mount: Mount) -> types_pb2.Mount:
    return types_pb2.Mount(type=mount.type, source=mount.source, target=mount.target, options=mount.options)


def rootfs_to_proto(rootfs: Rootfs) -> storage_pb2.Rootfs:
    return storage_pb2.Rootfs(
        container_id=rootfs.container_id,
        image=rootfs.image,
        path=rootfs.path,
        mounts=[mount_to_proto(mount) for mount in rootfs.mounts],
        mounted=rootfs.mounted,
        volumes=[volume_to_proto(volume) for volume in rootfs.volumes],
        image_id=rootfs.image_id,
    )


def volume_usage_to_proto(usage: VolumeUsage) -> storage_pb2.VolumeUsage:
    return storage_pb2.VolumeUsage(
        volume=volume_to_proto(usage.volume), container_ids=usage.container_ids, size_bytes=usage.size_bytes
    )


def layer_usage_to_proto(usage: LayerUsage) -> storage_pb2.LayerUsage:
    return storage_pb2.LayerUsage(
        digest=usage.digest, size_bytes=usage.size_bytes, images=usage.images, rootfs_count=usage.rootfs_count
    )


def rootfs_usage_to_proto(usage: RootfsUsage) -> storage_pb2.RootfsUsage:
    return storage_pb2.RootfsUsage(container_id=usage.container_id, upper_size_bytes=usage.upper_size_bytes)


def usage_to_proto(usage: Usage) -> storage_pb2.GetUsageResponse:
    return storage_pb2.GetUsageResponse(
        images=[image_to_proto(image) for image in usage.images],
        layers=[layer_usage_to_proto(layer) for layer in usage.layers],
        rootfs=[rootfs_usage_to_proto(rootfs) for rootfs in usage.rootfs],
        volumes=[volume_usage_to_proto(volume) for volume in usage.volumes],
    )


def split_import(requests: Iterable, rpc: str = "ImportImage") -> tuple[storage_pb2.ImportImageHeader, Iterator[bytes]]:
    """The header (first message) and a lazy iterator over the chunks that follow it (ImportImage, LoadImage)."""
    iterator = iter(requests)
    first = next(iterator, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument(f"{rpc}: the first message must be the header")
    header = first.header

    def chunks() -> Iterator[bytes]:
        for message in iterator:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument(f"{rpc}: only chunks may follow the header")
            if header.source_path:
                raise InvalidArgument(f"{rpc}: the header names a source path, so no chunks may follow")
            yield message.chunk

    return header, chunks()


def progress_to_proto(progress) -> storage_pb2.LayerProgress:
    return storage_pb2.LayerProgress(
        digest=progress.digest, status=progress.status, current_bytes=progress.current, total_bytes=progress.total
    )


_DONE = object()


def stream_progress(run, context) -> Iterator[tuple[str, object]]:
    """Run `run(report)` in a thread; yield ("progress", p) for each report, then ("result", value).

    The work's own exception is raised here, in the servicer's thread, so the one error map applies.
    A client that goes away stops the stream; the work finishes on its own (a pull is not torn down
    halfway: what it fetched stays for the next one).
    """
    events: queue.Queue = queue.Queue()
    outcome: list = []

    def work() -> None:
        try:
            outcome.append(("result", run(lambda progress: events.put(("progress", progress)))))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the servicer's thread below
            outcome.append(("error", exc))
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=work, name="transfer", daemon=True)
    thread.start()
    while True:
        event = events.get()
        if event is _DONE:
            break
        if context.is_active():
            yield event
    thread.join()
    kind, value = outcome[0]
    if kind == "error":
        raise value
    yield kind, value


def run_config_from_proto(message: storage_pb2.ImageConfig) -> tuple[RunSpec, tuple[str, ...] | None]:
    """A container's run-time config for commit: (argv, env, working dir, user) and its entrypoint (None: keep)."""
    entrypoint = tuple(message.entrypoint.values) if message.HasField("entrypoint") else None
    run = RunSpec(argv=tuple(message.cmd.values), env=tuple(message.env), working_dir=message.working_dir, user=message.user)
    return run, entrypoint
