"""Configuration paths, cgroup mode detection and the error-to-status table."""

from pathlib import Path

import grpc
import pytest

from services.common import errors
from services.common.config import Config, check_socket_path, unix_target
from services.common.grpc_errors import status_for
from services.executor.cgroups import detect_cgroup_mode


def test_config_flags_win_over_env_over_defaults():
    env = {"MYDOCKER_ROOT": "/tmp/r", "MYDOCKER_RUN": "/tmp/x"}
    assert Config.from_env(env={}) == Config(Path("/var/lib/mydocker"), Path("/run/mydocker"))
    assert Config.from_env(env=env) == Config(Path("/tmp/r"), Path("/tmp/x"))
    assert Config.from_env(env=env, root="/a", run="/b") == Config(Path("/a"), Path("/b"))


def test_derived_paths():
    config = Config(Path("/r"), Path("/x"))
    assert config.socket_path("state") == Path("/x/state.sock")
    assert config.pid_path("storage") == Path("/x/storage.pid")
    assert config.log_path("executor") == Path("/r/log/executor.log")
    assert config.state_db_path() == Path("/r/state/state.db")


def test_unix_targets_are_never_abstract():
    assert unix_target(Path("/run/mydocker/state.sock")) == "unix:///run/mydocker/state.sock"
    assert not unix_target(Path("/x")).startswith("unix-abstract")


def test_overlong_socket_path_is_refused_with_its_name():
    check_socket_path(Path("/run/mydocker/state.sock"))
    long_path = Path("/tmp/" + "d" * 120 + "/state.sock")
    with pytest.raises(ValueError, match="shorter MYDOCKER_RUN"):
        check_socket_path(long_path)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.InvalidTransition("container 1", "running", "created"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_each_domain_error_has_one_status(error, code):
    assert status_for(error) == code


def test_invalid_transition_message_names_both_states():
    assert str(errors.InvalidTransition("container 1", "running", "created")) == (
        "container 1: invalid state transition from running to created"
    )


def test_cgroup_mode_detection(tmp_path):
    assert detect_cgroup_mode(tmp_path) == "v1"
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    assert detect_cgroup_mode(tmp_path) == "hybrid"
    (tmp_path / "cgroup.controllers").write_text("cpu memory")
    assert detect_cgroup_mode(tmp_path) == "v2"


def test_each_root_is_an_instance_of_its_own():
    default = Config()
    assert (default.instance, default.default_cgroup_parent()) == ("", "mydocker")
    first, second = Config(root=Path("/tmp/a/root")), Config(root=Path("/tmp/b/root"))
    assert len(first.instance) == 8 and first.instance != second.instance
    assert first.instance == Config(root=Path("/tmp/a/root"), run=Path("/elsewhere")).instance
    assert first.default_cgroup_parent() == f"mydocker-{first.instance}"


def test_start_connecting_readies_a_channel_without_a_call(tmp_path: Path):
    """The CLI's connect-ahead leans on a private grpc attribute: an upgrade that drops it fails here."""
    import threading
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2_grpc

    from services.common.client import start_connecting

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(unix_target(tmp_path / "s.sock"))
    server.start()
    ready = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            ready.set()

    try:
        with grpc.insecure_channel(unix_target(tmp_path / "s.sock")) as channel:
            channel.subscribe(watch)  # only watches: no try_to_connect
            try:
                start_connecting(channel)
                assert ready.wait(10), "the channel never connected"
            finally:
                channel.unsubscribe(watch)
    finally:
        server.stop(None)
