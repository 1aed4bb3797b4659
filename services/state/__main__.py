"""Entry point: python -m services.state."""

from protos.state.v1 import state_pb2, state_pb2_grpc
from services.common.config import Config
from services.common.server import ServiceDefinition, main_for
from services.state.core import StateCore
from services.state.servicer import StateServicer
from services.state.store import Store


def build(config: Config) -> ServiceDefinition:
    core = StateCore(Store(config.state_db_path()))
    core.start()
    servicer = StateServicer(core)
    return ServiceDefinition(
        name="state",
        full_name=state_pb2.DESCRIPTOR.services_by_name["StateService"].full_name,
        register=lambda server: state_pb2_grpc.add_StateServiceServicer_to_server(servicer, server),
    )


if __name__ == "__main__":
    main_for("state", build)
