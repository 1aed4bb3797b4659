"""Bridges and veth pairs through pyroute2's IPRoute: on the host, and inside a container's netns reached by fd."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from services.common import linux
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

CONTAINER_IFNAME = "eth0"
ROUTE_LOCALNET = "/proc/sys/net/ipv4/conf/{}/route_localnet"
_THREAD_NETNS = "/proc/thread-self/ns/net"


def _kernel_error(what: str, err: NetlinkError | OSError) -> FailedPrecondition:
    code = err.code if isinstance(err, NetlinkError) else err.errno
    return FailedPrecondition(f"{what}: [Errno {code}] {os.strerror(code)}")


def _netns_socket(netns_fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket of the netns behind `netns_fd`.

    A netlink socket stays in the netns it was created in, so it is made in a thread of its own that
    enters the netns and dies: the caller's thread (a gRPC worker) never changes netns, and no process
    is forked, as pyroute2's IPRoute(netns=...) would do.
    """
    result: list[socket.socket] = []
    failure: list[OSError] = []

    def create() -> None:
        try:
            old = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
            try:
                linux.setns(netns_fd, linux.CLONE_NEWNET)
                try:
                    result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE))
                finally:
                    # Should this fail, the thread ends anyway: the netns goes with it.
                    linux.setns(old, linux.CLONE_NEWNET)
            finally:
                os.close(old)
        except OSError as err:
            failure.append(err)

    thread = threading.Thread(target=create, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    if failure:
        for sock in result:
            sock.close()
        raise _kernel_error("cannot open a netlink socket in the container's network namespace", failure[0])
    return result[0]


@contextlib.contextmanager
def netns_iproute(netns_fd: int) -> Iterator[IPRoute]:
    """An IPRoute whose every request acts in the netns behind `netns_fd` (e.g. an fd of /proc/PID/ns/net)."""
    sock = _netns_socket(netns_fd)
    # IPRoute takes the fd over (it wraps it in a socket of its own and closes it on close()).
    ipr = IPRoute(fileno=sock.detach())
    try:
        yield ipr
    finally:
        ipr.close()


@contextlib.contextmanager
def _host() -> Iterator[IPRoute]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _lookup(ipr: IPRoute, name: str):
    """The link message named `name`, or None."""
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        return None
    return ipr.get_links(indexes[0])[0]


def _link_kind(link) -> str:
    info = link.get("IFLA_LINKINFO")
    return (info.get("IFLA_INFO_KIND") if info else None) or ""


def _has_address(ipr: IPRoute, index: int, address: str, prefix_length: int) -> bool:
    return any(
        a.get("IFA_LOCAL") == address and a["prefixlen"] == prefix_length
        for a in ipr.get_addr(family=socket.AF_INET, index=index)
    )


def _check_ipv4(address: str, prefix_length: int, what: str) -> None:
    try:
        ipaddress.IPv4Interface(f"{address}/{prefix_length}")
    except ValueError:
        raise InvalidArgument(f'invalid {what} "{address}/{prefix_length}": use an IPv4 address and a prefix length') from None


def ensure_bridge(name: str, gateway: str, prefix_length: int, alias: str = "") -> None:
    """Create bridge `name` if absent, with `gateway/prefix_length`, up, and route_localnet on. Idempotent.

    `alias` (IFLA_IFALIAS) names the mydocker instance that made it (netnames.link_alias).
    """
    _check_ipv4(gateway, prefix_length, "gateway")
    with _host() as ipr:
        try:
            link = _lookup(ipr, name)
            if link is None:
                try:
                    ipr.link("add", ifname=name, kind="bridge")
                except NetlinkError as err:
                    # Another request created it in between: fine, it is checked below like any existing link.
                    if err.code != errno.EEXIST:
                        raise
                link = _lookup(ipr, name)
                if link is None:
                    raise FailedPrecondition(f"bridge {name} vanished right after its creation")
            if _link_kind(link) != "bridge":
                raise FailedPrecondition(f"a link named {name} exists and is not a bridge: remove it or rename the network")
            index = link["index"]
            if not _has_address(ipr, index, gateway, prefix_length):
                try:
                    ipr.addr("add", index=index, address=gateway, prefixlen=prefix_length)
                except NetlinkError as err:
                    if err.code != errno.EEXIST:
                        raise
            ipr.link("set", index=index, state="up", **({"ifalias": alias} if alias else {}))
        except NetlinkError as err:
            raise _kernel_error(f"cannot set up bridge {name}", err) from None
    # Per interface, so it vanishes with the bridge: lets DNAT send 127.0.0.1 traffic to a container.
    try:
        with open(ROUTE_LOCALNET.format(name), "w") as handle:
            handle.write("1")
    except OSError as err:
        raise _kernel_error(f"cannot enable route_localnet on bridge {name}", err) from None


def delete_bridge(name: str) -> None:
    """Delete bridge `name`; an absent one is fine. Refuses a link of that name that is not a bridge."""
    with _host() as ipr:
        try:
            link = _lookup(ipr, name)
            if link is None:
                return
            if _link_kind(link) != "bridge":
                raise FailedPrecondition(f"a link named {name} exists and is not a bridge: not deleting it")
            ipr.link("del", index=link["index"])
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return
            raise _kernel_error(f"cannot delete bridge {name}", err) from None


def connect(
    netns_fd: int, host_ifname: str, bridge: str, address: str, prefix_length: int, gateway: str, alias: str = ""
) -> None:
    """Join the netns behind `netns_fd` to `bridge`: a veth pair whose container end is `eth0` there.

    The host end gets `alias` (IFLA_IFALIAS), naming the mydocker instance it belongs to.

    Inside the netns: `address/prefix_length` on eth0, eth0 and lo up, a default route via `gateway`.
    On failure nothing is left behind: deleting the host end deletes its peer too.
    """
    _check_ipv4(address, prefix_length, "address")
    _check_ipv4(gateway, prefix_length, "gateway")
    with _host() as ipr:
        try:
            bridge_link = _lookup(ipr, bridge)
            if bridge_link is None or _link_kind(bridge_link) != "bridge":
                raise NotFound(f"bridge {bridge} does not exist: create the network's bridge first")
            # The peer is created straight inside the netns under its final name: no rename, no window
            # in which a second eth0 could clash on the host.
            ipr.link(
                "add",
                ifname=host_ifname,
                kind="veth",
                peer={"ifname": CONTAINER_IFNAME, "net_ns_fd": netns_fd},
            )
        except NetlinkError as err:
            if err.code == errno.EEXIST:
                raise AlreadyExists(
                    f"cannot create veth {host_ifname}: a link of that name exists on the host, "
                    f"or {CONTAINER_IFNAME} exists in the container's network namespace"
                ) from None
            raise _kernel_error(f"cannot create veth {host_ifname}", err) from None
        try:
            try:
                ipr.link(
                    "set", ifname=host_ifname, master=bridge_link["index"], state="up", **({"ifalias": alias} if alias else {})
                )
            except NetlinkError as err:
                raise _kernel_error(f"cannot attach veth {host_ifname} to bridge {bridge}", err) from None
            _configure_container_end(netns_fd, address, prefix_length, gateway)
        except BaseException:
            # The error being raised is the one to report; a failed cleanup shows up as a leftover to reconcile.
            with contextlib.suppress(NetlinkError):
                ipr.link("del", ifname=host_ifname)
            raise


def _configure_container_end(netns_fd: int, address: str, prefix_length: int, gateway: str) -> None:
    with netns_iproute(netns_fd) as ipr:
        try:
            index = ipr.link_lookup(ifname=CONTAINER_IFNAME)[0]
            ipr.addr("add", index=index, address=address, prefixlen=prefix_length)
            ipr.link("set", index=index, state="up")
            ipr.link("set", ifname="lo", state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
        except NetlinkError as err:
            raise _kernel_error(f"cannot configure {CONTAINER_IFNAME} ({address}/{prefix_length} via {gateway})", err) from None


def disconnect(host_ifname: str) -> None:
    """Delete the host end of a veth pair (and so its peer); an absent one is fine."""
    with _host() as ipr:
        try:
            ipr.link("del", ifname=host_ifname)
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return
            raise _kernel_error(f"cannot delete veth {host_ifname}", err) from None


def link_names(prefix: str) -> list[str]:
    """Names of the host's links that start with `prefix`, sorted."""
    if not prefix:
        raise InvalidArgument("link_names needs a prefix: listing every host link is never what reconcile wants")
    with _host() as ipr:
        try:
            names = [link.get("IFLA_IFNAME") for link in ipr.get_links()]
        except NetlinkError as err:
            raise _kernel_error("cannot list the host's links", err) from None
    return sorted(name for name in names if name and name.startswith(prefix))


def link_exists(name: str) -> bool:
    """Whether the host has a link called `name`, of any kind."""
    with _host() as ipr:
        try:
            return _lookup(ipr, name) is not None
        except NetlinkError as err:
            raise _kernel_error(f"cannot look up link {name}", err) from None


def is_bridge(name: str) -> bool:
    """Whether the host's link `name` exists and is a bridge."""
    with _host() as ipr:
        try:
            link = _lookup(ipr, name)
        except NetlinkError as err:
            raise _kernel_error(f"cannot look up link {name}", err) from None
    return link is not None and _link_kind(link) == "bridge"


def attached_links(bridge: str) -> list[str]:
    """Names of the host links plugged into `bridge`, sorted; none when the bridge is absent."""
    with _host() as ipr:
        try:
            link = _lookup(ipr, bridge)
            if link is None:
                return []
            ports = ipr.get_links(master=link["index"])
        except NetlinkError as err:
            raise _kernel_error(f"cannot list the links of bridge {bridge}", err) from None
    return sorted(port.get("IFLA_IFNAME") for port in ports)


def host_routes() -> list[tuple[str, str]]:
    """The host's IPv4 routes of the main table that name a destination, as ("10.0.0.0/24", "eth0").

    The default route (prefix 0) is left out: every subnet lies inside it.
    """
    with _host() as ipr:
        try:
            routes = ipr.get_routes(family=socket.AF_INET, table=254)
            names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        except NetlinkError as err:
            raise _kernel_error("cannot read the host's routes", err) from None
    found = []
    for route in routes:
        destination, prefix_length = route.get("RTA_DST"), route["dst_len"]
        if destination and prefix_length:
            found.append((f"{destination}/{prefix_length}", names.get(route.get("RTA_OIF"), "") or ""))
    return found
