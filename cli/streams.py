"""The attach and exec streams of the executor, driven from this terminal."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from cli.services import CliError, Services
from cli.stdio import StreamCodec, StreamSession, write_all
from protos.executor.v1 import executor_pb2 as ex
from services.common.client import describe_rpc_error


def _copy_output(message) -> int | None:
    """Write one response's bytes to our stdout or stderr; return the exit code when it arrives."""
    kind = message.WhichOneof("event")
    if kind == "stdout":
        write_all(1, message.stdout)
    elif kind == "stderr":
        write_all(2, message.stderr)
    elif kind == "exit_code":
        return message.exit_code
    return None


def _copy_attach_output(message) -> ex.ContainerProcess | None:
    """As _copy_output; the container's exit, as WaitContainer would report it, when it arrives."""
    code = _copy_output(message)
    if code is None:
        return None
    return ex.ContainerProcess(status=ex.PROCESS_STATUS_EXITED, exit_code=code, oom_killed=message.oom_killed)


def _pump(services: Services, session: StreamSession, copy: Callable = _copy_output):
    try:
        return session.pump(copy)
    except grpc.RpcError as err:
        raise CliError(describe_rpc_error("executor", services.config, err)) from None
    except ConnectionError as err:
        raise CliError(f"lost the container's output stream: {err}") from None


def exec_stream(
    services: Services,
    container_id: str,
    command: list[str],
    env: list[str],
    workdir: str,
    stdin: bool,
    tty: bool,
    user: str = "",
    privileged: bool = False,
) -> int:
    start = ex.ExecStart(
        container_id=container_id,
        process=ex.ProcessSpec(args=command, env=env, cwd=workdir, terminal=tty, stdin=stdin),
        user=user,
        privileged=privileged,
    )
    codec = StreamCodec(
        first=ex.ExecRequest(start=start),
        stdin=lambda data: ex.ExecRequest(stdin=data),
        close_stdin=lambda: ex.ExecRequest(close_stdin=True),
        resize=lambda rows, cols: ex.ExecRequest(resize=ex.WindowSize(rows=rows, cols=cols)),
        signal=lambda signum: ex.ExecRequest(signal=signum),
    )
    session = StreamSession(codec, attach_stdin=stdin, tty=tty)
    session.open(services.executor.Exec)
    return _pump(services, session)


def attach_stream(services: Services, container_id: str, stdin: bool, tty: bool) -> Callable[[], ex.ContainerProcess]:
    """Open the attach stream now, before the container starts; returns the function that pumps it to the exit.

    The exit comes with the OOM verdict (the shim records both before its last frame), so no
    WaitContainer is needed after it.
    """
    codec = StreamCodec(
        first=ex.AttachRequest(container_id=container_id),
        stdin=lambda data: ex.AttachRequest(stdin=data),
        close_stdin=lambda: ex.AttachRequest(close_stdin=True),
        resize=lambda rows, cols: ex.AttachRequest(resize=ex.WindowSize(rows=rows, cols=cols)),
        signal=lambda signum: ex.AttachRequest(signal=signum),
    )
    session = StreamSession(codec, attach_stdin=stdin, tty=tty)
    session.open(services.executor.Attach)
    return lambda: _pump(services, session, _copy_attach_output)
