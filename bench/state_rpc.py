"""Latency of the state service's hot RPCs over a real unix-socket channel."""

from __future__ import annotations

import argparse
import time

import grpc

from bench.common import summary, temp_roots
from protos.state.v1 import state_pb2 as pb
from protos.state.v1 import state_pb2_grpc
from services.common.config import Config, unix_target
from services.common.server import create_server
from services.state.__main__ import build


def timed(call, request) -> float:
    start = time.perf_counter()
    call(request, timeout=10)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=500)
    args = parser.parse_args()
    with temp_roots() as (root, run):
        config = Config(root=root, run=run)
        running = create_server(build(config), f"unix:{config.socket_path('state')}")
        try:
            with grpc.insecure_channel(unix_target(config.socket_path("state"))) as channel:
                state = state_pb2_grpc.StateServiceStub(channel)
                state.GetInfo(pb.GetInfoRequest(), timeout=10)
                create = [
                    timed(state.CreateContainer, pb.CreateContainerRequest(image="busybox", command=["top"]))
                    for _ in range(args.records)
                ]
                ids = [c.id for c in state.ListContainers(pb.ListContainersRequest(), timeout=10).containers]
                get = [timed(state.GetContainer, pb.GetContainerRequest(reference=i[:8])) for i in ids[:200]]
                listing = [timed(state.ListContainers, pb.ListContainersRequest()) for _ in range(50)]
                state.CreateNetwork(pb.CreateNetworkRequest(name="bench", subnet="10.200.0.0/16"), timeout=10)
                allocate = [
                    timed(state.AllocateAddress, pb.AllocateAddressRequest(network="bench", container_id=i))
                    for i in ids
                ]
        finally:
            running.stop(grace=1)
    print(summary("CreateContainer", create))
    print(summary("GetContainer (8-digit prefix)", get))
    print(summary(f"ListContainers ({args.records} records)", listing))
    print(summary("AllocateAddress (/16)", allocate))


if __name__ == "__main__":
    main()
