"""gRPC servicer of the storage service; RPCs not listed here answer UNIMPLEMENTED until issue #3 lands."""

from __future__ import annotations

import os

from protos.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.config import VERSION, Config


def count_entries(directory, suffix: str = "") -> int:
    """Number of entries in `directory` ending with `suffix`; 0 when it does not exist yet."""
    try:
        return sum(1 for entry in os.scandir(directory) if entry.name.endswith(suffix))
    except FileNotFoundError:
        return 0


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, config: Config):
        self._config = config

    def GetInfo(self, request, context):
        return storage_pb2.GetInfoResponse(
            version=VERSION,
            root=str(self._config.root),
            driver="overlay2",
            images=count_entries(self._config.root / "image", ".tar"),
            rootfs_count=count_entries(self._config.root / "overlay2"),
            pid=os.getpid(),
        )
