"""Plans of iptables changes for bridge networks and published ports: pure data, validated before they are applied."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.executor.firewall_rules import (
    ALL_OUR_CHAINS,
    DNAT_CHAIN,
    FILTER,
    FORWARD_CHAIN,
    ISOLATION_CHAIN,
    NAT,
    OUR_CHAINS,
    POSTROUTING_CHAIN,
    PROTOCOLS,
    TABLES,
    Port,
    Rule,
    Ruleset,
    _host_ip,
    _split,
    has_chain,
    net_tag,
    network_names,
    owner_key,
    parse_port_tag,
    port_tag,
    rules_of,
    split_key,
)

# Names end up inside restore lines and comments: nothing that could quote, escape or break a line.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BRIDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_INSTANCE = re.compile(r"[0-9a-f]{0,16}")
_PLAIN_ARG = re.compile(r"[A-Za-z0-9_.,:/=!+-]+")
_PLAN_VERBS = ("-N", "-X", "-F", "-A", "-I", "-D")


@dataclass(frozen=True)
class Jump:
    """A rule in a built-in chain that sends packets into one of our chains."""

    table: str
    chain: str
    match: tuple[str, ...]
    target: str
    insert: bool  # first in the chain rather than last


JUMPS = (
    Jump(NAT, "PREROUTING", ("-m", "addrtype", "--dst-type", "LOCAL"), DNAT_CHAIN, insert=False),
    # Includes 127.0.0.0/8, unlike Docker: 127.0.0.1:<host port> has to reach the container too.
    Jump(NAT, "OUTPUT", ("-m", "addrtype", "--dst-type", "LOCAL"), DNAT_CHAIN, insert=False),
    Jump(NAT, "POSTROUTING", (), POSTROUTING_CHAIN, insert=False),
    # First, so a FORWARD policy or rule that drops does not see container traffic.
    Jump(FILTER, "FORWARD", (), FORWARD_CHAIN, insert=True),
)


@dataclass(frozen=True)
class Op:
    table: str
    line: str


@dataclass(frozen=True)
class Plan:
    """Restore lines to run, in order; `last` says no network is left once they ran."""

    ops: tuple[Op, ...] = ()
    last: bool = False


# ---- validation ---------------------------------------------------------------------------------


def validate_network(network: str, bridge: str, subnet: str) -> str:
    """The subnet in iptables' spelling (network address/prefix); InvalidArgument for bad values."""
    if not _NAME.fullmatch(network):
        raise InvalidArgument(f'invalid network name "{network}": use letters, digits, "_", "." and "-"')
    validate_bridge(bridge)
    try:
        parsed = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        raise InvalidArgument(f'invalid subnet "{subnet}": use an IPv4 network such as 172.18.0.0/16') from None
    if parsed.version != 4:
        raise InvalidArgument(f'invalid subnet "{subnet}": only IPv4 networks are supported')
    return str(parsed)


def validate_instance(instance: str) -> None:
    if not _INSTANCE.fullmatch(instance):
        raise InvalidArgument(f'invalid mydocker instance "{instance}": use up to 16 lowercase hex digits')


def validate_bridge(bridge: str) -> None:
    if not _BRIDGE.fullmatch(bridge):
        raise InvalidArgument(f'invalid bridge name "{bridge}": use up to 15 letters, digits, "_", "." and "-"')


