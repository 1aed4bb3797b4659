"""A container's /etc/hosts, /etc/hostname and /etc/resolv.conf: the texts, the written files, their bind mounts."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.common import linux
from services.executor.init import InitError, make_file_target, safe_target
from services.executor.netfiles import hostname_text, hosts_text, resolv_conf_text, write_network_files
from services.executor.plan import ContainerPlan, build_plan, validate


def test_hosts_has_localhost_then_the_container():
    assert hosts_text("web", "10.88.0.2") == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.88.0.2\tweb\n"
    )
    assert hosts_text("web") == "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def test_hostname_is_one_line():
    assert hostname_text("web") == "web\n"


def test_resolv_conf_drops_loopback_nameservers_only():
    host = (
        "# generated\n"
        "nameserver 127.0.0.53\n"
        "nameserver 10.0.0.2\n"
        "nameserver ::1\n"
        "nameserver 127.1.2.3\n"
        "nameserver fe80::1%eth0\n"
        "nameserver 2001:db8::1\n"
        "search example.com lan\n"
        "options edns0 trust-ad"
    )
    assert resolv_conf_text(host) == (
        "# generated\n"
        "nameserver 10.0.0.2\n"
        "nameserver fe80::1%eth0\n"
        "nameserver 2001:db8::1\n"
        "search example.com lan\n"
        "options edns0 trust-ad\n"
    )


def test_resolv_conf_invents_no_nameserver():
    text = resolv_conf_text("nameserver 127.0.0.53\nsearch lan\n")
    assert text == "search lan\n"
    assert resolv_conf_text("") == ""


def test_write_network_files(tmp_path: Path):
    host_resolv = tmp_path / "host-resolv.conf"
    host_resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1\n")
    state = tmp_path / "state"
    state.mkdir()
    old_umask = os.umask(0o077)
    try:
        mounts = write_network_files(state, "web", "10.88.0.2", str(host_resolv), str(tmp_path / "no-resolved"))
    finally:
        os.umask(old_umask)
    assert (state / "hosts").read_text().endswith("10.88.0.2\tweb\n")
    assert (state / "hostname").read_text() == "web\n"
    assert (state / "resolv.conf").read_text() == "nameserver 192.0.2.1\n"
    for name in ("hosts", "hostname", "resolv.conf"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o644
    assert [(m.source, m.target) for m in mounts] == [
        (str(state / "hosts"), "/etc/hosts"),
        (str(state / "hostname"), "/etc/hostname"),
        (str(state / "resolv.conf"), "/etc/resolv.conf"),
    ]
    assert all(m.target_is_file and m.flags == linux.MS_BIND for m in mounts)


def test_rewrite_keeps_the_inode(tmp_path: Path):
    # A bind mount pins the inode: a later rewrite must land in the same file.
    write_network_files(tmp_path, "web", "", str(tmp_path / "missing"))
    inode = (tmp_path / "hosts").stat().st_ino
    write_network_files(tmp_path, "web", "10.88.0.9", str(tmp_path / "missing"))
    assert (tmp_path / "hosts").stat().st_ino == inode
    assert "10.88.0.9\tweb" in (tmp_path / "hosts").read_text()
    assert (tmp_path / "resolv.conf").read_text() == ""


def test_plan_with_network_files_validates_and_round_trips(tmp_path: Path):
    mounts = write_network_files(tmp_path, "web", "10.88.0.2", str(tmp_path / "missing"))
    built = validate(build_plan("1234567890", "web", "/var/lib/x/merged", ["sh"], [], extra_mounts=mounts))
    assert [m.target for m in built.mounts][-3:] == ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
    assert ContainerPlan.from_json(built.to_json()) == built


def test_file_target_is_created_with_its_parents(tmp_path: Path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    target = safe_target(str(rootfs), "/etc/hosts")
    make_file_target(target)
    assert (rootfs / "etc" / "hosts").is_file()
    assert (rootfs / "etc" / "hosts").stat().st_size == 0


def test_file_target_keeps_what_the_image_has(tmp_path: Path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("image's own\n")
    os.mkfifo(etc / "hostname")
    make_file_target(str(etc / "hosts"))
    # A fifo is left alone: opening it would block init.
    make_file_target(str(etc / "hostname"))
    assert (etc / "hosts").read_text() == "image's own\n"
    assert stat.S_ISFIFO((etc / "hostname").lstat().st_mode)


def test_directory_targets_refuse_symlinks(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").symlink_to("/tmp/elsewhere")
    with pytest.raises(InitError, match="symbolic link"):
        safe_target(str(tmp_path), "/etc/resolv.conf")


def test_file_targets_follow_the_image_links_without_leaving_the_rootfs(tmp_path: Path):
    from services.executor.init import resolve_in_rootfs

    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "run" / "systemd" / "resolve").mkdir(parents=True)
    # systemd images: an absolute link, resolved from the rootfs, not from the host's /.
    (root / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    assert resolve_in_rootfs(str(root), "/etc/resolv.conf") == str(root / "run/systemd/resolve/stub-resolv.conf")
    # A relative link climbing past the root stops at it.
    (root / "etc" / "hosts").symlink_to("../../../../../etc/hosts-of-the-host")
    assert resolve_in_rootfs(str(root), "/etc/hosts") == str(root / "etc" / "hosts-of-the-host")
    (root / "etc" / "hostname").symlink_to("hostname")
    with pytest.raises(InitError, match="too many symbolic links"):
        resolve_in_rootfs(str(root), "/etc/hostname")
    # A directory on the way may be a link too.
    (root / "usr" / "etc").mkdir(parents=True)
    (root / "etc2").symlink_to("usr/etc")
    assert resolve_in_rootfs(str(root), "/etc2/hosts") == str(root / "usr" / "etc" / "hosts")
    assert resolve_in_rootfs(str(root), "/plain/file") == str(root / "plain" / "file")


def test_a_host_behind_systemd_resolved_gives_its_upstream_servers():
    from services.executor.netfiles import container_resolv_conf

    stub = "nameserver 127.0.0.53\noptions edns0\nsearch lan\n"
    upstream = "nameserver 192.0.2.53\nsearch lan\n"
    assert container_resolv_conf(stub, upstream) == upstream
    # Without systemd-resolved, or with real servers on the host, the host's file as it is.
    assert container_resolv_conf(stub, None) == "options edns0\nsearch lan\n"
    assert container_resolv_conf("nameserver 192.0.2.1\n", upstream) == "nameserver 192.0.2.1\n"
