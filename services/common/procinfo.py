"""Which process a pid is: its start time from /proc/<pid>/stat, so a recycled pid is never taken for another.

Imports only os, which every interpreter has loaded at start: the executor's shim and the CLI's front end use it too.
"""

import os


def parse_stat(text: str) -> tuple[str, int]:
    """(state, start time in clock ticks) from /proc/<pid>/stat.

    The command (field 2) may hold spaces and parentheses, so split after the last ')':
    the state is field 3 and the start time field 22.
    """
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def proc_start_time(pid: int, zombie_too: bool = False) -> int | None:
    """Start time of a live (non-zombie) process, None when it is gone or (unless `zombie_too`) a zombie."""
    if pid <= 0:
        return None
    try:
        # Raw fd and one read (stat is far under a page): called for every container by `ps`.
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 4096).decode(errors="replace")
        finally:
            os.close(fd)
    except (FileNotFoundError, ProcessLookupError):
        # Gone, or it exited between the open and the read.
        return None
    state, start = parse_stat(text)
    if state in ("Z", "X") and not zombie_too:
        return None
    return start


def is_alive(pid: int, start_time: int) -> bool:
    """True only for the very process recorded: a recycled pid has another start time."""
    return start_time > 0 and proc_start_time(pid) == start_time
