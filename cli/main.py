"""The typer app `mydocker` and its entry point, which turns every failure into one line and exit 1."""

from __future__ import annotations

import functools
import os
import sys

import click
import typer
import typer.main

from cli import containers, images, networks, registry, system
from cli.argv import check_utf8, normalize_argv, not_utf8_message
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
networks.register(app)
registry.register(app)


@functools.cache
def command() -> click.Command:
    """The click command typer builds from the app (~5 ms): once per process, ahead of time in the CLI server."""
    return typer.main.get_command(app)


def exit_status(code: object) -> int:
    """SystemExit's code as a process status: None is 0, a message is printed and becomes 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_command(argv: list[str]) -> int:
    """Run one command line (without the program name) and return its exit status; output is flushed."""
    try:
        check_utf8(list(argv))
        command().main(args=normalize_argv(list(argv)), prog_name="mydocker")
        status = 0
    except SystemExit as done:
        status = exit_status(done.code)
    except CliError as err:
        print(f"mydocker: {err}", file=sys.stderr)
        status = 1
    except UnicodeEncodeError as err:
        # A value from elsewhere than argv (`-e NAME` takes NAME's value from our environment).
        print(f"mydocker: {not_utf8_message('a value', str(err.object))}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def main(argv: list[str] | None = None) -> None:
    status = run_command(sys.argv[1:] if argv is None else argv)
    # Skip interpreter teardown: unloading grpc's modules costs ~45 ms per command, and nothing
    # here needs it (channels die with the process, output is flushed above).
    os._exit(status)
