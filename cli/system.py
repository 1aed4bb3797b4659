"""System verbs: version, `system info` (each service's health and version) and `system check`."""

from __future__ import annotations

import platform

import typer

from cli.services import CliError, Services
from services.common.config import API_VERSION, SERVICES, VERSION

system_app = typer.Typer(help="The services on this host: health, consistency, disk use.", no_args_is_help=True)


def version() -> None:
    """Print the client's version (no service is contacted)."""
    typer.echo(f"mydocker {VERSION} (API {API_VERSION}, Python {platform.python_version()}, {platform.system().lower()})")


def _service_details(services: Services, service: str) -> tuple[str, str, list[str]]:
    """(version, pid, detail lines) from a service's GetInfo."""
    if service == "state":
        from protos.state.v1 import state_pb2 as pb
    elif service == "storage":
        from protos.storage.v1 import storage_pb2 as pb
    else:
        from protos.executor.v1 import executor_pb2 as pb
    info = services.call(service, "GetInfo", pb.GetInfoRequest())
    if service == "state":
        details = [
            f"database: {info.database_path} (schema {info.schema_version})",
            f"containers: {info.containers}, networks: {info.networks}",
        ]
    elif service == "storage":
        details = [f"root: {info.root} (driver {info.driver})", f"images: {info.images}, rootfs: {info.rootfs_count}"]
    else:
        details = [
            f"run root: {info.run_root}, cgroups: {info.cgroup_version}, kernel: {info.kernel}",
            f"containers with a shim: {info.containers_running}",
        ]
    return info.version, str(info.pid), details


@system_app.command("info")
def info() -> None:
    """Show each service's health, version, pid and socket; exit 1 if any is not serving."""
    from cli.output import table
    from services.common.client import check_health

    services = Services()
    rows, details, failures = [], [], []
    for service in SERVICES:
        health = check_health(services.config, service)
        version_text, pid = "-", "-"
        if health.status == "SERVING":
            try:
                version_text, pid, lines = _service_details(services, service)
                details.extend(f"{service}: {line}" for line in lines)
            except CliError:
                failures.append(service)
        else:
            failures.append(service)
        rows.append((service, health.status, version_text, pid, health.socket))
    typer.echo(f"Client: mydocker {VERSION} (API {API_VERSION})")
    typer.echo(table(("SERVICE", "STATUS", "VERSION", "PID", "SOCKET"), rows))
    for line in details:
        typer.echo(line)
    if failures:
        raise CliError(
            f"not serving: {', '.join(failures)}: run scripts/up (logs in {services.config.root / 'log'})"
        )


@system_app.command("check")
def check(
    repair: bool = typer.Option(False, "--repair", help="Fix what can be fixed (each repair is idempotent)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing when everything is consistent."),
    rebuild_state: bool = typer.Option(
        False, "--rebuild-state",
        help="With --repair: set a damaged state database aside and rebuild the records of every container "
        "and network from what the executor and storage hold.",
    ),
) -> None:
    """Compare records, rootfs and mounts, processes and cgroups; report (or --repair) what does not add up."""
    from cli.check import run_check

    raise typer.Exit(run_check(repair, quiet, typer.echo, rebuild_state))


def register(app: typer.Typer) -> None:
    from cli import disk

    app.command("version")(version)
    app.add_typer(system_app, name="system")
    disk.register(app, system_app)
