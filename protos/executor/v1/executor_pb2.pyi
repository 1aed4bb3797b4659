import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from protos.types.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StdioMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STDIO_MODE_UNSPECIFIED: _ClassVar[StdioMode]
    STDIO_MODE_LOG: _ClassVar[StdioMode]
    STDIO_MODE_ATTACH: _ClassVar[StdioMode]

class ProcessStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROCESS_STATUS_UNSPECIFIED: _ClassVar[ProcessStatus]
    PROCESS_STATUS_CREATED: _ClassVar[ProcessStatus]
    PROCESS_STATUS_RUNNING: _ClassVar[ProcessStatus]
    PROCESS_STATUS_EXITED: _ClassVar[ProcessStatus]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]
STDIO_MODE_UNSPECIFIED: StdioMode
STDIO_MODE_LOG: StdioMode
STDIO_MODE_ATTACH: StdioMode
PROCESS_STATUS_UNSPECIFIED: ProcessStatus
PROCESS_STATUS_CREATED: ProcessStatus
PROCESS_STATUS_RUNNING: ProcessStatus
PROCESS_STATUS_EXITED: ProcessStatus
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "run_root", "cgroup_version", "kernel", "containers_running", "pid")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ROOT_FIELD_NUMBER: _ClassVar[int]
    CGROUP_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    version: str
    run_root: str
    cgroup_version: str
    kernel: str
    containers_running: int
    pid: int
    def __init__(self, version: _Optional[str] = ..., run_root: _Optional[str] = ..., cgroup_version: _Optional[str] = ..., kernel: _Optional[str] = ..., containers_running: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class ProcessSpec(_message.Message):
    __slots__ = ("args", "env", "cwd", "terminal", "stdin")
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.RepeatedScalarFieldContainer[str]
    cwd: str
    terminal: bool
    stdin: bool
    def __init__(self, args: _Optional[_Iterable[str]] = ..., env: _Optional[_Iterable[str]] = ..., cwd: _Optional[str] = ..., terminal: _Optional[bool] = ..., stdin: _Optional[bool] = ...) -> None: ...

class CreateContainerRequest(_message.Message):
    __slots__ = ("id", "hostname", "rootfs_path", "process", "resources", "stdio_mode", "network_namespace", "window_size", "ip_address", "security", "record")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    ROOTFS_PATH_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    STDIO_MODE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    id: str
    hostname: str
    rootfs_path: str
    process: ProcessSpec
    resources: _types_pb2.Resources
    stdio_mode: StdioMode
    network_namespace: bool
    window_size: WindowSize
    ip_address: str
    security: _types_pb2.SecurityOptions
    record: _any_pb2.Any
    def __init__(self, id: _Optional[str] = ..., hostname: _Optional[str] = ..., rootfs_path: _Optional[str] = ..., process: _Optional[_Union[ProcessSpec, _Mapping]] = ..., resources: _Optional[_Union[_types_pb2.Resources, _Mapping]] = ..., stdio_mode: _Optional[_Union[StdioMode, str]] = ..., network_namespace: _Optional[bool] = ..., window_size: _Optional[_Union[WindowSize, _Mapping]] = ..., ip_address: _Optional[str] = ..., security: _Optional[_Union[_types_pb2.SecurityOptions, _Mapping]] = ..., record: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class ContainerProcess(_message.Message):
    __slots__ = ("id", "status", "pid", "pid_start_time", "shim_pid", "exit_code", "oom_killed", "exited_at", "cgroup_path", "log_path", "security")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    PID_START_TIME_FIELD_NUMBER: _ClassVar[int]
    SHIM_PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    EXITED_AT_FIELD_NUMBER: _ClassVar[int]
    CGROUP_PATH_FIELD_NUMBER: _ClassVar[int]
    LOG_PATH_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: ProcessStatus
    pid: int
    pid_start_time: int
    shim_pid: int
    exit_code: int
    oom_killed: bool
    exited_at: _timestamp_pb2.Timestamp
    cgroup_path: str
    log_path: str
    security: SecurityProfile
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[ProcessStatus, str]] = ..., pid: _Optional[int] = ..., pid_start_time: _Optional[int] = ..., shim_pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ..., exited_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cgroup_path: _Optional[str] = ..., log_path: _Optional[str] = ..., security: _Optional[_Union[SecurityProfile, _Mapping]] = ...) -> None: ...

