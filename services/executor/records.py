"""What the executor keeps of how each container was made (ListContainerRecords): for rebuilding lost state records."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import NotFound
from services.executor import statefiles
from services.executor.model import ProcessState


@dataclass(frozen=True)
class SavedContainer:
    """One container's state dir, as files: nothing is inferred here."""

    state: ProcessState
    # statefiles.REQUEST as written by CreateContainer; None in a state dir of an older version.
    request: bytes | None
    # plan.json, parsed: what an older state dir offers instead of the request.
    plan: dict
    # network.json, parsed ({"bridge", "address", "ports"}); None when the container is not plugged in.
    connection: dict | None
    # When plan.json was written, i.e. the container was created.
    created_at_ns: int


def read_saved(directory: Path, state: ProcessState) -> SavedContainer:
    """The files of one state dir; NotFound when it went away meanwhile (an rm raced us)."""
    try:
        plan_path = directory / statefiles.PLAN
        created_at_ns = os.stat(plan_path).st_mtime_ns
        plan = json.loads(plan_path.read_text())
    except FileNotFoundError:
        raise NotFound(f"no such container: {state.id}") from None
    request = None
    with contextlib.suppress(FileNotFoundError):
        request = (directory / statefiles.REQUEST).read_bytes()
    connection_text = statefiles.read_text(str(directory / statefiles.NETWORK))
    connection = json.loads(connection_text) if connection_text else None
    return SavedContainer(state, request, plan, connection, created_at_ns)


class RecordsMixin:
    """ExecutorCore's list_records; uses its _container_ids, _dir and list."""

    def list_records(self) -> list[SavedContainer]:
        saved = []
        for state in self.list():
            with contextlib.suppress(NotFound):
                saved.append(read_saved(self._dir(state.id), state))
        return saved
