"""Docker's `--change` instructions (the commit/import subset of the Dockerfile), signals and ports, pure."""

from __future__ import annotations

import copy
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Iterable

from services.common.errors import InvalidArgument

CHANGEABLE = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
SHELL = ("/bin/sh", "-c")

_SIGNALS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
    "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17,
    "CLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24,
    "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}
# The kernel's real-time range; glibc reserves the first two, but Docker (and the kernel) number from 34.
_SIGRTMIN, _SIGRTMAX = 34, 64
_REALTIME = re.compile(r"RTM(IN|AX)(?:([+-])(\d+))?")
_PORT = re.compile(r"(\d+)(?:-(\d+))?(?:/([A-Za-z]+))?")
_PROTOCOLS = ("tcp", "udp", "sctp")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def signal_number(name: str) -> int:
    """The Linux number of a signal named as Docker accepts it: `SIGTERM`, `term`, `15`, `SIGRTMIN+3`."""
    text = name.strip().upper()
    if text.isdigit() and 1 <= int(text) <= _SIGRTMAX:
        return int(text)
    text = text.removeprefix("SIG")
    if text in _SIGNALS:
        return _SIGNALS[text]
    match = _REALTIME.fullmatch(text)
    if match:
        base = _SIGRTMIN if match.group(1) == "IN" else _SIGRTMAX
        number = base + (int(match.group(3) or 0) * (-1 if match.group(2) == "-" else 1))
        if _SIGRTMIN <= number <= _SIGRTMAX:
            return number
    raise InvalidArgument(f'invalid signal "{name}": use a name such as SIGTERM or a number from 1 to {_SIGRTMAX}')


def _ports(text: str) -> list[str]:
    match = _PORT.fullmatch(text.strip())
    protocol = (match.group(3) or "tcp").lower() if match else ""
    if not match or protocol not in _PROTOCOLS:
        raise InvalidArgument(f'invalid port "{text}": expected PORT[-PORT][/tcp|udp|sctp] such as 80 or 53/udp')
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if not 1 <= first <= last <= 65535:
        raise InvalidArgument(f'invalid port "{text}": ports go from 1 to 65535, a range from low to high')
    return [f"{port}/{protocol}" for port in range(first, last + 1)]


def normalize_port(text: str) -> str:
    """One port as image configs key it: `80` -> `80/tcp`, `53/UDP` -> `53/udp`."""
    ports = _ports(text)
    if len(ports) != 1:
        raise InvalidArgument(f'invalid port "{text}": expected one port, not a range')
    return ports[0]


def clean_absolute(path: str) -> str:
    """`path` made absolute from / and cleaned as Go's filepath.Clean does (no `//` prefix kept)."""
    return "/" + posixpath.normpath(posixpath.join("/", path)).lstrip("/")


def port_sort_key(port: str) -> tuple[int, str]:
    number, _, protocol = port.partition("/")
    return (int(number), protocol) if number.isdigit() else (1 << 16, port)


class _BadSyntax(ValueError):
    """A mistake in how a line is written, whatever its variables will hold."""


@dataclass(frozen=True)
class Change:
    """One `--change` line: its instruction (upper case) and its arguments as written."""

    instruction: str
    argument: str

    def __str__(self) -> str:
        return f"{self.instruction} {self.argument}".rstrip()


def _lex(text: str) -> list[str]:
    """Words split at unquoted white space, quotes and backslashes kept for `_expand`."""
    words, current, quote, index = [], "", "", 0
    while index < len(text):
        char = text[index]
        if char == "\\" and quote != "'" and index + 1 < len(text):
            current += text[index:index + 2]
            index += 2
            continue
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char.isspace():
            if current:
                words.append(current)
            current = ""
            index += 1
            continue
        current += char
        index += 1
    if quote:
        raise _BadSyntax(f"unterminated {quote} quote")
    return words + ([current] if current else [])


def _variable(text: str, start: int, env: dict[str, str]) -> tuple[str, int]:
    """The value of the `$...` at `start` and the index after it: $NAME, ${NAME}, ${NAME:-word}, ${NAME:+word}."""
    if text.startswith("${", start):
        end = text.find("}", start)
        if end < 0:
            raise _BadSyntax("missing } in a ${...} variable")
        body = text[start + 2:end]
        name, operator, word = re.fullmatch(r"([A-Za-z0-9_]*)(:?[-+]?)(.*)", body, re.S).groups()
        if not _NAME.fullmatch(name) or (word and not operator) or operator in (":",):
            raise _BadSyntax(f"bad substitution ${{{body}}}")
        value, is_set = env.get(name, ""), name in env
        if operator in ("-", ":-"):
            use_word = not is_set if operator == "-" else not value
            return (_expand(word, env) if use_word else value), end + 1
        if operator in ("+", ":+"):
            use_word = is_set if operator == "+" else bool(value)
            return (_expand(word, env) if use_word else ""), end + 1
        return value, end + 1
    match = _NAME.match(text, start + 1)
    if not match:
        return "$", start + 1
    return env.get(match.group(0), ""), match.end()


