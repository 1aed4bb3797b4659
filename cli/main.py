"""The typer app `mydocker` and its entry point, which turns every failure into one line and exit 1."""

from __future__ import annotations

import os
import sys

import typer

from cli import containers, images, system
from cli.argv import normalize_argv
from cli.services import CliError

app = typer.Typer(
    name="mydocker",
    help="A small container runtime: state, storage and executor services behind one CLI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
system.register(app)
containers.register(app)
images.register(app)


def exit_status(code: object) -> int:
    """SystemExit's code as a process status: None is 0, a message is printed and becomes 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> None:
    args = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="mydocker")
        status = 0
    except SystemExit as done:
        status = exit_status(done.code)
    except CliError as err:
        print(f"mydocker: {err}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: unloading grpc's modules costs ~45 ms per command, and nothing
    # here needs it (channels die with the process, output is flushed above).
    os._exit(status)
