"""The kernel's execve limits on a command line and its environment, checked before anything is made."""

from __future__ import annotations

from collections.abc import Sequence

from services.common.errors import InvalidArgument

# MAX_ARG_STRLEN (include/uapi/linux/binfmts.h): 32 pages, the most one argument or environment
# entry may take, its terminating NUL included. execve fails with E2BIG past it whatever the rlimits.
MAX_ARG_STRLEN = 32 * 4096
# The kernel lets argv + envp (strings, NULs and pointers) fill a quarter of the stack rlimit; with
# the default 8 MiB stack that is 2 MiB, the ARG_MAX `getconf` reports. A container started with a
# smaller `--ulimit stack` may still get E2BIG from a command under this.
ARG_MAX = 2 * 1024 * 1024
POINTER_BYTES = 8


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape")) + 1


def _shown(text: str) -> str:
    return repr(text[:20] + "…") if len(text) > 20 else repr(text)


def check_exec_size(args: Sequence[str], env: Sequence[str], what: str = "the command") -> None:
    """Raise InvalidArgument when execve could not take `args` and `env`: one string or all of them too big."""
    for kind, values in (("argument", args), ("environment entry", env)):
        for index, value in enumerate(values, 1):
            size = _size(value)
            if size > MAX_ARG_STRLEN:
                raise InvalidArgument(
                    f"{kind} {index} of {what} ({_shown(value)}) is {size - 1} bytes: the kernel takes at most "
                    f"{MAX_ARG_STRLEN - 1} bytes per argument or environment entry (MAX_ARG_STRLEN)"
                )
    total = sum(_size(value) + POINTER_BYTES for value in (*args, *env)) + 2 * POINTER_BYTES
    if total > ARG_MAX:
        raise InvalidArgument(
            f"the arguments and environment of {what} take {total} bytes ({len(args)} arguments, "
            f"{len(env)} environment entries): the kernel takes at most {ARG_MAX} (ARG_MAX)"
        )

# gRPC's default receive limit, set explicitly on the servers: a bigger request is refused with
# RESOURCE_EXHAUSTED before any servicer sees it, and the CLI says so in one line.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# What clients accept: more than a request may carry, since a listing (`ps -a` of many containers
# with big environments) legitimately outgrows any one request.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
