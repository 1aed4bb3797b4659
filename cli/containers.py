"""Container verbs: run, ps, logs, exec, stop, rm, commit and inspect."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

from cli.services import CliError, Services

# The series' final column order (it added IP with networking).
PS_HEADER = ("ID", "NAME", "PID", "IP", "STATUS", "COMMAND", "CREATED")
# Options end at the image name: what follows is the container's own command line.
COMMAND_CONTEXT = {"allow_interspersed_args": False}


def run(
    image: str = typer.Argument(..., help="Image: name[:tag], name@digest or id (a tag is <root>/image/<name>.tar)."),
    command: Optional[list[str]] = typer.Argument(None, help="Command and arguments (default: the image's Cmd)."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Keep stdin attached."),
    tty: bool = typer.Option(False, "--tty", "-t", help="Give the command a terminal."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background and print the id."),
    auto_remove: bool = typer.Option(False, "--rm", help="Remove the container when it exits."),
    name: str = typer.Option("", "--name", help="Unique name (the seed's -name); default: the id."),
    volume: Optional[list[str]] = typer.Option(None, "--volume", "-v", help="Bind volume /host:/container[:ro]; repeatable."),
    env: Optional[list[str]] = typer.Option(None, "--env", "-e", help="KEY=VALUE (or KEY to pass yours); repeatable."),
    memory: str = typer.Option("", "--memory", "-m", help="Memory limit: 64m, 1g or bytes (the seed's -mem)."),
    cpu: str = typer.Option("", "--cpu", help="CPU limit as a percent of one CPU, as in the seed (-cpu 20)."),
    cpus: str = typer.Option("", "--cpus", help="CPU limit as a number of CPUs (1.5)."),
    cpuset: str = typer.Option("", "--cpuset", "--cpuset-cpus", help="CPUs allowed, e.g. 0-1 (the seed's -cpuset)."),
    pids_limit: int = typer.Option(0, "--pids-limit", help="Maximum number of processes."),
    workdir: str = typer.Option("", "--workdir", "-w", help="Working directory inside the container."),
    hostname: str = typer.Option("", "--hostname", help="Hostname (default: the name)."),
    network: str = typer.Option("", "--network", "--net", help="Bridge network to join (the seed's -net); none: loopback only."),
    publish: Optional[list[str]] = typer.Option(
        None, "--publish", "-p", help="Publish [HOST_IP:]HOST_PORT:CONTAINER_PORT[/udp] on the host; repeatable."
    ),
    privileged: bool = typer.Option(False, "--privileged", help="All capabilities, no seccomp, no masked paths, every device."),
    cap_add: Optional[list[str]] = typer.Option(None, "--cap-add", help="Add a capability (NET_ADMIN, CAP_SYS_TIME, ALL); repeatable."),
    cap_drop: Optional[list[str]] = typer.Option(None, "--cap-drop", help="Drop a capability (or ALL); repeatable."),
    security_opt: Optional[list[str]] = typer.Option(
        None, "--security-opt", help="seccomp=unconfined, seccomp=PROFILE.json or no-new-privileges; repeatable."
    ),
    user: str = typer.Option("", "--user", "-u", help="UID, NAME, UID:GID or NAME:GROUP, from the image's /etc files."),
    group_add: Optional[list[str]] = typer.Option(None, "--group-add", help="Supplementary group name or number; repeatable."),
    read_only: bool = typer.Option(False, "--read-only", help="Mount the root filesystem read-only."),
    tmpfs: Optional[list[str]] = typer.Option(None, "--tmpfs", help="A tmpfs at PATH[:OPTIONS] (size=64m,mode=1777); repeatable."),
    device: Optional[list[str]] = typer.Option(None, "--device", help="Host device HOST[:CONTAINER[:rwm]]; repeatable."),
    ulimit: Optional[list[str]] = typer.Option(None, "--ulimit", help="Resource limit NAME=SOFT[:HARD] (nofile=1024:2048); repeatable."),
    oom_score_adj: int = typer.Option(0, "--oom-score-adj", help="OOM score adjustment of the container, -1000..1000."),
    publish_all: bool = typer.Option(False, "--publish-all", "-P", help="Publish every port the image exposes on a free host port."),
    entrypoint: Optional[str] = typer.Option(None, "--entrypoint", help="Replace the image's Entrypoint (\"\" clears it; its Cmd is dropped)."),
) -> None:
    """Create and start a container from IMAGE: `run -d -name c1 busybox top`, `run -it busybox sh`."""
    from cli import lifecycle, parse
    from cli.security_options import SecurityFlags, security_options
    from cli.stdio import window_size
    from protos.types.v1 import types_pb2

    if detach and (interactive or tty):
        raise CliError("-d cannot be combined with -i or -t: run in the foreground with -it, or detached with -d")
    if cpu and cpus:
        raise CliError("give either --cpu (percent of one CPU) or --cpus (number of CPUs), not both")
    if network == "none":
        network = ""
    if (publish or publish_all) and not network:
        raise CliError("publishing ports needs a network: add --network NAME (see mydocker network ls)")
    try:
        ports = [parse.parse_port(text) for text in publish or []]
        volumes = [parse.parse_volume(text) for text in volume or []]
        request = lifecycle.RunRequest(
            image=image,
            command=list(command) if command else None,
            entrypoint=entrypoint,
            publish_all=publish_all,
            name=name,
            env=[parse.parse_env(text, dict(os.environ)) for text in env or []],
            volumes=[types_pb2.Volume(host_path=v.host_path, container_path=v.container_path, read_only=v.read_only) for v in volumes],
            resources=types_pb2.Resources(
                memory_bytes=parse.parse_size(memory) if memory else 0,
                nano_cpus=parse.percent_to_nano_cpus(cpu) if cpu else (parse.cpus_to_nano_cpus(cpus) if cpus else 0),
                cpuset_cpus=cpuset,
                pids_limit=pids_limit,
            ),
            hostname=hostname,
            network=network,
            ports=[
                types_pb2.PortMapping(
                    host_ip=p.host_ip,
                    host_port=p.host_port,
                    container_port=p.container_port,
                    protocol=types_pb2.PROTOCOL_UDP if p.protocol == "udp" else types_pb2.PROTOCOL_TCP,
                )
                for p in ports
            ],
            working_dir=workdir,
            tty=tty,
            stdin_open=interactive,
            detach=detach,
            auto_remove=auto_remove,
            window=window_size(sys.stdin.fileno()) if tty and os.isatty(sys.stdin.fileno()) else None,
            security=security_options(
                SecurityFlags(
                    privileged=privileged,
                    cap_add=cap_add or [],
                    cap_drop=cap_drop or [],
                    security_opt=security_opt or [],
                    user=user,
                    group_add=group_add or [],
                    read_only=read_only,
                    tmpfs=tmpfs or [],
                    device=device or [],
                    ulimit=ulimit or [],
                    oom_score_adj=oom_score_adj,
                )
            ),
        )
    except parse.BadValue as err:
        raise CliError(str(err)) from None

    services = Services()
    if detach:
        container, _ = lifecycle.create_and_start(services, request, attach=None)
        typer.echo(container.id)
        return
    from cli.streams import attach_stream

    container, wait = lifecycle.create_and_start(
        services, request, attach=lambda container_id: attach_stream(services, container_id, interactive, tty)
    )
    exited = wait()
    container = lifecycle.record_exit(services, container, exited, then_removing=auto_remove)
    if auto_remove:
        # Its process is gone and its exit recorded: straight to the removal steps.
        lifecycle.remove_stopped(services, container, unplugged=True)
    raise typer.Exit(exited.exit_code)


def ps(
    all_: bool = typer.Option(False, "--all", "-a", help="Show every container, not only running ones."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print container ids only."),
) -> None:
    """List containers: ID NAME PID IP STATUS COMMAND CREATED."""
    from cli import lifecycle
    from cli.convert import status_name, timestamp_seconds
    from cli.output import format_command, format_status, format_time, table
    from protos.state.v1 import state_pb2

    services = Services()
    containers = list(services.call("state", "ListContainers", state_pb2.ListContainersRequest()).containers)
    containers = lifecycle.sync(services, containers)
    if not all_:
        containers = [c for c in containers if c.status == state_pb2.CONTAINER_STATUS_RUNNING]
    if quiet:
        for container in containers:
            typer.echo(container.id)
        return
    rows = []
    for container in containers:
        status = status_name(state_pb2.ContainerStatus, container.status)
        rows.append(
            (
                container.id,
                container.name,
                str(container.pid) if container.pid else "-",
                container.ip or "-",
                format_status(status, container.exit_code, container.oom_killed),
                format_command(container.command),
                format_time(timestamp_seconds(container.created_at)),
            )
        )
    typer.echo(table(PS_HEADER, rows))


def logs(
    container: str = typer.Argument(..., help="Container id, name or unique id prefix."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new output until the container exits."),
    tail: int = typer.Option(0, "--tail", help="Only the last N lines (0: all)."),
    timestamps: bool = typer.Option(False, "--timestamps", "-t", help="Prefix each line with the time it was written."),
) -> None:
    """Print a container's output (stdout and stderr, as written)."""
    import grpc

    from cli import lifecycle
    from cli.stdio import write_all
    from protos.executor.v1 import executor_pb2
    from services.common.client import describe_rpc_error

    services = Services()
    record = lifecycle.resolve(services, container)
    stream = services.executor.Logs(executor_pb2.LogsRequest(id=record.id, follow=follow, tail=tail), timeout=None if follow else 60)
    try:
        for line in stream:
            fd = 2 if line.stream == executor_pb2.LOG_STREAM_STDERR else 1
            prefix = (line.time.ToJsonString() + " ").encode() if timestamps else b""
            write_all(fd, prefix + line.data)
    except grpc.RpcError as err:
        raise CliError(describe_rpc_error("executor", services.config, err)) from None


