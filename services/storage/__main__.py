"""Entry point: python -m services.storage."""

from protos.storage.v1 import storage_pb2, storage_pb2_grpc
from services.common.config import Config
from services.common.server import ServiceDefinition, main_for
from services.storage.servicer import StorageServicer


def build(config: Config) -> ServiceDefinition:
    servicer = StorageServicer(config)
    return ServiceDefinition(
        name="storage",
        full_name=storage_pb2.DESCRIPTOR.services_by_name["StorageService"].full_name,
        register=lambda server: storage_pb2_grpc.add_StorageServiceServicer_to_server(servicer, server),
    )


if __name__ == "__main__":
    main_for("storage", build)
