"""iptables rules of bridge networks (masquerade, forwarding, isolation, published ports) in mydocker's own chains."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument

# Services may run with a PATH that lacks the sbin directories iptables lives in.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"])
NOT_INSTALLED = "iptables is not installed: run scripts/up, which installs it"
IPTABLES_TIMEOUT = 30.0
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
BASELINE_FILE = "firewall-baseline.json"

NAT = "nat"
FILTER = "filter"
# Order of application: each table's COMMIT is its own transaction, and every operation is
# idempotent, so a batch that fails half way is finished by calling the operation again.
TABLES = (FILTER, NAT)
BUILTIN_CHAINS = {
    NAT: ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    FILTER: ("INPUT", "FORWARD", "OUTPUT"),
}
DNAT_CHAIN = "MYDOCKER-DNAT"
POSTROUTING_CHAIN = "MYDOCKER-POSTROUTING"
FORWARD_CHAIN = "MYDOCKER-FORWARD"
ISOLATION_CHAIN = "MYDOCKER-ISOLATION"
OUR_CHAINS = {NAT: (DNAT_CHAIN, POSTROUTING_CHAIN), FILTER: (FORWARD_CHAIN, ISOLATION_CHAIN)}
ALL_OUR_CHAINS = frozenset(chain for chains in OUR_CHAINS.values() for chain in chains)
PROTOCOLS = ("tcp", "udp")

NET_TAG_PREFIX = "mydocker net="
_NET_TAG = re.compile(r"mydocker net=(\S+)")
_PORT_TAG = re.compile(r"mydocker ctr=(\S+) port=([0-9]+)/(tcp|udp)")
# Names end up inside restore lines and comments: nothing that could quote, escape or break a line.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BRIDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_PLAIN_ARG = re.compile(r"[A-Za-z0-9_.,:/=!+-]+")
_PLAN_VERBS = ("-N", "-X", "-F", "-A", "-I", "-D")


@dataclass(frozen=True)
class Port:
    """One published port: host_ip "" means every address of the host."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str  # "tcp" | "udp"


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
class Rule:
    """One `-A` line of iptables-save, kept verbatim so it can be deleted as iptables spelled it."""

    table: str
    chain: str
    line: str
    args: tuple[str, ...]  # the tokens after "-A CHAIN"

    def option(self, name: str) -> str:
        """The value following option `name`, "" when the rule has none."""
        for index, arg in enumerate(self.args[:-1]):
            if arg == name:
                return self.args[index + 1]
        return ""

    @property
    def comment(self) -> str:
        return self.option("--comment")

    @property
    def target(self) -> str:
        return self.option("-j")

    def delete_line(self) -> str:
        return "-D" + self.line[2:]


@dataclass(frozen=True)
class Table:
    """One table as iptables-save printed it: chain policies ("-" for user chains) and rules in order."""

    name: str
    policies: Mapping[str, str]
    rules: tuple[Rule, ...]


Ruleset = Mapping[str, Table]


@dataclass(frozen=True)
class Op:
    table: str
    line: str


@dataclass(frozen=True)
class Plan:
    """Restore lines to run, in order; `last` says no network is left once they ran."""

    ops: tuple[Op, ...] = ()
    last: bool = False


@dataclass(frozen=True)
class Baseline:
    """What the host had before our chains first existed, to put back when the last network goes."""

    boot_id: str
    tables: tuple[str, ...]  # which of nat/filter existed
    ip_forward: str


# ---- parsing iptables-save --------------------------------------------------------------------


