"""The shared server bootstrap: socket permissions, error mapping, graceful stop and single instance."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import grpc
import pytest

from services.common import errors
from services.common.server import ServiceDefinition, single_instance

SERVICE = "mydocker.test.v1.TestService"


def identity(data: bytes) -> bytes:
    return data


def service_with(behaviours: dict[str, grpc.RpcMethodHandler]) -> ServiceDefinition:
    handler = grpc.method_handlers_generic_handler(SERVICE, behaviours)
    return ServiceDefinition(name="test", full_name=SERVICE, register=lambda server: server.add_generic_rpc_handlers((handler,)))


def unary(behaviour) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=identity, response_serializer=identity)


def stream(behaviour) -> grpc.RpcMethodHandler:
    return grpc.unary_stream_rpc_method_handler(behaviour, request_deserializer=identity, response_serializer=identity)


def call(channel: grpc.Channel, method: str, streaming: bool = False, timeout: float = 5):
    path = f"/{SERVICE}/{method}"
    if streaming:
        return list(channel.unary_stream(path)(b"", timeout=timeout))
    return channel.unary_unary(path)(b"", timeout=timeout)


def raiser(error: Exception):
    def behaviour(request, context):
        raise error

    return behaviour


def test_socket_is_root_only_and_stale_socket_is_replaced(start_server, temp_config):
    socket = temp_config.socket_path("test")
    socket.parent.mkdir(parents=True)
    socket.write_text("stale")
    running, channel = start_server(service_with({"Ok": unary(lambda request, context: b"ok")}))
    assert stat.S_ISSOCK(os.stat(socket).st_mode)
    assert stat.S_IMODE(os.stat(socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(socket.parent).st_mode) == 0o700
    assert call(channel, "Ok") == b"ok"
    running.stop(grace=1)
    assert not socket.exists()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound("no such container: x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("name taken"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.InvalidArgument("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition("running"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_domain_errors_map_to_status_codes_in_unary_and_streaming_calls(start_server, error, code):
    def stream_then_fail(request, context):
        yield b"first"
        raise error

    _, channel = start_server(service_with({"Unary": unary(raiser(error)), "Stream": stream(stream_then_fail)}))
    for streaming, method in ((False, "Unary"), (True, "Stream")):
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, method, streaming)
        assert caught.value.code() == code
        assert caught.value.details() == str(error)


def test_unexpected_error_is_internal_and_logged_with_traceback(start_server, caplog):
    _, channel = start_server(service_with({"Boom": unary(raiser(ValueError("kaboom")))}))
    with caplog.at_level(logging.ERROR, logger="services.common.grpc_errors"):
        with pytest.raises(grpc.RpcError) as caught:
            call(channel, "Boom")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "ValueError: kaboom" in caught.value.details()
    records = [record for record in caplog.records if "Boom" in record.getMessage()]
    assert records and records[0].exc_info is not None


def test_graceful_stop_lets_in_flight_calls_finish(start_server):
    entered = threading.Event()

    def slow(request, context):
        entered.set()
        time.sleep(0.5)
        return b"done"

    running, channel = start_server(service_with({"Slow": unary(slow)}))
    result: dict[str, bytes] = {}
    caller = threading.Thread(target=lambda: result.setdefault("reply", call(channel, "Slow")))
    caller.start()
    assert entered.wait(5)
    running.stop(grace=5)
    caller.join(5)
    assert result.get("reply") == b"done"


def test_second_instance_is_refused(tmp_path):
    lock = tmp_path / "state.lock"
    with single_instance(lock, "state"):
        with pytest.raises(SystemExit, match="another state service holds"):
            with single_instance(lock, "state"):
                pass
    with single_instance(lock, "state"):
        pass


def make_certificates(directory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it; and a rogue client's."""
    import subprocess

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=mdk-test-ca", "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rogue-ca", "-keyout", "rogue-ca.key", "-out", "rogue-ca.pem")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ca, extension in (("server", "ca", ["-extfile", "server.ext"]), ("client", "ca", []), ("rogue", "rogue-ca", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-days", "1", "-out", f"{name}.pem", *extension)
    return {name: str(directory / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "rogue.pem", "rogue.key")}


def test_tcp_needs_mutual_tls_and_refuses_clients_without_a_certificate_of_its_ca(tmp_path):
    from pathlib import Path

    from services.common.server import MutualTls, create_server

    definition = service_with({"Ok": unary(lambda request, context: b"ok")})
    with pytest.raises(SystemExit, match="needs mutual TLS"):
        create_server(definition, "127.0.0.1:0")
    files = make_certificates(tmp_path)
    tls = MutualTls(Path(files["server.pem"]), Path(files["server.key"]), Path(files["ca.pem"]))
    running = create_server(definition, "127.0.0.1:0", tls=tls)
    try:
        ca = Path(files["ca.pem"]).read_bytes()

        def channel_with(key: str | None, cert: str | None) -> grpc.Channel:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca,
                private_key=Path(files[key]).read_bytes() if key else None,
                certificate_chain=Path(files[cert]).read_bytes() if cert else None,
            )
            return grpc.secure_channel(running.address, credentials)

        with channel_with("client.key", "client.pem") as trusted:
            assert call(trusted, "Ok") == b"ok"
        for key, cert in ((None, None), ("rogue.key", "rogue.pem")):
            with channel_with(key, cert) as untrusted, pytest.raises(grpc.RpcError) as caught:
                call(untrusted, "Ok", timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(running.address) as plain, pytest.raises(grpc.RpcError):
            call(plain, "Ok", timeout=5)
    finally:
        running.stop(grace=1)
