"""The host's iptables for bridge networks: reads them with iptables-save, applies plans with iptables-restore, keeps a baseline."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import FailedPrecondition
from services.executor.firewall_plan import plan_add_network, plan_publish, plan_remove_network, plan_unpublish
from services.executor.firewall_plan import Plan, render, validate_plan
from services.executor.firewall_rules import (
    FILTER,
    NAT,
    Port,
    Ruleset,
    Table,
    has_our_chains,
    network_names,
    parse_save,
    published_ports,
    split_key,
    table_is_empty,
)

# Services may run with a PATH that lacks the sbin directories iptables lives in.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"])
NOT_INSTALLED = "iptables is not installed: run scripts/up, which installs it"
IPTABLES_TIMEOUT = 30.0
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
BASELINE_FILE = "firewall-baseline.json"


@dataclass(frozen=True)
class Baseline:
    """What the host had before our chains first existed, to put back when the last network goes."""

    boot_id: str
    tables: tuple[str, ...]  # which of nat/filter existed
    ip_forward: str


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

    def __init__(self, state_dir: Path, instance: str = "") -> None:
        self._state_dir = Path(state_dir)
        # Config.instance: its tags set this instance's rules apart from another's in the shared chains.
        self._instance = instance
        self._lock = threading.Lock()
        self._nf_tables: bool | None = None

    @property
    def _baseline_path(self) -> Path:
        return self._state_dir / BASELINE_FILE

    def add_network(self, network: str, bridge: str, subnet: str) -> None:
        with self._lock:
            ruleset = self._save()
            plan = plan_add_network(ruleset, network, bridge, subnet, self._instance)
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
            plan = plan_remove_network(self._save(), network, bridge, subnet, self._instance)
            if plan.ops:
                self._apply(f"remove network {network}", plan)
            if plan.last:
                self._restore_baseline()

    def publish(self, container_id: str, bridge: str, address: str, ports: Sequence[Port]) -> None:
        with self._lock:
            plan = plan_publish(self._save(), container_id, bridge, address, ports, self._instance)
            if plan.ops:
                self._apply(f"publish ports of container {container_id}", plan)

    def unpublish(self, container_id: str) -> None:
        with self._lock:
            plan = plan_unpublish(self._save(), container_id, self._instance)
            if plan.ops:
                self._apply(f"unpublish ports of container {container_id}", plan)

    def published(self) -> dict[str, list[Port]]:
        """This instance's containers with published ports, by id."""
        return published_ports(self._save(), self._instance)

    def networks(self) -> set[str]:
        """This instance's networks that have rules."""
        keys = (split_key(key) for key in network_names(self._save()))
        return {name for name, instance in keys if instance == self._instance}

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
