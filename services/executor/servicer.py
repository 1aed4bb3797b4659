"""Thin gRPC servicer of the executor: protos in, ExecutorCore or Networking call, protos out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc

from protos.executor.v1 import executor_pb2 as pb
from protos.executor.v1 import executor_pb2_grpc
from services.common.config import Config
from services.common.errors import InvalidArgument
from services.executor import convert
from services.executor.cgroup_layout import CgroupLayout
from services.executor.cgroups import DEFAULT_CGROUP_ROOT, detect_cgroup_mode
from services.executor.core import ExecutorCore

CGROUP_PARENT_ENV = "MYDOCKER_CGROUP_PARENT"


def build_core(config: Config, cgroup_root: Path = DEFAULT_CGROUP_ROOT, cgroup_parent: str | None = None) -> ExecutorCore:
    """The core for this host: cgroup mode detected now, parent from MYDOCKER_CGROUP_PARENT unless given, else the instance's."""
    parent = cgroup_parent if cgroup_parent is not None else os.environ.get(CGROUP_PARENT_ENV)
    parent = parent or config.default_cgroup_parent()
    layout = CgroupLayout.from_host(cgroup_root, parent)
    layout.prepare(os.getpid())
    return ExecutorCore(config, layout, detect_cgroup_mode(cgroup_root))


def _events(requests: Iterator) -> Iterator:
    """Input events of a stream after its first message; ends when the client's side ends or the call does."""
    try:
        for message in requests:
            event = convert.input_event(message)
            if event is not None:
                yield event
    except grpc.RpcError:
        # The call was cancelled or finished while we waited for input.
        return


def _first(requests: Iterator, field: str, rpc: str):
    try:
        message = next(requests)
    except StopIteration:
        raise InvalidArgument(f"{rpc}: the stream ended before its first message") from None
    if message.WhichOneof("event") != field:
        raise InvalidArgument(f"{rpc}: the first message must carry `{field}`")
    return getattr(message, field)


class ExecutorServicer(executor_pb2_grpc.ExecutorServiceServicer):
    def __init__(self, config: Config, core: ExecutorCore | None = None, cgroup_root: Path = DEFAULT_CGROUP_ROOT):
        self._core = core or build_core(config, cgroup_root)
        self._networking = self._core.networking
        # Before the first call: what a killed executor, killed shims or a reboot left is settled (and logged).
        self._core.reconcile()
        # The shim launcher's interpreter start and imports happen now, not in the first CreateContainer.
        self._core.warm_up()

    def close(self) -> None:
        """Stop the shim launcher once the server has stopped (shims and containers stay)."""
        self._core.close()

    def GetInfo(self, request, context):
        info = self._core.info()
        return pb.GetInfoResponse(
            version=info.version,
            run_root=info.run_root,
            cgroup_version=info.cgroup_version,
            kernel=info.kernel,
            containers_running=info.containers_running,
            pid=info.pid,
        )

    def CreateContainer(self, request, context):
        state = self._core.create(convert.create_from_proto(request))
        return pb.CreateContainerResponse(process=convert.state_to_proto(state))

    def StartContainer(self, request, context):
        return pb.StartContainerResponse(process=convert.state_to_proto(self._core.start(request.id)))

    def KillContainer(self, request, context):
        self._core.kill(request.id, request.signal, request.all)
        return pb.KillContainerResponse()

    def WaitContainer(self, request, context):
        state = self._core.wait(request.id, context.time_remaining(), context.is_active)
        if state is None:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"container {request.id} is still running")
        return pb.WaitContainerResponse(process=convert.state_to_proto(state))

    def DeleteContainer(self, request, context):
        state = self._core.delete(request.id, request.force)
        if state is None:
            return pb.DeleteContainerResponse()
        return pb.DeleteContainerResponse(process=convert.state_to_proto(state))

    def GetContainer(self, request, context):
        return pb.GetContainerResponse(process=convert.state_to_proto(self._core.get(request.id)))

    def ListContainers(self, request, context):
        return pb.ListContainersResponse(processes=[convert.state_to_proto(s) for s in self._core.list()])

    def ListCgroups(self, request, context):
        container_ids, parent = self._core.list_cgroups()
        return pb.ListCgroupsResponse(container_ids=container_ids, parent=parent)

    def Logs(self, request, context):
        since = convert.since_nanoseconds(request)
        for entry in self._core.logs(request.id, request.follow, request.tail, since, context.is_active):
            yield convert.log_entry_to_proto(entry)

    def Exec(self, request_iterator, context):
        start = _first(request_iterator, "start", "Exec")
        window = (start.window_size.rows, start.window_size.cols) if start.HasField("window_size") else None
        events = self._core.exec(
            start.container_id,
            convert.process_from_proto(start.process, start.user, start.privileged),
            window,
            _events(request_iterator),
            context.is_active,
        )
        for event in events:
            yield convert.exec_response(event)

    def Attach(self, request_iterator, context):
        container_id = _first(request_iterator, "container_id", "Attach")
        for event in self._core.attach(container_id, _events(request_iterator), context.is_active):
            response = convert.attach_response(event)
            if response is not None:
                yield response

    def CreateBridge(self, request, context):
        self._networking.create_bridge(convert.bridge_from_proto(request))
        return pb.CreateBridgeResponse()

    def RemoveBridge(self, request, context):
        self._networking.remove_bridge(convert.bridge_from_proto(request))
        return pb.RemoveBridgeResponse()

    def ConnectContainer(self, request, context):
        host_interface = self._networking.connect(convert.connect_from_proto(request))
        return pb.ConnectContainerResponse(host_interface=host_interface)

    def DisconnectContainer(self, request, context):
        self._networking.disconnect(request.container_id)
        return pb.DisconnectContainerResponse()

    def ListContainerRecords(self, request, context):
        return pb.ListContainerRecordsResponse(records=[convert.saved_to_proto(s) for s in self._core.list_records()])

    def ListBridges(self, request, context):
        bridges = [
            pb.Bridge(network=b.network, bridge_name=b.bridge, subnet=b.subnet, present=b.present, gateway=b.gateway)
            for b in self._networking.list_bridges()
        ]
        return pb.ListBridgesResponse(bridges=bridges)
