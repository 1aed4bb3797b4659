"""A minimal busybox rootfs for tests and benches that run the executor without the storage service."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

# From Debian's busybox-static, which scripts/debian-packages.txt installs.
BUSYBOX = Path("/bin/busybox")


@contextlib.contextmanager
def busybox_rootfs(root: Path, name: str = "busybox") -> Iterator[Path]:
    """<root>/overlay2/<name>/merged: bin/busybox plus its applet links, bind-mounted onto itself as storage's
    overlay would be, where an executor whose MYDOCKER_ROOT is `root` accepts it."""
    rootfs = root / "overlay2" / name / "merged"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", rootfs / "bin" / applet)
    for name in ("proc", "sys", "dev", "tmp", "etc", "root"):
        (rootfs / name).mkdir(exist_ok=True)
    subprocess.run(["mount", "--bind", str(rootfs), str(rootfs)], check=True)
    try:
        yield rootfs
    finally:
        subprocess.run(["umount", str(rootfs)], check=True)