def exec_(
    container: str = typer.Argument(..., help="Container id, name or unique id prefix."),
    command: list[str] = typer.Argument(..., help="Command and arguments to run inside."),
    interactive: bool = typer.Option(
        True, "--interactive", "-i", help="Attach stdin (always on, as the seed's exec; kept for docker's spelling)."
    ),
    tty: bool = typer.Option(False, "--tty", "-t", help="Allocate a terminal (default when stdin is a terminal)."),
    env: Optional[list[str]] = typer.Option(None, "--env", "-e", help="Extra KEY=VALUE; repeatable."),
    workdir: str = typer.Option("", "--workdir", "-w", help="Working directory inside the container."),
    user: str = typer.Option("", "--user", "-u", help="UID, NAME, UID:GID or NAME:GROUP (default: the container's user)."),
    privileged: bool = typer.Option(False, "--privileged", help="All capabilities and no seccomp filter for this command."),
) -> None:
    """Run a command inside a running container, stdin attached; exits with the command's exit code."""
    del interactive  # stdin is always attached, so the seed's `exec ID /bin/sh` is a shell
    from cli import lifecycle, parse
    from cli.streams import exec_stream
    from protos.state.v1 import state_pb2

    from services.common.errors import InvalidArgument
    from services.common.security import check_user

    on_terminal = os.isatty(sys.stdin.fileno())
    try:
        extra_env = [parse.parse_env(text, dict(os.environ)) for text in env or []]
        check_user(user)
    except (parse.BadValue, InvalidArgument) as err:
        raise CliError(str(err)) from None
    services = Services()
    record = lifecycle.resolve_synced(services, container)
    if record.status != state_pb2.CONTAINER_STATUS_RUNNING:
        raise CliError(f"container {record.id} ({record.name}) is not running: start a new one with mydocker run")
    exit_code = exec_stream(
        services, record.id, list(command), extra_env, workdir, stdin=True, tty=tty or on_terminal,
        user=user, privileged=privileged,
    )
    raise typer.Exit(exit_code)


