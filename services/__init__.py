"""mydocker's gRPC services: state, storage and executor, plus their shared bootstrap."""
