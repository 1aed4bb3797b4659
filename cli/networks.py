"""Network verbs: network create, ls, inspect and rm (the seed's `network list` and `network remove` too)."""

from __future__ import annotations


import typer

from cli.services import CliError, Services

network_app = typer.Typer(help="Bridge networks: create, ls, inspect, rm.", no_args_is_help=True)
NETWORK_HEADER = ("NAME", "DRIVER", "SUBNET", "GATEWAY", "BRIDGE")


def create(
    name: str = typer.Argument(..., help="Network name, [a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}."),
    driver: str = typer.Option("bridge", "--driver", "-d", help="Driver; only bridge exists."),
    subnet: str = typer.Option("", "--subnet", help="IPv4 subnet in CIDR form, e.g. 10.20.0.0/24. Required."),
    gateway: str = typer.Option("", "--gateway", help="Gateway address (default: the first host address)."),
) -> None:
    """Create a bridge network: its record and address pool, then its bridge and NAT rules."""
    from cli import lifecycle
    from cli.lifecycle import Rollback, step
    from protos.state.v1 import state_pb2 as st

    if not subnet:
        raise CliError("the subnet is missing: give one with --subnet CIDR, e.g. --subnet 10.20.0.0/24")
    services = Services()
    request = st.CreateNetworkRequest(name=name, driver=driver, subnet=subnet, gateway=gateway)
    network = services.call("state", "CreateNetwork", request).network
    with Rollback() as undo:
        undo.add("deleting the record", lambda: services.call("state", "DeleteNetwork", st.DeleteNetworkRequest(name=network.name)))
        step("creating the bridge", lambda: lifecycle.ensure_bridge(services, network.name))
    typer.echo(network.name)


def ls(quiet: bool = typer.Option(False, "--quiet", "-q", help="Print names only.")) -> None:
    """List networks: NAME DRIVER SUBNET GATEWAY BRIDGE."""
    from cli.output import table
    from protos.state.v1 import state_pb2 as st

    networks = Services().call("state", "ListNetworks", st.ListNetworksRequest()).networks
    if quiet:
        for network in networks:
            typer.echo(network.name)
        return
    rows = [(n.name, n.driver, n.subnet, n.gateway, n.bridge) for n in networks]
    typer.echo(table(NETWORK_HEADER, rows))


def inspect(names: list[str] = typer.Argument(..., help="Network names.")) -> None:
    """Print networks as JSON, with the addresses held in each (gateway included)."""
    import json

    from google.protobuf.json_format import MessageToDict

    from protos.state.v1 import state_pb2 as st

    services = Services()
    result = []
    for name in names:
        response = services.call("state", "GetNetwork", st.GetNetworkRequest(name=name))
        entry = MessageToDict(response.network, preserving_proto_field_name=True)
        entry["allocations"] = [MessageToDict(a, preserving_proto_field_name=True) for a in response.allocations]
        result.append(entry)
    typer.echo(json.dumps(result, indent=2, sort_keys=True))


def rm(names: list[str] = typer.Argument(..., help="Network names.")) -> None:
    """Remove networks no container is attached to: the record, then the bridge and its rules."""
    failures = []
    services = Services()
    for name in names:
        try:
            _remove(services, name)
            typer.echo(name)
        except CliError as err:
            failures.append(str(err))
    if failures:
        raise CliError("; ".join(failures))


def _remove(services: Services, name: str) -> None:
    from cli.lifecycle import Rollback, step
    from protos.executor.v1 import executor_pb2 as ex
    from protos.state.v1 import state_pb2 as st

    response = services.call("state", "GetNetwork", st.GetNetworkRequest(name=name))
    network = response.network
    holders = [a.owner for a in response.allocations if a.address != network.gateway]
    if holders:
        raise CliError(
            f"network {name} is in use by containers {', '.join(holders)}: remove them (mydocker rm -f) first"
        )
    remove = ex.RemoveBridgeRequest(network=network.name, bridge_name=network.bridge, subnet=network.subnet)
    # The record first: the state refuses while any container holds an address, atomically, and a bridge
    # left by a failure below is one `system check --repair` finds (the executor lists its bridges).
    services.call("state", "DeleteNetwork", st.DeleteNetworkRequest(name=network.name))
    with Rollback() as undo:
        undo.add("restoring the record", lambda: _recreate(services, network))
        step("removing the bridge", lambda: services.call("executor", "RemoveBridge", remove))


def _recreate(services: Services, network) -> None:
    from protos.state.v1 import state_pb2 as st

    request = st.CreateNetworkRequest(
        name=network.name, driver=network.driver, subnet=network.subnet, gateway=network.gateway, labels=network.labels
    )
    services.call("state", "CreateNetwork", request)


def register(app: typer.Typer) -> None:
    network_app.command("create")(create)
    network_app.command("ls")(ls)
    network_app.command("list", help="Same as ls (the seed's spelling).")(ls)
    network_app.command("inspect")(inspect)
    network_app.command("rm")(rm)
    network_app.command("remove", help="Same as rm (the seed's spelling).")(rm)
    app.add_typer(network_app, name="network")
