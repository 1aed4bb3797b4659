"""Rewrites the seed series' single-dash long flags (-name, -mem, ...) into the long options typer parses."""

from __future__ import annotations

# The mydocker series spells long options with one dash; click would read `-name` as `-n -a -m -e`.
SEED_FLAGS = {
    "-name": "--name",
    "-mem": "--memory",
    "-cpu": "--cpu",
    "-cpuset": "--cpuset",
    "-net": "--network",
}

# Options that take a value, per verb: their value is never an image or command, so scanning
# for the first positional argument skips it.
VALUE_OPTIONS = {
    "run": {
        "--name", "-v", "--volume", "-e", "--env", "-m", "--memory", "--cpu", "--cpus", "--cpuset",
        "--pids-limit", "-w", "--workdir", "--hostname", "--network", "--net", "-p", "--publish",
    },
    "exec": {"-e", "--env", "-w", "--workdir"},
}


def normalize_argv(argv: list[str]) -> list[str]:
    """Translate seed flags among a verb's options; the container's own command is left untouched.

    Translation stops at `--` or at the first positional argument after the verb's options
    (for `run IMAGE CMD...` that is the image), so `run busybox top -name x` keeps `-name`
    for top. Verbs without positional commands are translated throughout.
    """
    if not argv:
        return argv
    verb_index = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if verb_index is None:
        return argv
    verb = argv[verb_index]
    value_options = VALUE_OPTIONS.get(verb)
    out = argv[: verb_index + 1]
    rest = argv[verb_index + 1 :]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--":
            out.extend(rest[i:])
            return out
        name, sep, value = arg.partition("=")
        if name in SEED_FLAGS:
            name = SEED_FLAGS[name]
            arg = name + sep + value
        out.append(arg)
        if value_options is not None:
            if not arg.startswith("-"):
                # First positional: everything after it belongs to the container's command.
                out.extend(rest[i + 1 :])
                return out
            if name in value_options and not sep and i + 1 < len(rest):
                out.append(rest[i + 1])
                i += 1
        i += 1
    return out


def _shown(text: str) -> str:
    """`text` with the bytes that are not UTF-8 as \\x escapes, cut to 40 characters."""
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return raw if len(raw) <= 40 else raw[:40] + "…"


def not_utf8_message(what: str, text: str) -> str:
    return (
        f"{what} '{_shown(text)}' is not valid UTF-8: names, commands, environment entries and paths "
        "travel to the services as UTF-8 text"
    )


def check_utf8(argv: list[str]) -> None:
    """Refuse an argument with bytes that are not UTF-8 (Python gives them as surrogates), naming it.

    Protobuf strings must be UTF-8, as Docker's JSON API's are; refusing here beats a traceback later.
    """
    from cli.services import CliError

    for index, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise CliError(not_utf8_message(f"argument {index}", arg)) from None
