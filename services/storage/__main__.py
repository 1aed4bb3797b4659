"""Entry point: python -m services.storage."""

from protos.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.config import Config
from services.common.server import ServiceDefinition, main_for
from services.storage.core import StorageCore
from services.storage.servicer import StorageServicer


def definition(core: StorageCore) -> ServiceDefinition:
    """The service around an existing core (tests keep the core to read its counters)."""
    servicer = StorageServicer(core)
    return ServiceDefinition(
        name="storage",
        full_name=storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name,
        register=lambda server: storage_pb2_grpc.add_StorageServiceServicer_to_server(servicer, server),
    )


def build(config: Config) -> ServiceDefinition:
    """A core for `config`, with the leftovers of interrupted work cleaned up before serving."""
    core = StorageCore(config)
    core.start()
    return definition(core)


if __name__ == "__main__":
    main_for("storage", build)
