"""The seed chapter's test section (section 3, 测试) and its closing script, run exactly as written."""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e.conftest import both_cli_modes

# Every test twice: through the CLI server, and with the CLI in-process.
pytestmark = [pytest.mark.root, both_cli_modes]


def ls(path) -> list[str]:
    """What `ls` prints: hidden entries left out."""
    return sorted(name for name in os.listdir(path) if not name.startswith("."))


def ps_rows(host) -> dict[str, list[str]]:
    lines = host.mydocker("ps").stdout.splitlines()
    assert lines[0].split() == ["ID", "NAME", "PID", "IP", "STATUS", "COMMAND", "CREATED"]
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_rootfs_isolation_commit_and_rm_as_in_the_seed(host):
    root = host.root
    # ./mydocker run -d -name rootfs busybox top
    container_id = host.mydocker("run", "-d", "-name", "rootfs", "busybox", "top").stdout.strip()
    assert re.fullmatch(r"[0-9]{10}", container_id)

    row = ps_rows(host)[container_id]
    assert row[1:6] == ["rootfs", row[2], "-", "running", "top"] and row[2].isdigit()

    rootfs = root / "overlay2" / container_id
    assert ls(rootfs) == ["lower", "merged", "upper", "work"]
    expected = {"bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "var"}
    assert expected <= set(ls(rootfs / "lower"))
    assert expected <= set(ls(rootfs / "merged"))

    # ./mydocker exec ID /bin/sh, then: echo KubeExplorer > a.txt; cat a.txt
    shell = host.mydocker("exec", container_id, "/bin/sh", stdin="echo KubeExplorer > a.txt\ncat a.txt\n")
    assert shell.stdout == "KubeExplorer\n"
    assert "a.txt" in ls(rootfs / "merged")
    assert (rootfs / "merged" / "a.txt").read_text() == "KubeExplorer\n"

    # ./mydocker commit 5341624332 busybox-with-custom
    host.mydocker("commit", container_id, "busybox-with-custom")
    assert {"busybox.tar", "busybox-with-custom.tar"} <= set(ls(root / "image"))

    # ./mydocker run -d -name rootfs2 busybox-with-custom top; exec ... cat a.txt
    second_id = host.mydocker("run", "-d", "-name", "rootfs2", "busybox-with-custom", "top").stdout.strip()
    assert set(ps_rows(host)) >= {container_id, second_id}
    assert host.mydocker("exec", second_id, "/bin/sh", stdin="cat a.txt\n").stdout == "KubeExplorer\n"

    # ./mydocker rm 5341624332 -f removes its rootfs directory
    host.mydocker("rm", container_id, "-f")
    assert not rootfs.exists()
    assert container_id not in ps_rows(host)
    host.mydocker("rm", second_id, "-f")
    assert ls(root / "overlay2") == []


def test_the_seed_closing_script(host):
    root = host.root
    # ./mydocker run -d -name c1 busybox top
    host.mydocker("run", "-d", "-name", "c1", "busybox", "top")
    # ./mydocker ps  (查看容器 Id)
    rows = ps_rows(host)
    container_id = next(cid for cid, row in rows.items() if row[1] == "c1")
    # ./mydocker rm ${containerId} -f
    host.mydocker("rm", container_id, "-f")
    assert container_id not in ps_rows(host)
    assert not (root / "overlay2" / container_id).exists()
