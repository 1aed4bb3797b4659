"""Fixtures for contract tests: a real server of one service on a temp unix socket, and a real channel."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from services.common.config import Config, unix_target
from services.common.server import RunningServer, ServiceDefinition, create_server


@pytest.fixture
def temp_config() -> Iterator[Config]:
    # Short paths under /tmp: unix socket paths must stay under 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="mdk-", dir="/tmp"))
    try:
        yield Config(root=base / "root", run=base / "run")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def start_server(temp_config: Config) -> Iterator[Callable[[ServiceDefinition], tuple[RunningServer, grpc.Channel]]]:
    """Start servers on <run>/<name>.sock; every one started is stopped at teardown."""
    started: list[tuple[RunningServer, grpc.Channel]] = []

    def start(definition: ServiceDefinition) -> tuple[RunningServer, grpc.Channel]:
        socket = temp_config.socket_path(definition.name)
        running = create_server(definition, f"unix:{socket}")
        channel = grpc.insecure_channel(unix_target(socket))
        started.append((running, channel))
        return running, channel

    try:
        yield start
    finally:
        for running, channel in reversed(started):
            channel.close()
            running.stop(grace=1)


def pytest_terminal_summary(terminalreporter) -> None:
    """The cases test_fuzz_rpcs.py generated per RPC, when it ran: printed whether or not -s is given."""
    from tests.fuzz_messages import report_lines

    lines = report_lines()
    if lines:
        terminalreporter.section("generated requests per RPC (test_fuzz_rpcs.py)")
        for line in lines:
            terminalreporter.write_line(line)
