"""Two mydocker instances on one host (different MYDOCKER_ROOT/MYDOCKER_RUN) never see or touch each other's resources."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.netnames import link_alias, veth_name
from services.executor.firewall_rules import net_tag
from tests.conftest import ServiceTracker, temp_config_dir
from tests.e2e.conftest import Host, one_line_error, running_host
from tests.netutil import free_port, free_subnets

pytestmark = pytest.mark.root

NETWORK = "shared"


@pytest.fixture
def two_hosts(service_tracker: ServiceTracker) -> Iterator[tuple[Host, Host]]:
    """Two instances brought up as a user would: no MYDOCKER_CGROUP_PARENT, so each picks its own default."""
    with contextlib.ExitStack() as stack:
        hosts = []
        for _ in range(2):
            config = stack.enter_context(temp_config_dir())
            hosts.append(stack.enter_context(running_host(config, service_tracker, drop_env=("MYDOCKER_CGROUP_PARENT",))))
        yield hosts[0], hosts[1]


def cgroup_paths(pid: int) -> set[str]:
    return {line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()}


def live_pid(host: Host, container_id: str) -> int:
    return int(json.loads(host.mydocker("inspect", container_id).stdout)[0]["live"]["pid"])


def alias_of(link: str) -> str:
    return Path(f"/sys/class/net/{link}/ifalias").read_text().strip()


def iptables_save() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


def test_two_instances_keep_to_their_own_cgroups_bridges_links_and_rules(two_hosts) -> None:
    first, second = two_hosts
    assert first.instance and second.instance and first.instance != second.instance
    subnets = free_subnets(2)
    ports = {}
    ids = {}
    for host, subnet in zip(two_hosts, subnets):
        # The same network name in both: each gets a bridge of its own.
        host.mydocker("network", "create", "--subnet", subnet, NETWORK)
        ports[host.instance] = free_port()
        ids[host.instance] = host.mydocker(
            "run", "-d", "--network", NETWORK, "-p", f"{ports[host.instance]}:80", "busybox", "top"
        ).stdout.strip()
    assert first.bridge(NETWORK) != second.bridge(NETWORK)
    for host in two_hosts:
        container_id = ids[host.instance]
        assert alias_of(host.bridge(NETWORK)) == link_alias(host.instance)
        assert alias_of(veth_name(container_id)) == link_alias(host.instance)
        assert net_tag(NETWORK, host.instance) in iptables_save()
        # Cgroups below the instance's own parent (relative to the executor's cgroup: any prefix above it).
        assert any(path.endswith(f"/mydocker-{host.instance}/{container_id}") for path in cgroup_paths(live_pid(host, container_id)))

    # Each instance's check sees only its own: clean on both, and a repair on one takes nothing of the other.
    for host in two_hosts:
        checked = host.mydocker("system", "check", check=False)
        assert (checked.returncode, checked.stdout) == (0, "no problems found\n"), checked.stdout + checked.stderr
    assert first.mydocker("system", "check", "--repair").returncode == 0
    other_pid = live_pid(second, ids[second.instance])
    assert any(path.endswith(f"/mydocker-{second.instance}/{ids[second.instance]}") for path in cgroup_paths(other_pid))
    assert second.mydocker("system", "check", check=False).stdout == "no problems found\n"

    # A host port is the host's: the second instance cannot publish the first's, and says whose it is.
    refused = second.mydocker("run", "-d", "--network", NETWORK, "-p", f"{ports[first.instance]}:80", "busybox", "top", check=False)
    assert ids[first.instance] in one_line_error(refused)

    # Removing the first instance's network (its last) leaves the second's bridge, rules and container alone.
    first.mydocker("rm", "-f", ids[first.instance])
    first.mydocker("network", "rm", NETWORK)
    assert not Path(f"/sys/class/net/{first.bridge(NETWORK)}").exists()
    saved = iptables_save()
    assert net_tag(NETWORK, first.instance) + '"' not in saved and f"{net_tag(NETWORK, first.instance)} " not in saved
    assert net_tag(NETWORK, second.instance) in saved and "MYDOCKER-FORWARD" in saved
    assert Path(f"/sys/class/net/{second.bridge(NETWORK)}").exists()
    assert second.mydocker("exec", ids[second.instance], "true").returncode == 0
    assert second.mydocker("system", "check", check=False).stdout == "no problems found\n"
