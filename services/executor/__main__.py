"""Entry point: python -m services.executor."""

from protos.executor.v1 import executor_pb2, executor_pb2_grpc
from services.common.config import Config
from services.common.server import ServiceDefinition, main_for
from services.executor.servicer import ExecutorServicer


def build(config: Config) -> ServiceDefinition:
    servicer = ExecutorServicer(config)
    return ServiceDefinition(
        name="executor",
        full_name=executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name,
        register=lambda server: executor_pb2_grpc.add_ExecutorServiceServicer_to_server(servicer, server),
        on_stop=servicer.close,
    )


if __name__ == "__main__":
    main_for("executor", build)
