"""Thin gRPC servicer of the storage service: protos in, StorageCore call, protos out."""

from __future__ import annotations

from protos.storage.v1 import storage_pb2, storage_pb2_grpc
from services.storage import convert
from services.storage.core import StorageCore


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, core: StorageCore):
        self._core = core

    def GetInfo(self, request, context):
        return storage_pb2.GetInfoResponse(**self._core.info())

    def ImportImage(self, request_iterator, context):
        header, chunks = convert.split_import(request_iterator)
        if header.source_path:
            # No chunks may follow a source path: consuming the stream refuses stray ones.
            for _ in chunks:
                pass
        image = self._core.import_image(
            header.name, header.replace, chunks, header.source_path, header.expected_size, list(header.changes)
        )
        return storage_pb2.ImportImageResponse(image=convert.image_to_proto(image))

    def LoadImage(self, request_iterator, context):
        header, chunks = convert.split_import(request_iterator, "LoadImage")
        if header.source_path:
            for _ in chunks:
                pass
        images, untagged = self._core.load_image(header.name, chunks, header.source_path, header.expected_size)
        return storage_pb2.LoadImageResponse(images=[convert.image_to_proto(i) for i in images], untagged=untagged)

    def SaveImage(self, request, context):
        for chunk in self._core.save_images(list(request.references)):
            yield storage_pb2.SaveImageResponse(chunk=chunk)

    def PullImage(self, request, context):
        def run(report):
            return self._core.pull_image(request.reference, request.platform, report)

        for kind, value in convert.stream_progress(run, context):
            if kind == "progress":
                yield storage_pb2.PullImageResponse(progress=convert.progress_to_proto(value))
            else:
                yield storage_pb2.PullImageResponse(image=convert.image_to_proto(value))

    def PushImage(self, request, context):
        def run(report):
            return self._core.push_image(request.reference, report)

        for kind, value in convert.stream_progress(run, context):
            if kind == "progress":
                yield storage_pb2.PushImageResponse(progress=convert.progress_to_proto(value))
            else:
                yield storage_pb2.PushImageResponse(manifest_digest=value)

    def Login(self, request, context):
        return storage_pb2.LoginResponse(registry=self._core.login(request.registry, request.username, request.password))

    def Logout(self, request, context):
        self._core.logout(request.registry)
        return storage_pb2.LogoutResponse()

    def TagImage(self, request, context):
        image = self._core.tag_image(request.source, request.target)
        return storage_pb2.TagImageResponse(image=convert.image_to_proto(image))

    def ListImages(self, request, context):
        return storage_pb2.ListImagesResponse(images=[convert.image_to_proto(i) for i in self._core.list_images()])

    def GetImage(self, request, context):
        image = self._core.get_image(request.name, brief=request.brief)
        return storage_pb2.GetImageResponse(image=convert.image_to_proto(image))

    def RemoveImage(self, request, context):
        result = self._core.remove_image(request.name, request.force)
        return storage_pb2.RemoveImageResponse(
            image=convert.image_to_proto(result.image), untagged=result.untagged, deleted=result.deleted
        )

    def PrepareRootfs(self, request, context):
        rootfs = self._core.prepare_rootfs(
            request.container_id,
            request.image,
            [convert.volume_from_proto(v) for v in request.volumes],
            request.image_id,
        )
        return storage_pb2.PrepareRootfsResponse(rootfs=convert.rootfs_to_proto(rootfs))

    def GetRootfs(self, request, context):
        return storage_pb2.GetRootfsResponse(rootfs=convert.rootfs_to_proto(self._core.get_rootfs(request.container_id)))

    def ListRootfs(self, request, context):
        return storage_pb2.ListRootfsResponse(rootfs=[convert.rootfs_to_proto(r) for r in self._core.list_rootfs()])

    def RemoveRootfs(self, request, context):
        return storage_pb2.RemoveRootfsResponse(removed=self._core.remove_rootfs(request.container_id))

    def CommitContainer(self, request, context):
        image = self._core.commit(
            request.container_id,
            request.image,
            request.replace,
            list(request.changes),
            request.comment,
            request.author,
            convert.run_config_from_proto(request.container_config) if request.HasField("container_config") else None,
        )
        return storage_pb2.CommitContainerResponse(image=convert.image_to_proto(image))

    def ExportContainer(self, request, context):
        for chunk in self._core.export(request.container_id):
            yield storage_pb2.ExportContainerResponse(chunk=chunk)

    def ListVolumes(self, request, context):
        volumes = self._core.list_volumes()
        return storage_pb2.ListVolumesResponse(volumes=[convert.volume_usage_to_proto(v) for v in volumes])

    def GetUsage(self, request, context):
        return convert.usage_to_proto(self._core.usage())

    def PruneImages(self, request, context):
        untagged, deleted, freed = self._core.prune_images(request.all)
        return storage_pb2.PruneImagesResponse(untagged=untagged, deleted=deleted, reclaimed_bytes=freed)

    def PruneLayers(self, request, context):
        result = self._core.prune_layers()
        return storage_pb2.PruneLayersResponse(digests=result.digests, reclaimed_bytes=result.reclaimed_bytes)