def stop(
    containers: list[str] = typer.Argument(..., help="Container ids, names or unique id prefixes."),
    time_: int = typer.Option(10, "--time", "-t", help="Seconds to wait after SIGTERM before SIGKILL."),
) -> None:
    """Stop running containers: SIGTERM, then SIGKILL after --time seconds."""
    from cli import lifecycle

    services = Services()
    for reference in containers:
        typer.echo(lifecycle.stop(services, reference, float(time_)).id)


def rm(
    containers: list[str] = typer.Argument(..., help="Container ids, names or unique id prefixes."),
    force: bool = typer.Option(False, "--force", "-f", help="Kill a running container first."),
) -> None:
    """Remove containers: their rootfs, process state and record (volumes are kept)."""
    from cli import lifecycle

    services = Services()
    failures = []
    for reference in containers:
        try:
            typer.echo(lifecycle.remove(services, reference, force).id)
        except CliError as err:
            failures.append(str(err))
    if failures:
        raise CliError("; ".join(failures))


def commit(
    container: str = typer.Argument(..., help="Container id, name or unique id prefix."),
    image: str = typer.Argument(..., help="Name of the image to write (the seed's image/<name>.tar)."),
    replace: bool = typer.Option(False, "--replace", help="Move the name if another image has it."),
    change: Optional[list[str]] = typer.Option(None, "--change", "-c", help="Dockerfile instruction for the config: 'CMD [\"sh\"]', 'ENV A=1', WORKDIR, USER, ...; repeatable."),
    message: str = typer.Option("", "--message", "-m", help="Commit message (the history comment)."),
    author: str = typer.Option("", "--author", "-a", help="Author of the image."),
) -> None:
    """A new image: the container's image plus one layer of its changes (volumes, /proc, /sys, /dev left out)."""
    from cli import lifecycle
    from protos.storage.v1 import storage_pb2

    from cli.image_run import container_config

    services = Services()
    record = lifecycle.resolve(services, container)
    request = storage_pb2.CommitContainerRequest(
        container_id=record.id,
        image=image,
        replace=replace,
        changes=change or [],
        comment=message,
        author=author,
        container_config=container_config(services, record),
    )
    written = services.call("storage", "CommitContainer", request, timeout=600).image
    typer.echo(written.name)


