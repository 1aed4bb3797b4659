"""An OCI layer from an overlay upper directory: its 0/0 devices and opaque xattrs written as OCI whiteouts.

The container's overlay is mounted with redirect_dir, metacopy and index off, so its upper directory is
a plain diff: every added or changed entry is there in full, a deleted one is a whiteout device, and a
directory replaced as a whole is opaque. The tar is commit.TreeWriter's (sorted, pax, numeric owners,
hardlinks kept), so the same upper gives the same bytes; overlay's own trusted.overlay.* xattrs stay out.
"""

from __future__ import annotations

import tarfile
from typing import BinaryIO

from services.storage import commit, whiteout


def whiteout_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """The ".wh.NAME" member standing for the overlay whiteout `info` (its device header). Pure."""
    parent, _, name = info.name.rpartition("/")
    return _empty_file((parent + "/" if parent else "") + whiteout.WHITEOUT_PREFIX + name, info.mtime)


def opaque_member(directory: tarfile.TarInfo) -> tarfile.TarInfo:
    """The ".wh..wh..opq" member written right after an opaque directory. Pure."""
    return _empty_file(f"{directory.name}/{whiteout.OPAQUE_MARKER}", directory.mtime)


def _empty_file(name: str, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = tarfile.REGTYPE, 0, 0, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class LayerWriter(commit.TreeWriter):
    """TreeWriter of an upper directory: overlay whiteouts become OCI whiteout files."""

    def _write(self, info: tarfile.TarInfo, data: commit._ExactReader | None, xattrs: list[tuple[str, bytes]]) -> None:
        if info.type == tarfile.CHRTYPE and info.devmajor == 0 and info.devminor == 0:
            super()._write(whiteout_member(info), None, [])
            return
        kept = [(key, value) for key, value in xattrs if not key.startswith(whiteout.OVERLAY_XATTR_PREFIX)]
        super()._write(info, data, kept)
        if info.type == tarfile.DIRTYPE and dict(xattrs).get(whiteout.OPAQUE_XATTR) == whiteout.OPAQUE_VALUE:
            super()._write(opaque_member(info), None, [])


def write_layer(
    upper_fd: int, out: BinaryIO, excluded_contents: frozenset[tuple[str, ...]] = commit.EXCLUDED_CONTENTS
) -> int:
    """Write the OCI layer tar of the overlay upper directory at `upper_fd` to `out`; the number of members."""
    return LayerWriter(out, excluded_contents).write(upper_fd)