class SecurityProfile(_message.Message):
    __slots__ = ("privileged", "capabilities", "seccomp", "no_new_privileges", "masked_paths", "readonly_paths", "read_only_rootfs", "user", "group_add", "device_rules", "ulimits", "oom_score_adj")
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    NO_NEW_PRIVILEGES_FIELD_NUMBER: _ClassVar[int]
    MASKED_PATHS_FIELD_NUMBER: _ClassVar[int]
    READONLY_PATHS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_ROOTFS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_ADD_FIELD_NUMBER: _ClassVar[int]
    DEVICE_RULES_FIELD_NUMBER: _ClassVar[int]
    ULIMITS_FIELD_NUMBER: _ClassVar[int]
    OOM_SCORE_ADJ_FIELD_NUMBER: _ClassVar[int]
    privileged: bool
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    seccomp: str
    no_new_privileges: bool
    masked_paths: _containers.RepeatedScalarFieldContainer[str]
    readonly_paths: _containers.RepeatedScalarFieldContainer[str]
    read_only_rootfs: bool
    user: str
    group_add: _containers.RepeatedScalarFieldContainer[str]
    device_rules: _containers.RepeatedScalarFieldContainer[str]
    ulimits: _containers.RepeatedCompositeFieldContainer[_types_pb2.Ulimit]
    oom_score_adj: int
    def __init__(self, privileged: _Optional[bool] = ..., capabilities: _Optional[_Iterable[str]] = ..., seccomp: _Optional[str] = ..., no_new_privileges: _Optional[bool] = ..., masked_paths: _Optional[_Iterable[str]] = ..., readonly_paths: _Optional[_Iterable[str]] = ..., read_only_rootfs: _Optional[bool] = ..., user: _Optional[str] = ..., group_add: _Optional[_Iterable[str]] = ..., device_rules: _Optional[_Iterable[str]] = ..., ulimits: _Optional[_Iterable[_Union[_types_pb2.Ulimit, _Mapping]]] = ..., oom_score_adj: _Optional[int] = ...) -> None: ...

class CreateContainerResponse(_message.Message):
    __slots__ = ("process",)
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    process: ContainerProcess
    def __init__(self, process: _Optional[_Union[ContainerProcess, _Mapping]] = ...) -> None: ...

class StartContainerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StartContainerResponse(_message.Message):
    __slots__ = ("process",)
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    process: ContainerProcess
    def __init__(self, process: _Optional[_Union[ContainerProcess, _Mapping]] = ...) -> None: ...

class KillContainerRequest(_message.Message):
    __slots__ = ("id", "signal", "all")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    id: str
    signal: int
    all: bool
    def __init__(self, id: _Optional[str] = ..., signal: _Optional[int] = ..., all: _Optional[bool] = ...) -> None: ...

class KillContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WaitContainerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WaitContainerResponse(_message.Message):
    __slots__ = ("process",)
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    process: ContainerProcess
    def __init__(self, process: _Optional[_Union[ContainerProcess, _Mapping]] = ...) -> None: ...

class DeleteContainerRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteContainerResponse(_message.Message):
    __slots__ = ("process",)
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    process: ContainerProcess
    def __init__(self, process: _Optional[_Union[ContainerProcess, _Mapping]] = ...) -> None: ...

class GetContainerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetContainerResponse(_message.Message):
    __slots__ = ("process",)
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    process: ContainerProcess
    def __init__(self, process: _Optional[_Union[ContainerProcess, _Mapping]] = ...) -> None: ...

class ListContainersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListContainersResponse(_message.Message):
    __slots__ = ("processes",)
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[ContainerProcess]
    def __init__(self, processes: _Optional[_Iterable[_Union[ContainerProcess, _Mapping]]] = ...) -> None: ...

class ListCgroupsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCgroupsResponse(_message.Message):
    __slots__ = ("container_ids", "parent")
    CONTAINER_IDS_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    container_ids: _containers.RepeatedScalarFieldContainer[str]
    parent: str
    def __init__(self, container_ids: _Optional[_Iterable[str]] = ..., parent: _Optional[str] = ...) -> None: ...

class WindowSize(_message.Message):
    __slots__ = ("rows", "cols")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ...) -> None: ...

