"""Pure formatting for the CLI: aligned tables, times and container status text."""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], gap: int = 3) -> str:
    """Left-aligned columns, as docker prints them; the last column is not padded."""
    widths = [len(column) for column in header]
    for row in rows:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row)]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(width + gap) for cell, width in zip(row[:-1], widths)]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines)


def format_time(seconds: float | None) -> str:
    """Local time as the seed prints CREATED ("2024-02-22 13:34:12"); "-" when unset."""
    if not seconds:
        return "-"
    return time.strftime(TIME_FORMAT, time.localtime(seconds))


def format_command(argv: Sequence[str]) -> str:
    """The argv as a shell would need it typed, so arguments with spaces stay visible."""
    return shlex.join(argv)


def format_status(status: str, exit_code: int, oom_killed: bool) -> str:
    """"running", "created"; "exited (137, OOM killed)" for a finished container."""
    if status in ("exited", "stopped"):
        detail = f"{exit_code}, OOM killed" if oom_killed else f"{exit_code}"
        return f"{status} ({detail})"
    return status


def human_size(size: int) -> str:
    """1536 -> "1.5KiB", as compact as docker's SIZE column."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
