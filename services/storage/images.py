"""Image tars in ROOT/image: list, open with their cached digest, import, publish atomically, remove."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.storage import tarsafe
from services.storage.digests import DigestCache, HashingWriter, hash_fileobj
from services.storage.fsutil import fsync_dir, temp_name
from services.storage.model import Image, Stats
from services.storage.paths import StoragePaths, image_name_from_file, validate_image_name

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20


@dataclass
class OpenImage:
    """An image tar opened once: the digest describes exactly this open file."""

    name: str
    file: io.BufferedReader
    digest: str

    def close(self) -> None:
        self.file.close()


class ImageStore:
    """The images of one root; thread-safe except where the caller must hold the catalog lock (noted)."""

    def __init__(self, paths: StoragePaths, stats: Stats):
        self._paths = paths
        self._stats = stats
        self._digests = DigestCache(paths.digests)

    def names(self) -> list[str]:
        """Image names, sorted."""
        try:
            files = os.listdir(self._paths.images)
        except FileNotFoundError:
            return []
        names = []
        for file_name in files:
            name = image_name_from_file(file_name)
            if name is not None and stat.S_ISREG(self._mode(self._paths.images / file_name)):
                names.append(name)
        return sorted(names)

    @staticmethod
    def _mode(path: Path) -> int:
        try:
            return os.stat(path).st_mode
        except FileNotFoundError:
            return 0

    def get(self, name: str) -> Image:
        """The image with its cached digest ("" if never hashed); NotFound if there is none."""
        path = self._paths.image_tar(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFound(f'image "{name}" not found: no {path}') from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f'image "{name}" not found: {path} is not a regular file')
        return Image(
            name=name,
            size_bytes=st.st_size,
            created_at=st.st_mtime_ns / 1e9,
            digest=self._digests.lookup(name, st) or "",
        )

    def list(self) -> list[Image]:
        images = []
        for name in self.names():
            with contextlib.suppress(NotFound):
                images.append(self.get(name))
        return images

    def open(self, name: str) -> OpenImage:
        """Open the tar and give its digest: cached if the file is unchanged, else hashed now (once)."""
        path = self._paths.image_tar(name)
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f'image "{name}" not found: no {path}') from None
        except IsADirectoryError:
            raise NotFound(f'image "{name}" not found: {path} is not a regular file') from None
        try:
            st = os.fstat(handle.fileno())
            digest = self._digests.lookup(name, st)
            if digest is None:
                digest = hash_fileobj(handle)
                self._stats.hashes += 1
                self._digests.store(name, st, digest)
                log.info("hashed image %s: %s", name, digest)
            return OpenImage(name, handle, digest)
        except BaseException:
            handle.close()
            raise

    def is_current(self, opened: OpenImage) -> bool:
        """True while ROOT/image/<name>.tar is still the file that was opened (not removed or replaced)."""
        try:
            st = os.stat(self._paths.image_tar(opened.name))
        except FileNotFoundError:
            return False
        mine = os.fstat(opened.file.fileno())
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    # -- writing -----------------------------------------------------------------------------

    def check_absent(self, name: str, replace: bool) -> Path:
        """The image's path; AlreadyExists when it is taken and `replace` is not set."""
        final = self._paths.image_tar(name)
        if not replace and final.exists():
            raise AlreadyExists(f'image "{name}" already exists: choose another name or replace it')
        return final

    @contextlib.contextmanager
    def staged(self, name: str) -> Iterator["Staged"]:
        """A hidden temp file in ROOT/image to write a tar into; removed on exit unless published."""
        final = self._paths.image_tar(name)
        self._paths.images.mkdir(parents=True, exist_ok=True)
        staged = Staged(temp_name(final))
        try:
            yield staged
        finally:
            staged.discard()

    def publish(self, staged: "Staged", name: str, replace: bool) -> Image:
        """Make a finished temp tar visible as `name`: rename when replacing, else link (no clobber).

        The caller holds the catalog lock, so a concurrent RemoveImage or ListImages sees either
        the old image or the new one, never a partial file.
        """
        final = self._paths.image_tar(name)
        tmp, digest = staged.path, staged.finish()
        os.chmod(tmp, 0o644)
        if replace:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise AlreadyExists(f'image "{name}" already exists: choose another name or replace it') from None
            tmp.unlink()
        fsync_dir(final.parent)
        self._digests.store(name, os.stat(final), digest)
        return self.get(name)

    def remove(self, name: str) -> Image:
        """Delete the tar and its digest sidecar (the caller checked no rootfs uses it)."""
        image = self.get(name)
        self._paths.image_tar(name).unlink()
        fsync_dir(self._paths.images)
        self._digests.forget(name)
        return image

    @staticmethod
    def receive(writer: HashingWriter, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            writer.write(chunk)

    @staticmethod
    def copy_from(writer: HashingWriter, source_path: str) -> None:
        """Copy a server-side tar named by an import header."""
        if not os.path.isabs(source_path):
            raise InvalidArgument(f'source path "{source_path}" is not absolute: give the full path')
        try:
            # O_NONBLOCK: a fifo must not hang the service before it is refused below; no effect on a file.
            fd = os.open(source_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"source {source_path} does not exist") from None
        # A device or a fifo could be endless or act on being read: an image comes from a regular file only.
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InvalidArgument(f"source {source_path} is not a regular file: give a tar file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as handle:
            while chunk := handle.read(COPY_CHUNK):
                writer.write(chunk)

    @staticmethod
    def validate_tar(staged: "Staged", name: str) -> None:
        """Refuse a hostile or unreadable tar before it becomes visible (UnsafeArchive names the member)."""
        staged.finish()
        with open(staged.path, "rb") as handle:
            tarsafe.validate(handle, f'image "{name}"')


def require_name(name: str) -> None:
    if not name:
        raise InvalidArgument("the image name is required")
    validate_image_name(name)


class Staged:
    """A tar being written: hashed while written, fsynced once by finish()."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = open(path, "xb")
        self.writer = HashingWriter(self._handle)
        self._digest = ""

    @property
    def size(self) -> int:
        return self.writer.size

    def finish(self) -> str:
        """Flush, fsync and close (once); returns the digest of what was written."""
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._digest = self.writer.digest()
        return self._digest

    def discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
