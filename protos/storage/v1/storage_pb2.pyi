import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.types.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "root", "driver", "images", "rootfs_count", "pid")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_COUNT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    version: str
    root: str
    driver: str
    images: int
    rootfs_count: int
    pid: int
    def __init__(self, version: _Optional[str] = ..., root: _Optional[str] = ..., driver: _Optional[str] = ..., images: _Optional[int] = ..., rootfs_count: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("name", "size_bytes", "created_at", "digest", "container_ids", "id", "repo_tags", "repo_digests", "config", "layers", "architecture", "os", "history", "author")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_IDS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    REPO_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    created_at: _timestamp_pb2.Timestamp
    digest: str
    container_ids: _containers.RepeatedScalarFieldContainer[str]
    id: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    repo_digests: _containers.RepeatedScalarFieldContainer[str]
    config: ImageConfig
    layers: _containers.RepeatedCompositeFieldContainer[ImageLayer]
    architecture: str
    os: str
    history: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    author: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., digest: _Optional[str] = ..., container_ids: _Optional[_Iterable[str]] = ..., id: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ..., repo_digests: _Optional[_Iterable[str]] = ..., config: _Optional[_Union[ImageConfig, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[ImageLayer, _Mapping]]] = ..., architecture: _Optional[str] = ..., os: _Optional[str] = ..., history: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., author: _Optional[str] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class ImageConfig(_message.Message):
    __slots__ = ("entrypoint", "cmd", "env", "working_dir", "user", "exposed_ports", "stop_signal", "labels", "volumes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    EXPOSED_PORTS_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    entrypoint: StringList
    cmd: StringList
    env: _containers.RepeatedScalarFieldContainer[str]
    working_dir: str
    user: str
    exposed_ports: _containers.RepeatedScalarFieldContainer[str]
    stop_signal: str
    labels: _containers.ScalarMap[str, str]
    volumes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, entrypoint: _Optional[_Union[StringList, _Mapping]] = ..., cmd: _Optional[_Union[StringList, _Mapping]] = ..., env: _Optional[_Iterable[str]] = ..., working_dir: _Optional[str] = ..., user: _Optional[str] = ..., exposed_ports: _Optional[_Iterable[str]] = ..., stop_signal: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., volumes: _Optional[_Iterable[str]] = ...) -> None: ...

class ImageLayer(_message.Message):
    __slots__ = ("digest", "diff_id", "size_bytes", "media_type")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIFF_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    diff_id: str
    size_bytes: int
    media_type: str
    def __init__(self, digest: _Optional[str] = ..., diff_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., media_type: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("created_at", "created_by", "comment", "empty_layer", "author")
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    EMPTY_LAYER_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    comment: str
    empty_layer: bool
    author: str
    def __init__(self, created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., comment: _Optional[str] = ..., empty_layer: _Optional[bool] = ..., author: _Optional[str] = ...) -> None: ...

class ImportImageHeader(_message.Message):
    __slots__ = ("name", "replace", "source_path", "expected_size", "changes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    replace: bool
    source_path: str
    expected_size: int
    changes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., replace: _Optional[bool] = ..., source_path: _Optional[str] = ..., expected_size: _Optional[int] = ..., changes: _Optional[_Iterable[str]] = ...) -> None: ...

class ImportImageRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportImageHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ImportImageHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ImportImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class LoadImageRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ImportImageHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ImportImageHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class LoadImageResponse(_message.Message):
    __slots__ = ("images", "untagged")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    untagged: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., untagged: _Optional[_Iterable[str]] = ...) -> None: ...

class SaveImageRequest(_message.Message):
    __slots__ = ("references",)
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    references: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, references: _Optional[_Iterable[str]] = ...) -> None: ...

class SaveImageResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    def __init__(self, chunk: _Optional[bytes] = ...) -> None: ...

class TagImageRequest(_message.Message):
    __slots__ = ("source", "target")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class TagImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class PullImageRequest(_message.Message):
    __slots__ = ("reference", "platform")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    reference: str
    platform: str
    def __init__(self, reference: _Optional[str] = ..., platform: _Optional[str] = ...) -> None: ...

