"""Random access to the members of an uncompressed tar by name, for reading image archives.

Links between members are followed inside the archive only; small members (manifests, configs) are
read whole with pread, big ones (layers) through a reader that hands each byte once to a sink.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import BinaryIO, Protocol

from services.common.errors import InvalidArgument
from services.storage import tarsafe
from services.storage.content import READ_LIMIT
from services.storage.paths import DIGEST_PATTERN
from services.storage.tarsafe import UnsafeArchive, split_name

COPY_CHUNK = 1 << 20
MAX_LINK_HOPS = 16


class Sink(Protocol):
    def write(self, data) -> int: ...


class ArchiveTar:
    """The members of one archive file, by normalized name."""

    def __init__(self, archive: BinaryIO, what: str):
        self.what = what
        self.fd = archive.fileno()
        try:
            # "r:" and not tarsafe's "r:*": the data is uncompressed here, and this error has one line.
            tar = tarfile.open(fileobj=archive, mode="r:")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise UnsafeArchive(
                f"{what} is not a readable tar archive ({err}): expected docker save output, an OCI archive or a rootfs tar"
            ) from None
        self.members = tarsafe.load_members(tar, what)
        # tarfile ends quietly at a cut between members: without the end marker a shorter archive would pass.
        if os.pread(self.fd, tarfile.BLOCKSIZE, tar.offset) != bytes(tarfile.BLOCKSIZE):
            last = f' after member "{self.members[-1].name}"' if self.members else ""
            raise UnsafeArchive(f"{what} is truncated: it ends{last} without the end-of-archive marker")
        self.unsafe: list[tarsafe.Problem] = []
        self.by_name: dict[tuple[str, ...], tarfile.TarInfo] = {}
        for member in self.members:
            parts, reason = split_name(member.name)
            if parts is None:
                self.unsafe.append(tarsafe.Problem(member.name, reason))
            else:
                self.by_name[parts] = member

    def fail(self, message: str) -> InvalidArgument:
        return InvalidArgument(f"{self.what}: {message}")

    def has(self, name: str) -> bool:
        return (name,) in self.by_name

    def resolve(self, name: str, referrer: str) -> tarfile.TarInfo:
        """The regular member `name` stands for, following symlinks and hardlinks inside the archive only."""
        parts, reason = split_name(name)
        if parts is None:
            raise UnsafeArchive(f'{self.what} is refused: {referrer} names "{name}": {reason}')
        for _ in range(MAX_LINK_HOPS):
            member = self.by_name.get(parts)
            if member is None:
                raise self.fail(f'{referrer} names "{name}", which is not in the archive: the archive is incomplete')
            if member.isreg() and not member.issparse():
                return member
            if member.issym():
                # Relative to the link's directory; an absolute target counts from the archive's root.
                target = member.linkname
                joined = target if target.startswith("/") else "/".join(parts[:-1] + (target,))
                parts = self._normalize(joined, name, referrer)
            elif member.islnk():
                parts = self._normalize(member.linkname, name, referrer)
            else:
                raise self.fail(f'{referrer} names "{name}", which is not a regular file in the archive')
        raise self.fail(f'{referrer} names "{name}", a chain of more than {MAX_LINK_HOPS} links')

    def _normalize(self, path: str, name: str, referrer: str) -> tuple[str, ...]:
        parts: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise UnsafeArchive(f'{self.what} is refused: {referrer} names "{name}", a link out of the archive')
                parts.pop()
            else:
                parts.append(part)
        return tuple(parts)

    def head(self, member: tarfile.TarInfo, size: int) -> bytes:
        return os.pread(self.fd, min(size, member.size), member.offset_data)

    def read_small(self, member: tarfile.TarInfo) -> bytes:
        if member.size > READ_LIMIT:
            raise self.fail(f'member "{member.name}" is {member.size} bytes, too big for a manifest or config')
        data = os.pread(self.fd, member.size, member.offset_data)
        if len(data) != member.size:
            raise UnsafeArchive(f'{self.what} is truncated in member "{member.name}"')
        return data

    def read_json(self, member: tarfile.TarInfo, expected: type = dict) -> object:
        return parse_json(self.read_small(member), f'"{member.name}"', self.what, expected)

    def reader(self, member: tarfile.TarInfo, sink: Sink) -> "MemberReader":
        return MemberReader(self.fd, member, sink, self.what)


def parse_json(data: bytes, label: str, what: str, expected: type = dict) -> object:
    """JSON of the `expected` type, or one line naming `label` (`manifest.json`, `image config "x"`)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{what}: {label} is not valid JSON ({err})") from None
    if not isinstance(value, expected):
        raise InvalidArgument(f'{what}: {label} is not a JSON {"list" if expected is list else "object"}')
    return value


def named_digest(member: tarfile.TarInfo) -> str | None:
    """The digest a member's name promises: blobs/sha256/<hex>."""
    parts, _ = split_name(member.name)
    if parts and len(parts) == 3 and parts[:2] == ("blobs", "sha256") and DIGEST_PATTERN.fullmatch(f"sha256:{parts[2]}"):
        return f"sha256:{parts[2]}"
    return None


class MemberReader(io.RawIOBase):
    """One member's bytes by pread, each passed once to `sink` (hashing, maybe storing) as it is read."""

    def __init__(self, fd: int, member: tarfile.TarInfo, sink: Sink, what: str):
        self._fd, self._pos, self._left = fd, member.offset_data, member.size
        self._sink, self._what, self._name = sink, what, member.name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left == 0:
            return 0
        data = os.pread(self._fd, min(len(buffer), self._left, COPY_CHUNK), self._pos)
        if not data:
            raise UnsafeArchive(f'{self._what} is truncated in member "{self._name}"')
        self._sink.write(data)
        self._pos += len(data)
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read (and so hand to the sink) whatever is left."""
        buffer = bytearray(COPY_CHUNK)
        while self.readinto(buffer):
            pass
