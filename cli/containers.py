"""Container verbs: ps (run, exec, logs, stop, rm and commit arrive with the executor and storage)."""

from __future__ import annotations

import typer

from cli.services import Services

PS_HEADER = ("ID", "NAME", "PID", "STATUS", "COMMAND", "CREATED")


def ps(
    all_: bool = typer.Option(False, "--all", "-a", help="Show every container, not only running ones."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print container ids only."),
) -> None:
    """List containers: ID NAME PID STATUS COMMAND CREATED."""
    from cli.convert import status_name, timestamp_seconds
    from cli.output import format_command, format_status, format_time, table
    from protos.state.v1 import state_pb2

    statuses = [] if all_ else [state_pb2.CONTAINER_STATUS_RUNNING]
    reply = Services().call("state", "ListContainers", state_pb2.ListContainersRequest(statuses=statuses))
    if quiet:
        for container in reply.containers:
            typer.echo(container.id)
        return
    rows = []
    for container in reply.containers:
        status = status_name(state_pb2.ContainerStatus, container.status)
        rows.append(
            (
                container.id,
                container.name,
                str(container.pid) if container.pid else "-",
                format_status(status, container.exit_code, container.oom_killed),
                format_command(container.command),
                format_time(timestamp_seconds(container.created_at)),
            )
        )
    typer.echo(table(PS_HEADER, rows))


def register(app: typer.Typer) -> None:
    app.command("ps")(ps)