class LayerProgress(_message.Message):
    __slots__ = ("digest", "status", "current_bytes", "total_bytes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    status: str
    current_bytes: int
    total_bytes: int
    def __init__(self, digest: _Optional[str] = ..., status: _Optional[str] = ..., current_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class PullImageResponse(_message.Message):
    __slots__ = ("progress", "image")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    progress: LayerProgress
    image: Image
    def __init__(self, progress: _Optional[_Union[LayerProgress, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class PushImageRequest(_message.Message):
    __slots__ = ("reference",)
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    reference: str
    def __init__(self, reference: _Optional[str] = ...) -> None: ...

class PushImageResponse(_message.Message):
    __slots__ = ("progress", "manifest_digest")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    progress: LayerProgress
    manifest_digest: str
    def __init__(self, progress: _Optional[_Union[LayerProgress, _Mapping]] = ..., manifest_digest: _Optional[str] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("registry", "username", "password")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    registry: str
    username: str
    password: str
    def __init__(self, registry: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("registry",)
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    registry: str
    def __init__(self, registry: _Optional[str] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ("registry",)
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    registry: str
    def __init__(self, registry: _Optional[str] = ...) -> None: ...

class LogoutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("name", "brief")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BRIEF_FIELD_NUMBER: _ClassVar[int]
    name: str
    brief: bool
    def __init__(self, name: _Optional[str] = ..., brief: _Optional[bool] = ...) -> None: ...

class GetImageResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class RemoveImageRequest(_message.Message):
    __slots__ = ("name", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveImageResponse(_message.Message):
    __slots__ = ("image", "untagged", "deleted")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    image: Image
    untagged: _containers.RepeatedScalarFieldContainer[str]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., untagged: _Optional[_Iterable[str]] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...

class Rootfs(_message.Message):
    __slots__ = ("container_id", "image", "path", "mounts", "mounted", "volumes", "image_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    MOUNTED_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    image: str
    path: str
    mounts: _containers.RepeatedCompositeFieldContainer[_types_pb2.Mount]
    mounted: bool
    volumes: _containers.RepeatedCompositeFieldContainer[_types_pb2.Volume]
    image_id: str
    def __init__(self, container_id: _Optional[str] = ..., image: _Optional[str] = ..., path: _Optional[str] = ..., mounts: _Optional[_Iterable[_Union[_types_pb2.Mount, _Mapping]]] = ..., mounted: _Optional[bool] = ..., volumes: _Optional[_Iterable[_Union[_types_pb2.Volume, _Mapping]]] = ..., image_id: _Optional[str] = ...) -> None: ...

class PrepareRootfsRequest(_message.Message):
    __slots__ = ("container_id", "image", "volumes", "image_id")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    image: str
    volumes: _containers.RepeatedCompositeFieldContainer[_types_pb2.Volume]
    image_id: str
    def __init__(self, container_id: _Optional[str] = ..., image: _Optional[str] = ..., volumes: _Optional[_Iterable[_Union[_types_pb2.Volume, _Mapping]]] = ..., image_id: _Optional[str] = ...) -> None: ...

class PrepareRootfsResponse(_message.Message):
    __slots__ = ("rootfs",)
    ROOTFS_FIELD_NUMBER: _ClassVar[int]
    rootfs: Rootfs
    def __init__(self, rootfs: _Optional[_Union[Rootfs, _Mapping]] = ...) -> None: ...

class GetRootfsRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class GetRootfsResponse(_message.Message):
    __slots__ = ("rootfs",)
    ROOTFS_FIELD_NUMBER: _ClassVar[int]
    rootfs: Rootfs
    def __init__(self, rootfs: _Optional[_Union[Rootfs, _Mapping]] = ...) -> None: ...

class ListRootfsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRootfsResponse(_message.Message):
    __slots__ = ("rootfs",)
    ROOTFS_FIELD_NUMBER: _ClassVar[int]
    rootfs: _containers.RepeatedCompositeFieldContainer[Rootfs]
    def __init__(self, rootfs: _Optional[_Iterable[_Union[Rootfs, _Mapping]]] = ...) -> None: ...

class RemoveRootfsRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class RemoveRootfsResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class CommitContainerRequest(_message.Message):
    __slots__ = ("container_id", "image", "replace", "changes", "comment", "author", "container_config")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_CONFIG_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    image: str
    replace: bool
    changes: _containers.RepeatedScalarFieldContainer[str]
    comment: str
    author: str
    container_config: ImageConfig
    def __init__(self, container_id: _Optional[str] = ..., image: _Optional[str] = ..., replace: _Optional[bool] = ..., changes: _Optional[_Iterable[str]] = ..., comment: _Optional[str] = ..., author: _Optional[str] = ..., container_config: _Optional[_Union[ImageConfig, _Mapping]] = ...) -> None: ...

class CommitContainerResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class ExportContainerRequest(_message.Message):
    __slots__ = ("container_id",)
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    def __init__(self, container_id: _Optional[str] = ...) -> None: ...

class ExportContainerResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    def __init__(self, chunk: _Optional[bytes] = ...) -> None: ...

class ListVolumesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VolumeUsage(_message.Message):
    __slots__ = ("volume", "container_ids", "size_bytes")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_IDS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    volume: _types_pb2.Volume
    container_ids: _containers.RepeatedScalarFieldContainer[str]
    size_bytes: int
    def __init__(self, volume: _Optional[_Union[_types_pb2.Volume, _Mapping]] = ..., container_ids: _Optional[_Iterable[str]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ListVolumesResponse(_message.Message):
    __slots__ = ("volumes",)
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeUsage]
    def __init__(self, volumes: _Optional[_Iterable[_Union[VolumeUsage, _Mapping]]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LayerUsage(_message.Message):
    __slots__ = ("digest", "size_bytes", "images", "rootfs_count")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_COUNT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size_bytes: int
    images: _containers.RepeatedScalarFieldContainer[str]
    rootfs_count: int
    def __init__(self, digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., images: _Optional[_Iterable[str]] = ..., rootfs_count: _Optional[int] = ...) -> None: ...

class RootfsUsage(_message.Message):
    __slots__ = ("container_id", "upper_size_bytes")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    UPPER_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    upper_size_bytes: int
    def __init__(self, container_id: _Optional[str] = ..., upper_size_bytes: _Optional[int] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("images", "layers", "rootfs", "volumes")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[Image]
    layers: _containers.RepeatedCompositeFieldContainer[LayerUsage]
    rootfs: _containers.RepeatedCompositeFieldContainer[RootfsUsage]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeUsage]
    def __init__(self, images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., layers: _Optional[_Iterable[_Union[LayerUsage, _Mapping]]] = ..., rootfs: _Optional[_Iterable[_Union[RootfsUsage, _Mapping]]] = ..., volumes: _Optional[_Iterable[_Union[VolumeUsage, _Mapping]]] = ...) -> None: ...

class PruneLayersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PruneLayersResponse(_message.Message):
    __slots__ = ("digests", "reclaimed_bytes")
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    RECLAIMED_BYTES_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    reclaimed_bytes: int
    def __init__(self, digests: _Optional[_Iterable[str]] = ..., reclaimed_bytes: _Optional[int] = ...) -> None: ...

class PruneImagesRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class PruneImagesResponse(_message.Message):
    __slots__ = ("untagged", "deleted", "reclaimed_bytes")
    UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    RECLAIMED_BYTES_FIELD_NUMBER: _ClassVar[int]
    untagged: _containers.RepeatedScalarFieldContainer[str]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    reclaimed_bytes: int
    def __init__(self, untagged: _Optional[_Iterable[str]] = ..., deleted: _Optional[_Iterable[str]] = ..., reclaimed_bytes: _Optional[int] = ...) -> None: ...