def _split(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError:
        # Only host rules with odd quoting land here; plain tokens still show their target.
        return tuple(text.split())


def parse_save(text: str) -> dict[str, Table]:
    """The tables of `iptables-save` output by name; only tables that exist are printed."""
    tables: dict[str, Table] = {}
    name = ""
    policies: dict[str, str] = {}
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name, policies, rules = line[1:], {}, []
        elif not name:
            raise FailedPrecondition(f"cannot read iptables-save output: line {number} is outside a table: {line}")
        elif line.startswith(":"):
            chain, _, rest = line[1:].partition(" ")
            policies[chain] = rest.split(" ", 1)[0] if rest else "-"
        elif line.startswith("-A "):
            tokens = _split(line)
            if len(tokens) < 2:
                raise FailedPrecondition(f"cannot read iptables-save output: line {number}: {line}")
            rules.append(Rule(name, tokens[1], line, tokens[2:]))
        elif line == "COMMIT":
            tables[name] = Table(name, dict(policies), tuple(rules))
            name = ""
        else:
            raise FailedPrecondition(f"cannot read iptables-save output: line {number}: {line}")
    return tables


def _rules(ruleset: Ruleset, table: str | None = None) -> Iterable[Rule]:
    for name, parsed in ruleset.items():
        if table is None or name == table:
            yield from parsed.rules


def has_chain(ruleset: Ruleset, table: str, chain: str) -> bool:
    return table in ruleset and chain in ruleset[table].policies


def has_our_chains(ruleset: Ruleset) -> bool:
    return any(has_chain(ruleset, table, chain) for table, chains in OUR_CHAINS.items() for chain in chains)


def table_is_empty(table: Table) -> bool:
    """True when the table holds nothing but built-in chains with ACCEPT policies."""
    builtin = BUILTIN_CHAINS.get(table.name, ())
    return not table.rules and all(chain in builtin and policy == "ACCEPT" for chain, policy in table.policies.items())


# ---- tags ---------------------------------------------------------------------------------------


def net_tag(network: str) -> str:
    return f"{NET_TAG_PREFIX}{network}"


def port_tag(container_id: str, port: Port) -> str:
    return f"mydocker ctr={container_id} port={port.host_port}/{port.protocol}"


def parse_net_tag(comment: str) -> str | None:
    """The network of a `mydocker net=` comment, None for any other comment."""
    match = _NET_TAG.fullmatch(comment)
    return match.group(1) if match else None


def parse_port_tag(comment: str) -> tuple[str, int, str] | None:
    """(container id, host port, protocol) of a port comment, None for any other comment."""
    match = _PORT_TAG.fullmatch(comment)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


def network_names(ruleset: Ruleset) -> set[str]:
    return {name for rule in _rules(ruleset) if (name := parse_net_tag(rule.comment)) is not None}


def _host_ip(rule: Rule) -> str:
    address = rule.option("-d")
    return address.removesuffix("/32")


def published_ports(ruleset: Ruleset) -> dict[str, list[Port]]:
    """Container id -> its ports, read from the DNAT rules."""
    ports: dict[str, list[Port]] = {}
    for rule in _rules(ruleset, NAT):
        tag = parse_port_tag(rule.comment)
        if rule.chain != DNAT_CHAIN or tag is None:
            continue
        container_id, host_port, protocol = tag
        _, _, container_port = rule.option("--to-destination").rpartition(":")
        port = Port(_host_ip(rule), host_port, int(container_port) if container_port.isdigit() else 0, protocol)
        ports.setdefault(container_id, []).append(port)
    return {owner: sorted(found, key=lambda p: (p.host_port, p.protocol)) for owner, found in ports.items()}


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
        if any(rule.chain == jump.chain and rule.target == jump.target for rule in _rules(ruleset, jump.table)):
            continue
        where = f"-I {jump.chain} 1" if jump.insert else f"-A {jump.chain}"
        ops.append(Op(jump.table, f"{where} {_join(*jump.match, '-j', jump.target)}"))
    return ops


def network_rules(network: str, bridge: str, subnet: str) -> list[Op]:
    tag = ("-m", "comment", "--comment", net_tag(network))
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


def plan_add_network(ruleset: Ruleset, network: str, bridge: str, subnet: str) -> Plan:
    """Missing chains and jumps, then the network's rules in each table that lacks them or holds stale ones."""
    subnet = validate_network(network, bridge, subnet)
    ops = _setup_ops(ruleset)
    tag = net_tag(network)
    wanted = network_rules(network, bridge, subnet)
    for table in TABLES:
        saved = [rule for rule in _rules(ruleset, table) if rule.comment == tag]
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
        for rule in _rules(ruleset, table):
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
        for rule in _rules(ruleset, FILTER)
        if rule.chain == FORWARD_CHAIN and parse_port_tag(rule.comment) is not None and rule.option("-o") == bridge
    }


def plan_remove_network(ruleset: Ruleset, network: str, bridge: str, subnet: str) -> Plan:
    """The network's rules and the ports published into its bridge deleted; everything ours if it was the last."""
    validate_network(network, bridge, subnet)
    tag = net_tag(network)
    others = network_names(ruleset) - {network}
    if not others:
        return Plan(tuple(_teardown_ops(ruleset)), last=True)
    doomed = {tag} | _tags_on_bridge(ruleset, bridge)
    ops = [
        Op(rule.table, rule.delete_line()) for table in TABLES for rule in _rules(ruleset, table) if rule.comment in doomed
    ]
    return Plan(tuple(ops))


