"""What iptables-save shows: its tables and rules, mydocker's chains in them, and the tags that say whose a rule is."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.common.errors import FailedPrecondition

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
# Every instance shares the chains (one host, one FORWARD path); a tag names its owner as
# NAME@INSTANCE, or plain NAME for the default instance (the tags hosts already carry).
_INSTANCE_SEPARATOR = "@"


@dataclass(frozen=True)
class Port:
    """One published port: host_ip "" means every address of the host."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str  # "tcp" | "udp"



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


def rules_of(ruleset: Ruleset, table: str | None = None) -> Iterable[Rule]:
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


def owner_key(name: str, instance: str = "") -> str:
    """How a tag names network or container `name` of mydocker instance `instance` (Config.instance)."""
    return f"{name}{_INSTANCE_SEPARATOR}{instance}" if instance else name


def split_key(key: str) -> tuple[str, str]:
    """(name, instance) of a tag's owner key."""
    name, _, instance = key.partition(_INSTANCE_SEPARATOR)
    return name, instance


def net_tag(network: str, instance: str = "") -> str:
    return f"{NET_TAG_PREFIX}{owner_key(network, instance)}"


def port_tag(container_id: str, port: Port, instance: str = "") -> str:
    return f"mydocker ctr={owner_key(container_id, instance)} port={port.host_port}/{port.protocol}"


def parse_net_tag(comment: str) -> str | None:
    """The owner key (network, and instance if not the default one) of a `mydocker net=` comment; None for others."""
    match = _NET_TAG.fullmatch(comment)
    return match.group(1) if match else None


def parse_port_tag(comment: str) -> tuple[str, int, str] | None:
    """(container owner key, host port, protocol) of a port comment, None for any other comment."""
    match = _PORT_TAG.fullmatch(comment)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


def network_names(ruleset: Ruleset) -> set[str]:
    """The owner keys of every network with rules, whichever instance it belongs to."""
    return {name for rule in rules_of(ruleset) if (name := parse_net_tag(rule.comment)) is not None}


def _host_ip(rule: Rule) -> str:
    address = rule.option("-d")
    return address.removesuffix("/32")


def published_ports(ruleset: Ruleset, instance: str | None = None) -> dict[str, list[Port]]:
    """Container -> its ports, read from the DNAT rules: by owner key, or by id for one `instance` only."""
    ports: dict[str, list[Port]] = {}
    for rule in rules_of(ruleset, NAT):
        tag = parse_port_tag(rule.comment)
        if rule.chain != DNAT_CHAIN or tag is None:
            continue
        owner, host_port, protocol = tag
        if instance is not None:
            container_id, owner_instance = split_key(owner)
            if owner_instance != instance:
                continue
            owner = container_id
        _, _, container_port = rule.option("--to-destination").rpartition(":")
        port = Port(_host_ip(rule), host_port, int(container_port) if container_port.isdigit() else 0, protocol)
        ports.setdefault(owner, []).append(port)
    return {owner: sorted(found, key=lambda p: (p.host_port, p.protocol)) for owner, found in ports.items()}
