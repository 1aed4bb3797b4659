from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol

class Mount(_message.Message):
    __slots__ = ("type", "source", "target", "options")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    type: str
    source: str
    target: str
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, type: _Optional[str] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class Volume(_message.Message):
    __slots__ = ("host_path", "container_path", "read_only")
    HOST_PATH_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PATH_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    host_path: str
    container_path: str
    read_only: bool
    def __init__(self, host_path: _Optional[str] = ..., container_path: _Optional[str] = ..., read_only: _Optional[bool] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("memory_bytes", "nano_cpus", "cpuset_cpus", "pids_limit")
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NANO_CPUS_FIELD_NUMBER: _ClassVar[int]
    CPUSET_CPUS_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    memory_bytes: int
    nano_cpus: int
    cpuset_cpus: str
    pids_limit: int
    def __init__(self, memory_bytes: _Optional[int] = ..., nano_cpus: _Optional[int] = ..., cpuset_cpus: _Optional[str] = ..., pids_limit: _Optional[int] = ...) -> None: ...

class PortMapping(_message.Message):
    __slots__ = ("host_ip", "host_port", "container_port", "protocol")
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    HOST_PORT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    host_ip: str
    host_port: int
    container_port: int
    protocol: Protocol
    def __init__(self, host_ip: _Optional[str] = ..., host_port: _Optional[int] = ..., container_port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ...) -> None: ...

class SecurityOptions(_message.Message):
    __slots__ = ("privileged", "cap_add", "cap_drop", "seccomp_unconfined", "seccomp_profile", "no_new_privileges", "user", "group_add", "read_only_rootfs", "tmpfs", "devices", "ulimits", "oom_score_adj")
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    CAP_ADD_FIELD_NUMBER: _ClassVar[int]
    CAP_DROP_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_UNCONFINED_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_PROFILE_FIELD_NUMBER: _ClassVar[int]
    NO_NEW_PRIVILEGES_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GROUP_ADD_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_ROOTFS_FIELD_NUMBER: _ClassVar[int]
    TMPFS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ULIMITS_FIELD_NUMBER: _ClassVar[int]
    OOM_SCORE_ADJ_FIELD_NUMBER: _ClassVar[int]
    privileged: bool
    cap_add: _containers.RepeatedScalarFieldContainer[str]
    cap_drop: _containers.RepeatedScalarFieldContainer[str]
    seccomp_unconfined: bool
    seccomp_profile: str
    no_new_privileges: bool
    user: str
    group_add: _containers.RepeatedScalarFieldContainer[str]
    read_only_rootfs: bool
    tmpfs: _containers.RepeatedCompositeFieldContainer[TmpfsMount]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceMapping]
    ulimits: _containers.RepeatedCompositeFieldContainer[Ulimit]
    oom_score_adj: int
    def __init__(self, privileged: _Optional[bool] = ..., cap_add: _Optional[_Iterable[str]] = ..., cap_drop: _Optional[_Iterable[str]] = ..., seccomp_unconfined: _Optional[bool] = ..., seccomp_profile: _Optional[str] = ..., no_new_privileges: _Optional[bool] = ..., user: _Optional[str] = ..., group_add: _Optional[_Iterable[str]] = ..., read_only_rootfs: _Optional[bool] = ..., tmpfs: _Optional[_Iterable[_Union[TmpfsMount, _Mapping]]] = ..., devices: _Optional[_Iterable[_Union[DeviceMapping, _Mapping]]] = ..., ulimits: _Optional[_Iterable[_Union[Ulimit, _Mapping]]] = ..., oom_score_adj: _Optional[int] = ...) -> None: ...

class TmpfsMount(_message.Message):
    __slots__ = ("path", "options")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    path: str
    options: str
    def __init__(self, path: _Optional[str] = ..., options: _Optional[str] = ...) -> None: ...

class DeviceMapping(_message.Message):
    __slots__ = ("host_path", "container_path", "permissions")
    HOST_PATH_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_PATH_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    host_path: str
    container_path: str
    permissions: str
    def __init__(self, host_path: _Optional[str] = ..., container_path: _Optional[str] = ..., permissions: _Optional[str] = ...) -> None: ...

class Ulimit(_message.Message):
    __slots__ = ("name", "soft", "hard")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    name: str
    soft: int
    hard: int
    def __init__(self, name: _Optional[str] = ..., soft: _Optional[int] = ..., hard: _Optional[int] = ...) -> None: ...
