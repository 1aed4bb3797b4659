"""The escape probe (probe.c): compiled static, run inside containers, its one-line-per-probe output parsed.

`probe NAME[=PARAM] ...` prints "NAME[=PARAM] RESULT" for each argument: "ok", an errno name
(EPERM, EROFS, ...), "masked"/"empty"/"data" for reads, "SIG<n>" when the probe was killed.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

SOURCE = Path(__file__).with_name("probe.c")
# Where the image has it.
PROBE = "/probe"

# Extra image users and groups for --user tests: a named user with a primary and a supplementary group.
USER_NAME = "prober"
USER_UID = 4321
USER_GID = 4321
USER_HOME = "/home/prober"
SUPPLEMENTARY_GROUP = "probe-extra"
SUPPLEMENTARY_GID = 5555
# A group nobody is a member of, for --group-add by name.
SPARE_GROUP = "probe-spare"
SPARE_GID = 6666
PASSWD_LINES = f"{USER_NAME}:x:{USER_UID}:{USER_GID}:probe user:{USER_HOME}:/bin/sh\n"
GROUP_LINES = (
    f"{USER_NAME}:x:{USER_GID}:\n"
    f"{SUPPLEMENTARY_GROUP}:x:{SUPPLEMENTARY_GID}:{USER_NAME}\n"
    f"{SPARE_GROUP}:x:{SPARE_GID}:\n"
)


def compile_probe(directory: Path) -> Path:
    """gcc -static -O2 probe.c into `directory`; the binary's path."""
    output = directory / "probe"
    built = subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(output), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if built.returncode != 0:
        raise AssertionError(f"probe.c does not compile:\n{built.stderr}")
    return output


def parse(output: str) -> dict[str, str]:
    """{argument: result} from the probe's output; every line must have exactly the two fields."""
    results = {}
    for line in output.splitlines():
        argument, sep, result = line.rpartition(" ")
        if not sep or not argument or argument in results:
            raise AssertionError(f"unexpected probe output line {line!r} in {output!r}")
        results[argument] = result
    return results


def _add_file(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1708560000
    archive.addfile(info, io.BytesIO(data))


def build_image(busybox_tar: Path, probe: Path, output: Path) -> None:
    """busybox_tar's rootfs plus /probe, the probe user and groups, and /home/prober (owned by it), as a tar."""
    with tarfile.open(busybox_tar) as source, tarfile.open(output, "w") as target:
        names = set()
        for member in source.getmembers():
            name = member.name.removeprefix("./")
            names.add(name)
            if member.isfile() and name in ("etc/passwd", "etc/group"):
                data = source.extractfile(member).read()
                if not data.endswith(b"\n"):
                    data += b"\n"
                data += (PASSWD_LINES if name == "etc/passwd" else GROUP_LINES).encode()
                _add_file(target, member.name, data, member.mode)
                continue
            target.addfile(member, source.extractfile(member) if member.isfile() else None)
        assert {"etc/passwd", "etc/group", "home"} <= names, "the busybox image lacks /etc/passwd, /etc/group or /home"
        home = tarfile.TarInfo(USER_HOME.lstrip("/"))
        home.type = tarfile.DIRTYPE
        home.mode = 0o755
        home.uid, home.gid = USER_UID, USER_GID
        home.mtime = 1708560000
        target.addfile(home)
        _add_file(target, PROBE.lstrip("/"), probe.read_bytes(), 0o755)
