"""scripts/build-busybox-image: the default image's tar, built into a tmp dir (needs busybox-static)."""

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-busybox-image"



def build(output: Path, env_root: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MYDOCKER_ROOT"}
    args = [str(SCRIPT)]
    if env_root is not None:
        env["MYDOCKER_ROOT"] = str(env_root)
    else:
        args.append(str(output))
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("bb") / "busybox.tar"
    build(output)
    return output


def test_layout(busybox_tar):
    with tarfile.open(busybox_tar) as archive:
        members = {m.name.rstrip("/"): m for m in archive.getmembers()}
    for directory in ("bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "var"):
        assert members[directory].isdir(), directory
    assert members["tmp"].mode == 0o1777
    assert members["root"].mode == 0o700
    assert all((m.uid, m.gid, m.mtime) == (0, 0, 1708560000) for m in members.values())
    # One copy of busybox, every applet a hardlink to it, where `busybox --list-full` puts it.
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    regular = [m for m in members.values() if m.isreg()]
    assert {m.name for m in regular} - {"etc/passwd", "etc/group"} and len(regular) == 3
    data = next(m for m in regular if m.name.startswith("bin/"))
    for applet in applets:
        if applet == "linuxrc":
            continue
        assert applet in members, applet
        assert members[applet].islnk() or members[applet].name == data.name
    assert "bin/sh" in members and "usr/bin/env" in members and "bin/busybox" in members
    with tarfile.open(busybox_tar) as archive:
        passwd = archive.extractfile("etc/passwd").read().decode()
        group = archive.extractfile("etc/group").read().decode()
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:65534:" in passwd
    assert group.startswith("root:x:0:") and "nobody:x:65534:" in group


def test_deterministic_and_no_op_when_present(busybox_tar, tmp_path):
    again = tmp_path / "again.tar"
    build(again)
    assert again.read_bytes() == busybox_tar.read_bytes()
    before = again.stat()
    assert build(again).stdout == ""
    assert again.stat().st_mtime_ns == before.st_mtime_ns and again.stat().st_ino == before.st_ino
    assert sorted(os.listdir(tmp_path)) == ["again.tar"]  # no temp file left


def test_default_output_is_under_mydocker_root(tmp_path):
    build(tmp_path / "unused", env_root=tmp_path / "root")
    assert (tmp_path / "root" / "image" / "busybox.tar").is_file()
