"""The typer app `mydocker` and its entry point, which turns every failure into one line and exit 1."""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> None:
    args = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="mydocker")
    except CliError as err:
        typer.echo(f"mydocker: {err}", err=True)
        sys.exit(1)
