"""A running server's socket, pidfile and lock deleted or replaced under it: made again, calls in flight untouched."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import unix_target
from services.common.runfiles import RunFiles, write_pidfile
from services.common.server import create_server, single_instance
from tests.contract.test_server import call, service_with, stream, unary

RUNFILES_LOG = "services.common.runfiles"


def health_of(socket) -> str:
    with grpc.insecure_channel(unix_target(socket)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def fresh_call(socket, method: str) -> bytes:
    with grpc.insecure_channel(unix_target(socket)) as channel:
        return call(channel, method)


def messages(caplog, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


def test_a_deleted_socket_is_bound_again_and_calls_in_flight_run_to_their_end(start_server, temp_config, caplog):
    release = threading.Event()
    entered = threading.Barrier(3)

    def slow(request, context):
        entered.wait(5)
        assert release.wait(30)
        return b"slow done"

    def ticks(request, context):
        yield b"first"
        entered.wait(5)
        assert release.wait(30)
        yield b"second"

    stops: list[str] = []
    definition = service_with({"Ok": unary(lambda request, context: b"ok"), "Slow": unary(slow), "Ticks": stream(ticks)})
    definition.on_stop = lambda: stops.append("stopped")
    running, channel = start_server(definition)
    socket = temp_config.socket_path("test")
    before = os.lstat(socket).st_ino

    results: dict[str, object] = {}
    callers = [
        threading.Thread(target=lambda: results.setdefault("unary", call(channel, "Slow", timeout=30))),
        threading.Thread(target=lambda: results.setdefault("stream", call(channel, "Ticks", streaming=True, timeout=30))),
    ]
    for caller in callers:
        caller.start()
    entered.wait(5)  # both calls are in flight on the first server

    socket.unlink()
    with caplog.at_level(logging.WARNING, logger=RUNFILES_LOG):
        assert running.check_socket()
        assert not running.check_socket()  # ours again: nothing to do
    assert messages(caplog, "bound it again") == [f"test: socket {socket} was deleted: bound it again"]
    info = os.lstat(socket)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_ino != before
    assert health_of(socket) == "SERVING"
    assert fresh_call(socket, "Ok") == b"ok"
    # A swap is not a stop: the servicer keeps what it holds.
    assert stops == []

    release.set()
    for caller in callers:
        caller.join(30)
    assert results == {"unary": b"slow done", "stream": [b"first", b"second"]}
    # The old channel's next call finds the new server.
    assert call(channel, "Ok") == b"ok"
    # The private name the socket was bound under was renamed into place: nothing left beside it.
    assert sorted(path.name for path in socket.parent.iterdir()) == ["test.sock"]

    running.stop(grace=1)
    assert stops == ["stopped"]
    assert not socket.exists()


def test_a_socket_replaced_by_a_file_is_bound_again_and_a_directory_is_waited_out(start_server, temp_config, caplog):
    running, _ = start_server(service_with({"Ok": unary(lambda request, context: b"ok")}))
    socket = temp_config.socket_path("test")

    socket.unlink()
    socket.write_text("not a socket")
    assert running.check_socket()
    assert stat.S_ISSOCK(os.lstat(socket).st_mode)
    assert fresh_call(socket, "Ok") == b"ok"

    socket.unlink()
    socket.mkdir()
    with caplog.at_level(logging.WARNING, logger=RUNFILES_LOG):
        for _ in range(3):
            assert not running.check_socket()
    (line,) = messages(caplog, "cannot bind")
    assert line.startswith(f"test: cannot bind {socket} again (") and line.endswith("): retrying every 1 s")
    socket.rmdir()
    assert running.check_socket()
    assert fresh_call(socket, "Ok") == b"ok"


def test_a_live_server_on_our_path_is_left_alone(start_server, temp_config, caplog):
    ours, _ = start_server(service_with({"Who": unary(lambda request, context: b"ours")}))
    socket = temp_config.socket_path("test")
    rival = create_server(service_with({"Who": unary(lambda request, context: b"rival")}), f"unix:{socket}")
    try:
        with caplog.at_level(logging.WARNING, logger=RUNFILES_LOG):
            for _ in range(3):
                assert not ours.check_socket()
        assert messages(caplog, "another live server") == [
            f"test: {socket} is now another live server's socket: left to it; scripts/down, then scripts/up, to serve there again"
        ]
        assert fresh_call(socket, "Who") == b"rival"
    finally:
        rival.stop(grace=1)
    # The rival gone (its socket with it), ours serves there again.
    assert not socket.exists()
    assert ours.check_socket()
    assert fresh_call(socket, "Who") == b"ours"

    # Stopping never removes a socket that another server took over.
    rival = create_server(service_with({"Who": unary(lambda request, context: b"rival")}), f"unix:{socket}")
    try:
        ours.stop(grace=1)
        assert fresh_call(socket, "Who") == b"rival"
    finally:
        rival.stop(grace=1)


def test_a_deleted_pidfile_and_lock_are_made_again(tmp_path, caplog):
    lock, pidfile = tmp_path / "x.lock", tmp_path / "x.pid"
    with single_instance(lock, "x") as lock_fd:
        write_pidfile(pidfile)
        files = RunFiles("x", pidfile, lock, lock_fd)
        files.check()
        pidfile.unlink()
        lock.unlink()
        with caplog.at_level(logging.WARNING, logger=RUNFILES_LOG):
            files.check()
        assert pidfile.read_text() == f"{os.getpid()}\n"
        # Without the new lock a second instance would have started beside us.
        with pytest.raises(SystemExit, match="another x service holds"):
            with single_instance(lock, "x"):
                pass
        pidfile.write_text("12345\n")
        files.check()
        assert pidfile.read_text() == f"{os.getpid()}\n"

        # A new lock file someone else holds already: said once, not fought over, and the pidfile is
        # the holder's to write.
        lock.unlink()
        other = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        pidfile.write_text("99999\n")
        with caplog.at_level(logging.WARNING, logger=RUNFILES_LOG):
            files.check()
            files.check()
        assert len(messages(caplog, "another x service holds the new one")) == 1
        assert pidfile.read_text() == "99999\n"
        os.close(other)
        files.check()
        assert pidfile.read_text() == f"{os.getpid()}\n"
        with pytest.raises(SystemExit, match="another x service holds"):
            with single_instance(lock, "x"):
                pass
    assert [line.split(" was ")[0] for line in messages(caplog, "again")] == [
        f"x: lock {lock}", f"x: pidfile {pidfile}", f"x: pidfile {pidfile}", f"x: lock {lock}", f"x: pidfile {pidfile}",
    ]
    # Our exit released the lock we hold now.
    with single_instance(lock, "x"):
        pass
