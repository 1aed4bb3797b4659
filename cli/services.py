"""The CLI's access to the three services: lazily built stubs, deadlines, and one-line failures."""

from __future__ import annotations

from functools import cached_property

from services.common.config import Config

DEFAULT_TIMEOUT = 10.0


class CliError(Exception):
    """A failure to show the user as one line; the CLI exits 1."""


class Refused(CliError):
    """A service refused the call as things stand (FAILED_PRECONDITION), e.g. a record another CLI moved on."""


class Services:
    """Stubs for the state, storage and executor services, each on its own unix socket.

    grpc and the generated modules are imported on first use, so commands that need no
    service (version, --help) start without paying for them.
    """

    def __init__(self, config: Config | None = None):
        self.config = config or Config.from_env()
        self._channels: dict[str, object] = {}

    def _channel(self, service: str):
        from services.common.client import open_channel

        if service not in self._channels:
            self._channels[service] = open_channel(self.config, service)
        return self._channels[service]

    def connect_ahead(self, *services: str) -> None:
        """Start connecting to `services` now, so their first calls, made later, find a ready connection.

        A fresh channel's first call waits for the connection and its HTTP/2 handshake (~1 ms here);
        started at once for every service a command needs, those waits overlap each other and the
        command's first calls.
        """
        from services.common.client import start_connecting

        for service in services:
            start_connecting(self._channel(service))

    @cached_property
    def state(self):
        from protos.state.v1 import state_pb2_grpc

        return state_pb2_grpc.StateServiceStub(self._channel("state"))

    @cached_property
    def storage(self):
        from protos.storage.v1 import storage_pb2_grpc

        return storage_pb2_grpc.StorageServiceStub(self._channel("storage"))

    @cached_property
    def executor(self):
        from protos.executor.v1 import executor_pb2_grpc

        return executor_pb2_grpc.ExecutorServiceStub(self._channel("executor"))

    def call(self, service: str, method: str, request, timeout: float = DEFAULT_TIMEOUT, missing_ok: bool = False):
        """Call `service`.`method`; a gRPC failure becomes a CliError with one clear line.

        With `missing_ok`, NOT_FOUND returns None: the thing is already gone, as the caller wanted.
        """
        import grpc

        from services.common.client import describe_rpc_error

        stub = getattr(self, service)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as err:
            if missing_ok and err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            failure = Refused if err.code() == grpc.StatusCode.FAILED_PRECONDITION else CliError
            raise failure(describe_rpc_error(service, self.config, err)) from None

    def call_together(self, calls: list[tuple[str, str, str, object, float]]):
        """Calls to different services at once, each (step, service, method, request, timeout): their replies in order.

        Every call runs to its end; failures, each named by its step, become one CliError.
        """
        import grpc

        from services.common.client import describe_rpc_error

        *others, (last_what, last_service, last_method, last_request, last_timeout) = calls
        # A future starts a thread on its channel (grpc's call spinner): the last call blocks in this one.
        started = [
            (what, service, getattr(getattr(self, service), method).future(request, timeout=timeout))
            for what, service, method, request, timeout in others
        ]
        failures = []
        try:
            last_reply = getattr(getattr(self, last_service), last_method)(last_request, timeout=last_timeout)
        except grpc.RpcError as err:
            last_reply = None
            last_failure = f"{last_what} failed: {describe_rpc_error(last_service, self.config, err)}"
        else:
            last_failure = None
        replies = []
        for what, service, future in started:
            try:
                replies.append(future.result())
            except grpc.RpcError as err:
                failures.append(f"{what} failed: {describe_rpc_error(service, self.config, err)}")
        replies.append(last_reply)
        if last_failure is not None:
            failures.append(last_failure)
        if failures:
            raise CliError("; ".join(failures))
        return replies
