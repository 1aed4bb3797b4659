"""Thin gRPC servicer of the state service: protos in, StateCore call, protos out."""

from __future__ import annotations

from protos.state.v1 import state_pb2, state_pb2_grpc
from services.state import convert
from services.state.core import StateCore


class StateServicer(state_pb2_grpc.StateServiceServicer):
    def __init__(self, core: StateCore):
        self._core = core

    def GetInfo(self, request, context):
        info = self._core.info()
        return state_pb2.GetInfoResponse(
            version=info.version,
            database_path=info.database_path,
            schema_version=info.schema_version,
            containers=info.containers,
            networks=info.networks,
            pid=info.pid,
            damaged_database=info.damaged_database,
        )

    def CreateContainer(self, request, context):
        container = self._core.create_container(convert.spec_from_proto(request), convert.owner_of(request))
        return state_pb2.CreateContainerResponse(container=convert.container_to_proto(container))

    def GetContainer(self, request, context):
        container = self._core.get_container(request.reference)
        return state_pb2.GetContainerResponse(container=convert.container_to_proto(container))

    def ListContainers(self, request, context):
        containers = self._core.list_containers(
            statuses=tuple(convert.status_from_proto(status) for status in request.statuses),
            image=request.image,
            network=request.network,
            labels=dict(request.labels),
        )
        return state_pb2.ListContainersResponse(containers=[convert.container_to_proto(c) for c in containers])

    def UpdateContainerStatus(self, request, context):
        container = self._core.update_container_status(
            request.id,
            convert.status_from_proto(request.status),
            pid=request.pid,
            pid_start_time=request.pid_start_time,
            shim_pid=request.shim_pid,
            exit_code=request.exit_code,
            oom_killed=request.oom_killed,
            error=request.error,
            owner=convert.owner_of(request),
            then_removing=request.then_removing,
        )
        return state_pb2.UpdateContainerStatusResponse(container=convert.container_to_proto(container))

    def DeleteContainer(self, request, context):
        container = self._core.delete_container(request.id)
        return state_pb2.DeleteContainerResponse(container=convert.container_to_proto(container))

    def RestoreContainer(self, request, context):
        container = self._core.restore_container(convert.container_from_proto(request.container))
        return state_pb2.RestoreContainerResponse(container=convert.container_to_proto(container))

    def CreateNetwork(self, request, context):
        network = self._core.create_network(
            request.name, request.driver, request.subnet, request.gateway, dict(request.labels)
        )
        return state_pb2.CreateNetworkResponse(network=convert.network_to_proto(network, self._core.instance))

    def GetNetwork(self, request, context):
        network, allocations = self._core.get_network(request.name)
        return state_pb2.GetNetworkResponse(
            network=convert.network_to_proto(network, self._core.instance),
            allocations=[convert.allocation_to_proto(a) for a in allocations],
        )

    def ListNetworks(self, request, context):
        networks = self._core.list_networks()
        return state_pb2.ListNetworksResponse(networks=[convert.network_to_proto(n, self._core.instance) for n in networks])

    def DeleteNetwork(self, request, context):
        network = self._core.delete_network(request.name)
        return state_pb2.DeleteNetworkResponse(network=convert.network_to_proto(network, self._core.instance))

    def AllocateAddress(self, request, context):
        assignment = self._core.allocate_address(request.network, request.container_id)
        return state_pb2.AllocateAddressResponse(
            allocation=convert.allocation_to_proto(assignment.allocation),
            prefix_length=assignment.prefix_length,
            gateway=assignment.gateway,
        )

    def ReleaseAddress(self, request, context):
        allocation = self._core.release_address(request.network, request.container_id)
        return state_pb2.ReleaseAddressResponse(allocation=convert.allocation_to_proto(allocation))

    def ListAddresses(self, request, context):
        allocations = self._core.list_addresses(request.network)
        return state_pb2.ListAddressesResponse(allocations=[convert.allocation_to_proto(a) for a in allocations])