class ExecStart(_message.Message):
    __slots__ = ("container_id", "process", "window_size", "user", "privileged")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    process: ProcessSpec
    window_size: WindowSize
    user: str
    privileged: bool
    def __init__(self, container_id: _Optional[str] = ..., process: _Optional[_Union[ProcessSpec, _Mapping]] = ..., window_size: _Optional[_Union[WindowSize, _Mapping]] = ..., user: _Optional[str] = ..., privileged: _Optional[bool] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("start", "stdin", "close_stdin", "resize", "signal")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    start: ExecStart
    stdin: bytes
    close_stdin: bool
    resize: WindowSize
    signal: int
    def __init__(self, start: _Optional[_Union[ExecStart, _Mapping]] = ..., stdin: _Optional[bytes] = ..., close_stdin: _Optional[bool] = ..., resize: _Optional[_Union[WindowSize, _Mapping]] = ..., signal: _Optional[int] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("pid", "stdout", "stderr", "exit_code")
    PID_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    pid: int
    stdout: bytes
    stderr: bytes
    exit_code: int
    def __init__(self, pid: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("container_id", "stdin", "close_stdin", "resize", "signal")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    stdin: bytes
    close_stdin: bool
    resize: WindowSize
    signal: int
    def __init__(self, container_id: _Optional[str] = ..., stdin: _Optional[bytes] = ..., close_stdin: _Optional[bool] = ..., resize: _Optional[_Union[WindowSize, _Mapping]] = ..., signal: _Optional[int] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "oom_killed")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLED_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    oom_killed: bool
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ..., oom_killed: _Optional[bool] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("id", "follow", "tail", "since")
    ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    follow: bool
    tail: int
    since: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., follow: _Optional[bool] = ..., tail: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LogsResponse(_message.Message):
    __slots__ = ("stream", "data", "time")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    stream: LogStream
    data: bytes
    time: _timestamp_pb2.Timestamp
    def __init__(self, stream: _Optional[_Union[LogStream, str]] = ..., data: _Optional[bytes] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateBridgeRequest(_message.Message):
    __slots__ = ("network", "bridge_name", "subnet", "gateway")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    network: str
    bridge_name: str
    subnet: str
    gateway: str
    def __init__(self, network: _Optional[str] = ..., bridge_name: _Optional[str] = ..., subnet: _Optional[str] = ..., gateway: _Optional[str] = ...) -> None: ...

class CreateBridgeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveBridgeRequest(_message.Message):
    __slots__ = ("network", "bridge_name", "subnet")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    network: str
    bridge_name: str
    subnet: str
    def __init__(self, network: _Optional[str] = ..., bridge_name: _Optional[str] = ..., subnet: _Optional[str] = ...) -> None: ...

class RemoveBridgeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConnectContainerRequest(_message.Message):
    __slots__ = ("container_id", "bridge_name", "address", "prefix_length", "gateway", "ports")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    bridge_name: str
    address: str
    prefix_length: int
    gateway: str
    ports: _containers.RepeatedCompositeFieldContainer[_types_pb2.PortMapping]
    def __init__(self, container_id: _Optional[str] = ..., bridge_name: _Optional[str] = ..., address: _Optional[str] = ..., prefix_length: _Optional[int] = ..., gateway: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[_types_pb2.PortMapping, _Mapping]]] = ...) -> None: ...

class ConnectContainerResponse(_message.Message):
    __slots__ = ("host_interface",)
    HOST_INTERFACE_FIELD_NUMBER: _ClassVar[int]
    host_interface: str
    def __init__(self, host_interface: _Optional[str] = ...) -> None: ...

class DisconnectContainerRequest(_message.Message):
    __slots__ = ("container_id", "address", "ports")
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    container_id: str
    address: str
    ports: _containers.RepeatedCompositeFieldContainer[_types_pb2.PortMapping]
    def __init__(self, container_id: _Optional[str] = ..., address: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[_types_pb2.PortMapping, _Mapping]]] = ...) -> None: ...

class DisconnectContainerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBridgesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Bridge(_message.Message):
    __slots__ = ("network", "bridge_name", "subnet", "present", "gateway")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    network: str
    bridge_name: str
    subnet: str
    present: bool
    gateway: str
    def __init__(self, network: _Optional[str] = ..., bridge_name: _Optional[str] = ..., subnet: _Optional[str] = ..., present: _Optional[bool] = ..., gateway: _Optional[str] = ...) -> None: ...

class ListBridgesResponse(_message.Message):
    __slots__ = ("bridges",)
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    bridges: _containers.RepeatedCompositeFieldContainer[Bridge]
    def __init__(self, bridges: _Optional[_Iterable[_Union[Bridge, _Mapping]]] = ...) -> None: ...

class ListContainerRecordsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContainerRecord(_message.Message):
    __slots__ = ("id", "request", "request_from_plan", "process", "bridge_name", "address", "ports", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FROM_PLAN_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    BRIDGE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    request: CreateContainerRequest
    request_from_plan: bool
    process: ContainerProcess
    bridge_name: str
    address: str
    ports: _containers.RepeatedCompositeFieldContainer[_types_pb2.PortMapping]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., request: _Optional[_Union[CreateContainerRequest, _Mapping]] = ..., request_from_plan: _Optional[bool] = ..., process: _Optional[_Union[ContainerProcess, _Mapping]] = ..., bridge_name: _Optional[str] = ..., address: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[_types_pb2.PortMapping, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListContainerRecordsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[ContainerRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[ContainerRecord, _Mapping]]] = ...) -> None: ...
