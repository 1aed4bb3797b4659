"""gRPC servicer of the executor service; RPCs not listed here answer UNIMPLEMENTED until issue #3 lands."""

from __future__ import annotations

import os
import re
from pathlib import Path

from protos.executor.v1 import executor_pb2, executor_pb2_grpc
from services.common.config import VERSION, Config
from services.executor.cgroups import DEFAULT_CGROUP_ROOT, detect_cgroup_mode

CONTAINER_ID = re.compile(r"[0-9]{10}")


def count_container_dirs(run_root: Path) -> int:
    """Containers with shim state under MYDOCKER_RUN/<10-digit id>/."""
    try:
        return sum(1 for entry in os.scandir(run_root) if entry.is_dir() and CONTAINER_ID.fullmatch(entry.name))
    except FileNotFoundError:
        return 0


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, config: Config, cgroup_root=DEFAULT_CGROUP_ROOT):
        self._config = config
        self._cgroup_mode = detect_cgroup_mode(cgroup_root)

    def GetInfo(self, request, context):
        return executor_pb2.GetInfoResponse(
            version=VERSION,
            run_root=str(self._config.run),
            cgroup_version=self._cgroup_mode,
            kernel=os.uname().release,
            containers_running=count_container_dirs(self._config.run),
            pid=os.getpid(),
        )