def find_conflict(ruleset: Ruleset, container_id: str, port: Port) -> str | None:
    """The other container that holds port's host port and protocol on an overlapping address, if any."""
    for rule in _rules(ruleset, NAT):
        tag = parse_port_tag(rule.comment)
        if rule.chain != DNAT_CHAIN or tag is None:
            continue
        holder, host_port, protocol = tag
        if holder == container_id or (host_port, protocol) != (port.host_port, port.protocol):
            continue
        held_ip = _host_ip(rule)
        if not held_ip or not port.host_ip or held_ip == port.host_ip:
            return holder
    return None


def port_rules(container_id: str, bridge: str, address: str, port: Port) -> list[Op]:
    tag = ("-m", "comment", "--comment", port_tag(container_id, port))
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


def plan_publish(ruleset: Ruleset, container_id: str, bridge: str, address: str, ports: Sequence[Port]) -> Plan:
    """DNAT and FORWARD rules of each port not yet published as asked; AlreadyExists for one another container holds."""
    ports = validate_ports(container_id, bridge, address, ports)
    address = _ipv4(address, "container address")
    if not (has_chain(ruleset, NAT, DNAT_CHAIN) and has_chain(ruleset, FILTER, FORWARD_CHAIN)):
        raise FailedPrecondition(f"cannot publish ports of container {container_id}: no network has firewall rules yet")
    for port in ports:
        holder = find_conflict(ruleset, container_id, port)
        if holder is not None:
            raise AlreadyExists(
                f"host port {port.host_port}/{port.protocol} is already published by container {holder}: "
                "choose another host port or remove that container"
            )
    ops: list[Op] = []
    for port in ports:
        tag = port_tag(container_id, port)
        saved = [rule for rule in _rules(ruleset) if rule.comment == tag]
        if saved and _port_matches(saved, bridge, address, port):
            continue
        ops.extend(Op(rule.table, rule.delete_line()) for rule in saved)
        ops.extend(port_rules(container_id, bridge, address, port))
    return Plan(tuple(sorted(ops, key=lambda op: TABLES.index(op.table))))


def plan_unpublish(ruleset: Ruleset, container_id: str) -> Plan:
    ops = [
        Op(rule.table, rule.delete_line())
        for table in TABLES
        for rule in _rules(ruleset, table)
        if (tag := parse_port_tag(rule.comment)) is not None and tag[0] == container_id
    ]
    return Plan(tuple(ops))


# ---- baseline -----------------------------------------------------------------------------------


def baseline_to_json(baseline: Baseline) -> str:
    data = {"boot_id": baseline.boot_id, "tables": list(baseline.tables), "ip_forward": baseline.ip_forward}
    return json.dumps(data) + "\n"


def baseline_from_json(text: str) -> Baseline | None:
    """The baseline, or None when the file is not one (then the host is left as it is)."""
    try:
        data = json.loads(text)
        return Baseline(str(data["boot_id"]), tuple(str(name) for name in data["tables"]), str(data["ip_forward"]))
    except (ValueError, KeyError, TypeError):
        return None


def tables_to_delete(ruleset: Ruleset, baseline: Baseline) -> list[str]:
    """Tables we brought into being and that are empty again."""
    return [
        table
        for table in (NAT, FILTER)
        if table not in baseline.tables and table in ruleset and table_is_empty(ruleset[table])
    ]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---- the firewall -------------------------------------------------------------------------------