def _ipv4(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidArgument(f'invalid {what} "{text}": use an IPv4 address') from None


def validate_ports(container_id: str, bridge: str, address: str, ports: Sequence[Port]) -> list[Port]:
    """The ports with host_ip normalized ("0.0.0.0" is every address, so ""); InvalidArgument otherwise."""
    if not _NAME.fullmatch(container_id):
        raise InvalidArgument(f'invalid container id "{container_id}"')
    validate_bridge(bridge)
    _ipv4(address, "container address")
    normalized: list[Port] = []
    seen: set[tuple[int, str]] = set()
    for port in ports:
        if port.protocol not in PROTOCOLS:
            raise InvalidArgument(f'invalid protocol "{port.protocol}": use tcp or udp')
        for value in (port.host_port, port.container_port):
            if not 1 <= value <= 65535:
                raise InvalidArgument(f"invalid port {value}: use 1 to 65535")
        host_ip = "" if port.host_ip in ("", "0.0.0.0") else _ipv4(port.host_ip, "host address")
        # The tag names host port and protocol only, so one container holds each pair once.
        if (port.host_port, port.protocol) in seen:
            raise InvalidArgument(f"host port {port.host_port}/{port.protocol} is given twice: publish it once")
        seen.add((port.host_port, port.protocol))
        normalized.append(Port(host_ip, port.host_port, port.container_port, port.protocol))
    return normalized


def _quote(arg: str) -> str:
    if _PLAIN_ARG.fullmatch(arg):
        return arg
    if any(char in arg for char in '"\\\n\r'):
        raise ValueError(f"argument {arg!r} cannot be written to iptables-restore")
    return f'"{arg}"'


def _join(*args: str) -> str:
    return " ".join(_quote(arg) for arg in args)


def validate_plan(plan: Plan) -> None:
    """Refuse any line that would touch host chains beyond our jumps: the host's rules stay as they are."""
    for op in plan.ops:
        if op.table not in TABLES:
            raise ValueError(f"plan line for unknown table {op.table}: {op.line}")
        if "\n" in op.line or "\r" in op.line:
            raise ValueError(f"plan line spans lines: {op.line!r}")
        tokens = _split(op.line)
        if len(tokens) < 2 or tokens[0] not in _PLAN_VERBS:
            raise ValueError(f"plan line is not a rule or chain command: {op.line}")
        verb, chain = tokens[0], tokens[1]
        if chain in ALL_OUR_CHAINS:
            if chain not in OUR_CHAINS[op.table]:
                raise ValueError(f"plan line names {chain} in table {op.table}: {op.line}")
            continue
        target = tokens[tokens.index("-j") + 1] if "-j" in tokens[:-1] else ""
        if verb in ("-N", "-X", "-F") or target not in ALL_OUR_CHAINS:
            raise ValueError(f"plan line touches the host's chain {chain}: {op.line}")


def render(plan: Plan) -> str:
    """The iptables-restore --noflush input of a plan: one block per table."""
    blocks: list[str] = []
    for table in TABLES:
        lines = [op.line for op in plan.ops if op.table == table]
        if lines:
            blocks.append("\n".join([f"*{table}", *lines, "COMMIT"]))
    return "\n".join(blocks) + "\n" if blocks else ""


# ---- plans --------------------------------------------------------------------------------------


def _setup_ops(ruleset: Ruleset) -> list[Op]:
    """Our chains and the jumps into them, whichever are missing."""
    ops: list[Op] = []
    for table in TABLES:
        ops.extend(Op(table, f"-N {chain}") for chain in OUR_CHAINS[table] if not has_chain(ruleset, table, chain))
    for jump in JUMPS:
        if any(rule.chain == jump.chain and rule.target == jump.target for rule in rules_of(ruleset, jump.table)):
            continue
        where = f"-I {jump.chain} 1" if jump.insert else f"-A {jump.chain}"
        ops.append(Op(jump.table, f"{where} {_join(*jump.match, '-j', jump.target)}"))
    return ops


def network_rules(network: str, bridge: str, subnet: str, instance: str = "") -> list[Op]:
    tag = ("-m", "comment", "--comment", net_tag(network, instance))
    return [
        Op(NAT, "-A " + _join(POSTROUTING_CHAIN, "-s", subnet, "!", "-o", bridge, *tag, "-j", "MASQUERADE")),
        # Host-local sources (127.0.0.1 DNATed in OUTPUT) need a source the container can answer.
        Op(NAT, "-A " + _join(
            POSTROUTING_CHAIN, "-o", bridge, "-m", "addrtype", "--src-type", "LOCAL", *tag, "-j", "MASQUERADE",
        )),
        Op(FILTER, "-I " + _join(FORWARD_CHAIN, "1", "-i", bridge, "!", "-o", bridge, *tag, "-j", ISOLATION_CHAIN)),
        Op(FILTER, "-A " + _join(FORWARD_CHAIN, "-i", bridge, *tag, "-j", "ACCEPT")),
        Op(FILTER, "-A " + _join(
            FORWARD_CHAIN, "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "ACCEPT",
        )),
        Op(FILTER, "-A " + _join(ISOLATION_CHAIN, "-o", bridge, *tag, "-j", "DROP")),
    ]


def _interfaces(rule: Rule) -> set[str]:
    return {value for value in (rule.option("-i"), rule.option("-o")) if value}


def _network_matches(saved: list[Rule], wanted: list[Op], bridge: str, subnet: str) -> bool:
    """Whether the saved rules of one network in one table are the wanted ones (compared by parsed facts)."""
    if len(saved) != len(wanted):
        return False
    return all(_interfaces(rule) == {bridge} and rule.option("-s") in ("", subnet) for rule in saved)


def plan_add_network(ruleset: Ruleset, network: str, bridge: str, subnet: str, instance: str = "") -> Plan:
    """Missing chains and jumps, then the network's rules in each table that lacks them or holds stale ones."""
    subnet = validate_network(network, bridge, subnet)
    validate_instance(instance)
    ops = _setup_ops(ruleset)
    tag = net_tag(network, instance)
    wanted = network_rules(network, bridge, subnet, instance)
    for table in TABLES:
        saved = [rule for rule in rules_of(ruleset, table) if rule.comment == tag]
        table_wanted = [op for op in wanted if op.table == table]
        if saved and _network_matches(saved, table_wanted, bridge, subnet):
            continue
        # A stale copy (same name, other bridge or subnet) is replaced within the table's one transaction.
        ops.extend(Op(table, rule.delete_line()) for rule in saved)
        ops.extend(table_wanted)
    return Plan(tuple(ops))


def _teardown_ops(ruleset: Ruleset) -> list[Op]:
    """Jumps into our chains deleted as saved, then our chains flushed and deleted."""
    ops: list[Op] = []
    for table in TABLES:
        for rule in rules_of(ruleset, table):
            if rule.chain not in ALL_OUR_CHAINS and rule.target in ALL_OUR_CHAINS:
                ops.append(Op(table, rule.delete_line()))
        present = [chain for chain in OUR_CHAINS[table] if has_chain(ruleset, table, chain)]
        ops.extend(Op(table, f"-F {chain}") for chain in present)
        ops.extend(Op(table, f"-X {chain}") for chain in present)
    return ops


def _tags_on_bridge(ruleset: Ruleset, bridge: str) -> set[str]:
    """Port tags whose FORWARD rule leads into `bridge`."""
    return {
        rule.comment
        for rule in rules_of(ruleset, FILTER)
        if rule.chain == FORWARD_CHAIN and parse_port_tag(rule.comment) is not None and rule.option("-o") == bridge
    }


def plan_remove_network(ruleset: Ruleset, network: str, bridge: str, subnet: str, instance: str = "") -> Plan:
    """The network's rules and the ports published into its bridge deleted; everything ours if it was the last.

    The last of every instance's: the chains are shared, so another instance's network keeps them.
    """
    validate_network(network, bridge, subnet)
    validate_instance(instance)
    tag = net_tag(network, instance)
    others = network_names(ruleset) - {owner_key(network, instance)}
    if not others:
        return Plan(tuple(_teardown_ops(ruleset)), last=True)
    doomed = {tag} | _tags_on_bridge(ruleset, bridge)
    ops = [
        Op(rule.table, rule.delete_line()) for table in TABLES for rule in rules_of(ruleset, table) if rule.comment in doomed
    ]
    return Plan(tuple(ops))


def find_conflict(ruleset: Ruleset, container_id: str, port: Port, instance: str = "") -> str | None:
    """The other container that holds port's host port and protocol on an overlapping address, if any."""
    for rule in rules_of(ruleset, NAT):
        tag = parse_port_tag(rule.comment)
        if rule.chain != DNAT_CHAIN or tag is None:
            continue
        holder, host_port, protocol = tag
        if holder == owner_key(container_id, instance) or (host_port, protocol) != (port.host_port, port.protocol):
            continue
        held_ip = _host_ip(rule)
        if not held_ip or not port.host_ip or held_ip == port.host_ip:
            # A host port is the host's: another instance's container holds it as much as one of ours.
            return split_key(holder)[0]
    return None


def port_rules(container_id: str, bridge: str, address: str, port: Port, instance: str = "") -> list[Op]:
    tag = ("-m", "comment", "--comment", port_tag(container_id, port, instance))
    destination = ("-d", f"{port.host_ip}/32") if port.host_ip else ()
    match = ("-p", port.protocol, "-m", port.protocol)
    to = f"{address}:{port.container_port}"
    return [
        Op(NAT, "-A " + _join(
            DNAT_CHAIN, *destination, *match, "--dport", str(port.host_port), *tag, "-j", "DNAT", "--to-destination", to,
        )),
        Op(FILTER, "-A " + _join(
            FORWARD_CHAIN, "-d", f"{address}/32", "-o", bridge, *match, "--dport", str(port.container_port), *tag,
            "-j", "ACCEPT",
        )),
    ]


def _port_matches(saved: list[Rule], bridge: str, address: str, port: Port) -> bool:
    """Whether the saved DNAT and FORWARD rules of one tag describe exactly `port` into `address`."""
    dnat = [rule for rule in saved if rule.table == NAT]
    forward = [rule for rule in saved if rule.table == FILTER]
    if len(dnat) != 1 or len(forward) != 1:
        return False
    return (
        _host_ip(dnat[0]) == port.host_ip
        and dnat[0].option("--to-destination") == f"{address}:{port.container_port}"
        and forward[0].option("-d") == f"{address}/32"
        and forward[0].option("-o") == bridge
        and forward[0].option("--dport") == str(port.container_port)
    )


def plan_publish(
    ruleset: Ruleset, container_id: str, bridge: str, address: str, ports: Sequence[Port], instance: str = ""
) -> Plan:
    """DNAT and FORWARD rules of each port not yet published as asked; AlreadyExists for one another container holds."""
    ports = validate_ports(container_id, bridge, address, ports)
    address = _ipv4(address, "container address")
    validate_instance(instance)
    if not (has_chain(ruleset, NAT, DNAT_CHAIN) and has_chain(ruleset, FILTER, FORWARD_CHAIN)):
        raise FailedPrecondition(f"cannot publish ports of container {container_id}: no network has firewall rules yet")
    for port in ports:
        holder = find_conflict(ruleset, container_id, port, instance)
        if holder is not None:
            raise AlreadyExists(
                f"host port {port.host_port}/{port.protocol} is already published by container {holder}: "
                "choose another host port or remove that container"
            )
    ops: list[Op] = []
    for port in ports:
        tag = port_tag(container_id, port, instance)
        saved = [rule for rule in rules_of(ruleset) if rule.comment == tag]
        if saved and _port_matches(saved, bridge, address, port):
            continue
        ops.extend(Op(rule.table, rule.delete_line()) for rule in saved)
        ops.extend(port_rules(container_id, bridge, address, port, instance))
    return Plan(tuple(sorted(ops, key=lambda op: TABLES.index(op.table))))


def plan_unpublish(ruleset: Ruleset, container_id: str, instance: str = "") -> Plan:
    ops = [
        Op(rule.table, rule.delete_line())
        for table in TABLES
        for rule in rules_of(ruleset, table)
        if (tag := parse_port_tag(rule.comment)) is not None and tag[0] == owner_key(container_id, instance)
    ]
    return Plan(tuple(ops))