def _expand(word: str, env: dict[str, str]) -> str:
    """`word` with quotes removed, backslash escapes resolved and variables expanded except in single quotes."""
    out, quote, index = [], "", 0
    while index < len(word):
        char = word[index]
        if quote == "'":
            if char == "'":
                quote = ""
            else:
                out.append(char)
            index += 1
        elif char == "\\" and index + 1 < len(word):
            following = word[index + 1]
            if quote == '"' and following not in '"$\\':
                out.append(char)
            out.append(following)
            index += 2
        elif char == "$":
            value, index = _variable(word, index, env)
            out.append(value)
        elif char == quote or (not quote and char in "'\""):
            quote = "" if quote else char
            index += 1
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _pairs(instruction: str, argument: str, env: dict[str, str]) -> list[tuple[str, str]]:
    words = _lex(argument)
    if not words:
        raise ValueError(f"{instruction} needs KEY=VALUE pairs")
    if "=" not in words[0]:
        # The legacy `ENV KEY value with spaces` form: the rest of the line is one value.
        value = argument.partition(words[0])[2]
        if not value.strip():
            raise ValueError(f"{instruction} needs KEY=VALUE pairs (or KEY VALUE)")
        pairs = [(_expand(words[0], env), _expand(value.strip(), env))]
    else:
        pairs = []
        for word in words:
            if "=" not in word:
                raise _BadSyntax(f'can\'t find = in "{word}": write KEY=VALUE')
            key, _, value = word.partition("=")
            pairs.append((_expand(key, env), _expand(value, env)))
    for key, _ in pairs:
        if not key:
            raise ValueError(f"{instruction} names cannot be blank")
    return pairs


def _json_strings(argument: str) -> list[str] | None:
    """The JSON array of strings `argument` spells, or None for any other text (Docker's exec form)."""
    if not argument.startswith("["):
        return None
    try:
        value = json.loads(argument)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def _interpret(change: Change, env: dict[str, str], working_dir: str):
    """The value `change` sets, evaluated against the image's `env` and current `working_dir`."""
    instruction, argument = change.instruction, change.argument
    if instruction in ("CMD", "ENTRYPOINT"):
        exec_form = _json_strings(argument)
        return exec_form if exec_form is not None else [*SHELL, argument]
    if instruction in ("ENV", "LABEL"):
        return _pairs(instruction, argument, env)
    if instruction == "VOLUME":
        exec_form = _json_strings(argument)
        volumes = [_expand(word, env) for word in (exec_form if exec_form is not None else _lex(argument))]
        if not volumes or not all(volume.strip() for volume in volumes):
            raise ValueError("VOLUME needs one path or more, none of them empty")
        return [volume.strip() for volume in volumes]
    if instruction == "EXPOSE":
        return [port for word in _lex(argument) for port in _ports(_expand(word, env))]
    value = _expand(argument, env)
    if not value:
        raise ValueError(f"{instruction} needs one argument")
    if instruction == "STOPSIGNAL":
        signal_number(value)
    if instruction == "WORKDIR":
        return clean_absolute(posixpath.join(working_dir or "/", value))
    return value


def _refuse(line: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f'invalid --change "{line}": {problem}')


def parse_change(line: str) -> Change:
    """One `--change` line such as `CMD ["sh"]` or `ENV A=1 B=2`; instruction names in any case."""
    word, *rest = re.split(r"\s+", line.strip(), maxsplit=1)
    change = Change(word.upper(), rest[0] if rest else "")
    if change.instruction not in CHANGEABLE:
        raise _refuse(line, f"only {', '.join(CHANGEABLE)} can be changed")
    if not change.argument:
        raise _refuse(line, f"{change.instruction} needs an argument")
    try:
        _interpret(change, {}, "/")
    except (ValueError, InvalidArgument) as error:
        # What variables hold is known only when applied to an image: only their syntax is checked now.
        if isinstance(error, _BadSyntax) or "$" not in change.argument:
            raise _refuse(line, str(error).removeprefix("invalid ")) from None
    return change


def _env_map(env: list[str]) -> dict[str, str]:
    return {key: value for key, _, value in (entry.partition("=") for entry in env)}


def apply_changes(document: dict, changes: Iterable[Change]) -> dict:
    """A copy of the image config `document` with `changes` applied in order, as `docker commit --change` does.

    ENV replaces a variable in place or appends it; `$VAR` expands against the image's environment;
    WORKDIR is relative to the previous one; ENTRYPOINT drops the Cmd unless a CMD came before it.
    """
    result = copy.deepcopy(document)
    config = result.get("config")
    if not isinstance(config, dict):
        config = result["config"] = {}
    cmd_set = False
    for change in changes:
        if change.instruction not in CHANGEABLE:
            raise _refuse(str(change), f"only {', '.join(CHANGEABLE)} can be changed")
        env = list(config.get("Env") or [])
        try:
            value = _interpret(change, _env_map(env), config.get("WorkingDir") or "")
        except (ValueError, InvalidArgument) as error:
            raise _refuse(str(change), str(error).removeprefix("invalid ")) from None
        instruction = change.instruction
        if instruction == "CMD":
            config["Cmd"], cmd_set = value, True
        elif instruction == "ENTRYPOINT":
            config["Entrypoint"] = value
            if not cmd_set:
                config["Cmd"] = None
        elif instruction == "ENV":
            for key, setting in value:
                keys = [entry.partition("=")[0] for entry in env]
                if key in keys:
                    env[keys.index(key)] = f"{key}={setting}"
                else:
                    env.append(f"{key}={setting}")
            config["Env"] = env
        elif instruction == "LABEL":
            config["Labels"] = {**(config.get("Labels") or {}), **dict(value)}
        elif instruction in ("EXPOSE", "VOLUME"):
            field = "ExposedPorts" if instruction == "EXPOSE" else "Volumes"
            config[field] = {**(config.get(field) or {}), **{item: {} for item in value}}
        else:
            config[{"WORKDIR": "WorkingDir", "USER": "User", "STOPSIGNAL": "StopSignal"}[instruction]] = value
    return result
