"""Entry point: python -m services.state [--set-aside-damaged-db] [the common service flags]."""

import functools
import logging
import sys

from protos.state.v1 import state_pb2, state_pb2_grpc
from services.common.config import Config
from services.common.server import ServiceDefinition, serve
from services.state import dbfile
from services.state.core import StateCore
from services.state.servicer import StateServicer
from services.state.store import Store

# Given by `mydocker system check --repair --rebuild-state` only: a damaged database is moved aside
# (never deleted) and the service starts on a fresh one, whose records the CLI then rebuilds.
SET_ASIDE_FLAG = "--set-aside-damaged-db"

log = logging.getLogger("services.state")


def open_store(config: Config, set_aside_damaged: bool = False) -> tuple[Store, str]:
    """The store, and where a damaged database was moved ("" when none was); SystemExit with one line when damaged."""
    path = config.state_db_path()
    try:
        return Store(path), ""
    except dbfile.DamagedDatabase as err:
        if not set_aside_damaged:
            raise SystemExit(f"mydocker-state: {err}") from None
        moved = dbfile.set_aside(path)
        log.warning("%s; moved it to %s and starting on a fresh database", err, moved)
    return Store(path), str(moved)


def build(config: Config, set_aside_damaged: bool = False) -> ServiceDefinition:
    store, moved = open_store(config, set_aside_damaged)
    core = StateCore(store, damaged_database=moved, instance=config.instance)
    core.start()
    servicer = StateServicer(core)
    return ServiceDefinition(
        name="state",
        full_name=state_pb2.DESCRIPTOR.services_by_name["StateService"].full_name,
        register=lambda server: state_pb2_grpc.add_StateServiceServicer_to_server(servicer, server),
    )


def main(argv: list[str]) -> int:
    set_aside = SET_ASIDE_FLAG in argv
    rest = [arg for arg in argv if arg != SET_ASIDE_FLAG]
    return serve("state", functools.partial(build, set_aside_damaged=set_aside), rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
