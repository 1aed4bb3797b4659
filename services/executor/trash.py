"""Directories renamed aside at once and unlinked by one background thread, so a delete's reply does not wait for them."""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# Never a container id (those start with a letter or digit): scans of the run dir pass over it.
PREFIX = ".deleted-"
# How long close() waits for the deletions still queued.
CLOSE_WAIT = 10.0


def trash_name(name: str) -> str:
    """The hidden name a directory called `name` is renamed to; unique, so a retried delete never meets it."""
    return f"{PREFIX}{name}-{secrets.token_hex(4)}"


def is_trash(name: str) -> bool:
    return name.startswith(PREFIX)


class Trash:
    """Discarded directories of one parent: renamed (atomic: the name is free at once), then deleted in order."""

    def __init__(self, parent: Path):
        self._parent = parent
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def discard(self, directory: Path) -> None:
        """Rename `directory` aside and have it deleted; nothing if it does not exist."""
        doomed = directory.with_name(trash_name(directory.name))
        try:
            os.rename(directory, doomed)
        except FileNotFoundError:
            return
        except OSError as err:
            # Not renamed (a read-only run dir?): deleted here and now, as before the trash existed.
            log.warning("cannot rename %s aside (%s): deleting it in place", directory, err)
            shutil.rmtree(directory, onerror=self._report)
            return
        self._enqueue(doomed)

    def sweep(self) -> None:
        """Queue what a previous process renamed aside and did not get to delete (killed, or the host stopped)."""
        try:
            names = sorted(os.listdir(self._parent))
        except FileNotFoundError:
            return
        for name in names:
            if is_trash(name):
                self._enqueue(self._parent / name)

    def close(self) -> None:
        """Finish the queued deletions (up to CLOSE_WAIT); a later discard starts the thread again."""
        with self._guard:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._queue.put(None)
        thread.join(CLOSE_WAIT)

    def _enqueue(self, doomed: Path) -> None:
        with self._guard:
            self._queue.put(doomed)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="trash", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while (doomed := self._queue.get()) is not None:
            shutil.rmtree(doomed, onerror=self._report)

    @staticmethod
    def _report(function, path, exc_info) -> None:
        # Left for the next start's sweep; a state dir renamed aside is no container's any more.
        if not isinstance(exc_info[1], FileNotFoundError):
            log.warning("cannot delete %s (%s): the next start tries again", path, exc_info[1])
