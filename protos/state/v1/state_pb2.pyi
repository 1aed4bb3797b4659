import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.types.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContainerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTAINER_STATUS_UNSPECIFIED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_CREATED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_RUNNING: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_STOPPED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_EXITED: _ClassVar[ContainerStatus]
    CONTAINER_STATUS_REMOVING: _ClassVar[ContainerStatus]
CONTAINER_STATUS_UNSPECIFIED: ContainerStatus
CONTAINER_STATUS_CREATED: ContainerStatus
CONTAINER_STATUS_RUNNING: ContainerStatus
CONTAINER_STATUS_STOPPED: ContainerStatus
CONTAINER_STATUS_EXITED: ContainerStatus
CONTAINER_STATUS_REMOVING: ContainerStatus

class Container(_message.Message):
    __slots__ = ("id", "name", "image", "command", "env", "volumes", "resources", "network", "ports", "ip", "labels", "hostname", "working_dir", "tty", "stdin_open", "auto_remove", "status", "created_at", "started_at", "finished_at", "pid", "pid_start_time", "shim_pid", "exit_code", "oom_killed", "error", "owner", "security", "image_id", "stop_signal")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_OPEN_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_START_TIME_FIELD_NUMBER: _ClassVar[int]
    SHIM_PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    volumes: _containers.RepeatedCompositeFieldContainer[_types_pb2.Volume]
    resources: _types_pb2.Resources
    network: str
    ports: _containers.RepeatedCompositeFieldContainer[_types_pb2.PortMapping]
    ip: str
    labels: _containers.ScalarMap[str, str]
    hostname: str
    working_dir: str
    tty: bool
    stdin_open: bool
    auto_remove: bool
    status: ContainerStatus
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    pid: int
    pid_start_time: int
    shim_pid: int
    exit_code: int
    oom_killed: bool
    error: str
    owner: Owner
    security: _types_pb2.SecurityOptions
    image_id: str
    stop_signal: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., volumes: _Optional[_Iterable[_Union[_types_pb2.Volume, _Mapping]]] = ..., resources: _Optional[_Union[_types_pb2.Resources, _Mapping]] = ..., network: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[_types_pb2.PortMapping, _Mapping]]] = ..., ip: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., hostname: _Optional[str] = ..., working_dir: _Optional[str] = ..., tty: _Optional[bool] = ..., stdin_open: _Optional[bool] = ..., auto_remove: _Optional[bool] = ..., status: _Optional[_Union[ContainerStatus, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pid: _Optional[int] = ..., pid_start_time: _Optional[int] = ..., shim_pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., error: _Optional[str] = ..., owner: _Optional[_Union[Owner, _Mapping]] = ..., security: _Optional[_Union[_types_pb2.SecurityOptions, _Mapping]] = ..., image_id: _Optional[str] = ..., stop_signal: _Optional[str] = ...) -> None: ...

class Owner(_message.Message):
    __slots__ = ("pid", "pid_start_time")
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_START_TIME_FIELD_NUMBER: _ClassVar[int]
    pid: int
    pid_start_time: int
    def __init__(self, pid: _Optional[int] = ..., pid_start_time: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "database_path", "schema_version", "containers", "networks", "pid", "damaged_database")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATABASE_PATH_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_DATABASE_FIELD_NUMBER: _ClassVar[int]
    version: str
    database_path: str
    schema_version: int
    containers: int
    networks: int
    pid: int
    damaged_database: str
    def __init__(self, version: _Optional[str] = ..., database_path: _Optional[str] = ..., schema_version: _Optional[int] = ..., containers: _Optional[int] = ..., networks: _Optional[int] = ..., pid: _Optional[int] = ..., damaged_database: _Optional[str] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("name", "image", "command", "env", "volumes", "resources", "network", "ports", "labels", "hostname", "working_dir", "tty", "stdin_open", "auto_remove", "owner", "security", "image_id", "stop_signal")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    TTY_FIELD_NUMBER: _ClassVar[int]
    STDIN_OPEN_FIELD_NUMBER: _ClassVar[int]
    AUTO_REMOVE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    volumes: _containers.RepeatedCompositeFieldContainer[_types_pb2.Volume]
    resources: _types_pb2.Resources
    network: str
    ports: _containers.RepeatedCompositeFieldContainer[_types_pb2.PortMapping]
    labels: _containers.ScalarMap[str, str]
    hostname: str
    working_dir: str
    tty: bool
    stdin_open: bool
    auto_remove: bool
    owner: Owner
    security: _types_pb2.SecurityOptions
    image_id: str
    stop_signal: str
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., volumes: _Optional[_Iterable[_Union[_types_pb2.Volume, _Mapping]]] = ..., resources: _Optional[_Union[_types_pb2.Resources, _Mapping]] = ..., network: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[_types_pb2.PortMapping, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., hostname: _Optional[str] = ..., working_dir: _Optional[str] = ..., tty: _Optional[bool] = ..., stdin_open: _Optional[bool] = ..., auto_remove: _Optional[bool] = ..., owner: _Optional[_Union[Owner, _Mapping]] = ..., security: _Optional[_Union[_types_pb2.SecurityOptions, _Mapping]] = ..., image_id: _Optional[str] = ..., stop_signal: _Optional[str] = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class GetContainerRequest(_message.Message):
    __slots__ = ("reference",)
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    reference: str
    def __init__(self, reference: _Optional[str] = ...) -> None: ...

class GetContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class ListContainersRequest(_message.Message):
    __slots__ = ("statuses", "image", "network", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[ContainerStatus]
    image: str
    network: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, statuses: _Optional[_Iterable[_Union[ContainerStatus, str]]] = ..., image: _Optional[str] = ..., network: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListContainersResponse(_message.Message):
    __slots__ = ("containers",)
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    containers: _containers.RepeatedCompositeFieldContainer[Container]
    def __init__(self, containers: _Optional[_Iterable[_Union[Container, _Mapping]]] = ...) -> None: ...

class UpdateContainerStatusRequest(_message.Message):
    __slots__ = ("id", "status", "pid", "pid_start_time", "shim_pid", "exit_code", "oom_killed", "error", "owner", "then_removing")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_START_TIME_FIELD_NUMBER: _ClassVar[int]
    SHIM_PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    THEN_REMOVING_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: ContainerStatus
    pid: int
    pid_start_time: int
    shim_pid: int
    exit_code: int
    oom_killed: bool
    error: str
    owner: Owner
    then_removing: bool
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[ContainerStatus, str]] = ..., pid: _Optional[int] = ..., pid_start_time: _Optional[int] = ..., shim_pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., error: _Optional[str] = ..., owner: _Optional[_Union[Owner, _Mapping]] = ..., then_removing: _Optional[bool] = ...) -> None: ...

class UpdateContainerStatusResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class DeleteContainerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class RestoreContainerRequest(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class RestoreContainerResponse(_message.Message):
    __slots__ = ("container",)
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    container: Container
    def __init__(self, container: _Optional[_Union[Container, _Mapping]] = ...) -> None: ...

class Network(_message.Message):
    __slots__ = ("name", "driver", "subnet", "gateway", "labels", "created_at", "bridge")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    driver: str
    subnet: str
    gateway: str
    labels: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    bridge: str
    def __init__(self, name: _Optional[str] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bridge: _Optional[str] = ...) -> None: ...

class CreateNetworkRequest(_message.Message):
    __slots__ = ("name", "driver", "subnet", "gateway", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    driver: str
    subnet: str
    gateway: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., driver: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateNetworkResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class GetNetworkRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetNetworkResponse(_message.Message):
    __slots__ = ("network", "allocations")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    network: Network
    allocations: _containers.RepeatedCompositeFieldContainer[AddressAllocation]
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ..., allocations: _Optional[_Iterable[_Union[AddressAllocation, _Mapping]]] = ...) -> None: ...

class ListNetworksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNetworksResponse(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[Network]
    def __init__(self, networks: _Optional[_Iterable[_Union[Network, _Mapping]]] = ...) -> None: ...

class DeleteNetworkRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteNetworkResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: Network
    def __init__(self, network: _Optional[_Union[Network, _Mapping]] = ...) -> None: ...

class AddressAllocation(_message.Message):
    __slots__ = ("network", "address", "owner")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    network: str
    address: str
    owner: str
    def __init__(self, network: _Optional[str] = ..., address: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class AllocateAddressRequest(_message.Message):
    __slots__ = ("network", "container_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    container_id: str
    def __init__(self, network: _Optional[str] = ..., container_id: _Optional[str] = ...) -> None: ...

class AllocateAddressResponse(_message.Message):
    __slots__ = ("allocation", "prefix_length", "gateway")
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    allocation: AddressAllocation
    prefix_length: int
    gateway: str
    def __init__(self, allocation: _Optional[_Union[AddressAllocation, _Mapping]] = ..., prefix_length: _Optional[int] = ..., gateway: _Optional[str] = ...) -> None: ...

class ReleaseAddressRequest(_message.Message):
    __slots__ = ("network", "container_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    container_id: str
    def __init__(self, network: _Optional[str] = ..., container_id: _Optional[str] = ...) -> None: ...

class ReleaseAddressResponse(_message.Message):
    __slots__ = ("allocation",)
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    allocation: AddressAllocation
    def __init__(self, allocation: _Optional[_Union[AddressAllocation, _Mapping]] = ...) -> None: ...

class ListAddressesRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: str
    def __init__(self, network: _Optional[str] = ...) -> None: ...

class ListAddressesResponse(_message.Message):
    __slots__ = ("allocations",)
    ALLOCATIONS_FIELD_NUMBER: _ClassVar[int]
    allocations: _containers.RepeatedCompositeFieldContainer[AddressAllocation]
    def __init__(self, allocations: _Optional[_Iterable[_Union[AddressAllocation, _Mapping]]] = ...) -> None: ...