class Firewall:
    """Reads the rules with iptables-save and changes them with one iptables-restore --noflush per operation."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = Path(state_dir)
        self._lock = threading.Lock()
        self._nf_tables: bool | None = None

    @property
    def _baseline_path(self) -> Path:
        return self._state_dir / BASELINE_FILE

    def add_network(self, network: str, bridge: str, subnet: str) -> None:
        with self._lock:
            ruleset = self._save()
            plan = plan_add_network(ruleset, network, bridge, subnet)
            if plan.ops:
                if not has_our_chains(ruleset):
                    self._record_baseline(ruleset)
                self._apply(f"add network {network}", plan)
            # Set after the rules rather than at the first network only: a half-applied first batch
            # is completed by the next call, which then must not leave forwarding off.
            if _read(IP_FORWARD) != "1":
                _write_sysctl(IP_FORWARD, "1")

    def remove_network(self, network: str, bridge: str, subnet: str) -> None:
        with self._lock:
            plan = plan_remove_network(self._save(), network, bridge, subnet)
            if plan.ops:
                self._apply(f"remove network {network}", plan)
            if plan.last:
                self._restore_baseline()

    def publish(self, container_id: str, bridge: str, address: str, ports: Sequence[Port]) -> None:
        with self._lock:
            plan = plan_publish(self._save(), container_id, bridge, address, ports)
            if plan.ops:
                self._apply(f"publish ports of container {container_id}", plan)

    def unpublish(self, container_id: str) -> None:
        with self._lock:
            plan = plan_unpublish(self._save(), container_id)
            if plan.ops:
                self._apply(f"unpublish ports of container {container_id}", plan)

    def published(self) -> dict[str, list[Port]]:
        return published_ports(self._save())

    def networks(self) -> set[str]:
        return network_names(self._save())

    # ---- the host side

    def _run(self, binary: str, args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        path = shutil.which(binary, path=SEARCH_PATH)
        if path is None:
            raise FailedPrecondition(NOT_INSTALLED)
        try:
            return subprocess.run(
                [path, *args], input=stdin, capture_output=True, text=True, timeout=IPTABLES_TIMEOUT,
                stdin=None if stdin is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise FailedPrecondition(NOT_INSTALLED) from None
        except subprocess.TimeoutExpired:
            raise FailedPrecondition(f"{binary} did not finish within {IPTABLES_TIMEOUT:g} s") from None

    def _save(self) -> dict[str, Table]:
        result = self._run("iptables-save", [])
        if result.returncode != 0:
            raise FailedPrecondition(f"cannot read iptables rules: iptables-save failed: {_first_line(result.stderr)}")
        return parse_save(result.stdout)

    def _apply(self, operation: str, plan: Plan) -> None:
        validate_plan(plan)
        result = self._run("iptables-restore", ["-w", "--noflush"], stdin=render(plan))
        if result.returncode != 0:
            raise FailedPrecondition(f"cannot {operation}: iptables-restore failed: {_first_line(result.stderr)}")

    def _is_nf_tables(self) -> bool:
        if self._nf_tables is None:
            result = self._run("iptables", ["-V"])
            self._nf_tables = "nf_tables" in result.stdout
        return self._nf_tables

    def _record_baseline(self, ruleset: Ruleset) -> None:
        boot_id = _read(BOOT_ID)
        existing = self._read_baseline()
        if existing is not None and existing.boot_id == boot_id:
            # Same boot: a teardown or a first batch was cut short, and this record is still the host's own.
            return
        tables = tuple(table for table in (NAT, FILTER) if table in ruleset)
        self._state_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._baseline_path, baseline_to_json(Baseline(boot_id, tables, _read(IP_FORWARD))))

    def _read_baseline(self) -> Baseline | None:
        try:
            return baseline_from_json(self._baseline_path.read_text())
        except FileNotFoundError:
            return None

    def _restore_baseline(self) -> None:
        """Delete the tables we created and put ip_forward back, once our chains are gone."""
        baseline = self._read_baseline()
        if baseline is None:
            return  # nothing recorded (lost, or never ours): the host is left as it is
        ruleset = self._save()
        if has_our_chains(ruleset) or network_names(ruleset):
            return
        # A record from another boot describes a host whose rules the reboot already wiped.
        if baseline.boot_id == _read(BOOT_ID):
            doomed = tables_to_delete(ruleset, baseline)
            if doomed and self._is_nf_tables():
                _delete_nft_tables(doomed)
            if _read(IP_FORWARD) != baseline.ip_forward:
                _write_sysctl(IP_FORWARD, baseline.ip_forward)
        self._baseline_path.unlink(missing_ok=True)


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip() if lines else "no error message"


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write_sysctl(path: Path, value: str) -> None:
    try:
        path.write_text(f"{value}\n")
    except OSError as error:
        raise FailedPrecondition(f"cannot write {path}: {error.strerror}") from None


def _delete_nft_tables(names: Sequence[str]) -> None:
    # iptables -X leaves the nf_tables table behind; only nftables itself deletes it.
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.nftables.main import NFTables

    try:
        with NFTables(nfgen_family=socket.AF_INET) as nft:
            for name in names:
                nft.table("del", name=name)
    except (NetlinkError, OSError) as error:
        raise FailedPrecondition(f"cannot delete the empty iptables table: {error}") from None