def inspect(containers: list[str] = typer.Argument(..., help="Container ids, names or unique id prefixes.")) -> None:
    """Print the records and live process state as JSON."""
    import json

    from google.protobuf.json_format import MessageToDict

    from cli import lifecycle
    from protos.executor.v1 import executor_pb2

    services = Services()
    result = []
    for reference in containers:
        record = lifecycle.resolve_synced(services, reference)
        entry = MessageToDict(record, preserving_proto_field_name=True)
        if record.network:
            entry["network_settings"] = _network_settings(services, record)
        try:
            live = services.call("executor", "GetContainer", executor_pb2.GetContainerRequest(id=record.id)).process
            entry["live"] = MessageToDict(live, preserving_proto_field_name=True)
        except CliError as err:
            entry["live"] = {"error": str(err)}
        result.append(entry)
    typer.echo(json.dumps(result, indent=2, sort_keys=True))


def _network_settings(services: Services, record) -> dict:
    """docker inspect's NetworkSettings, in our names: the network, the address and how it is reached."""
    from google.protobuf.json_format import MessageToDict

    from protos.state.v1 import state_pb2
    from services.common.netnames import veth_name

    settings = {
        "network": record.network,
        "ip_address": record.ip,
        "ports": [MessageToDict(p, preserving_proto_field_name=True) for p in record.ports],
    }
    network = services.call("state", "GetNetwork", state_pb2.GetNetworkRequest(name=record.network), missing_ok=True)
    if network is None:
        settings["error"] = f"network {record.network} no longer exists"
        return settings
    settings.update(
        gateway=network.network.gateway,
        prefix_length=int(network.network.subnet.partition("/")[2]),
        bridge=network.network.bridge,
        # Present while the container runs; gone with its network namespace.
        host_interface=veth_name(record.id) if record.ip else "",
    )
    return settings


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=COMMAND_CONTEXT)(run)
    app.command("ps")(ps)
    app.command("logs")(logs)
    app.command("exec", context_settings=COMMAND_CONTEXT)(exec_)
    app.command("stop")(stop)
    app.command("rm")(rm)
    app.command("commit")(commit)
    app.command("inspect")(inspect)
