"""OCI/Docker image configs as data: parsing, deterministic encoding, new configs, --change, and run defaults."""

from __future__ import annotations

import calendar
import copy
import datetime
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable

from services.common.errors import InvalidArgument
from services.common.image_changes import (
    Change, apply_changes, clean_absolute, normalize_port, parse_change, port_sort_key, signal_number,
)

__all__ = [
    "Change", "HistoryEntry", "ImageConfig", "ImageSpec", "RunSpec", "apply_changes", "child_config",
    "config_bytes", "flat_rootfs_config", "format_created", "format_created_ns", "merge_env", "parse_change", "parse_config",
    "parse_created", "resolve_run", "signal_number",
]

_DIFF_ID = re.compile(r"sha256:[a-f0-9]{64}")
IMPORT_CREATED_BY = "mydocker import"


@dataclass(frozen=True)
class ImageConfig:
    """The `config` object: what a container of the image runs, and how."""

    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    stop_signal: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistoryEntry:
    created: str = ""
    created_by: str = ""
    comment: str = ""
    author: str = ""
    empty_layer: bool = False


@dataclass(frozen=True)
class ImageSpec:
    """An image config document: platform, run defaults, layer diff ids and history."""

    architecture: str
    os: str
    variant: str
    created: str
    author: str
    config: ImageConfig
    diff_ids: tuple[str, ...]
    history: tuple[HistoryEntry, ...]


@dataclass(frozen=True)
class RunSpec:
    """What a container runs: the image's defaults merged with the user's options."""

    argv: tuple[str, ...]
    env: tuple[str, ...]
    working_dir: str
    user: str


def _fail(where: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"image config: {where} {problem}")


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(where, "is not a string")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # Docker's StrSlice reads a lone string as a one-element list
        return (value,)
    if not isinstance(value, list):
        raise _fail(where, "is not a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(f"{where}[{index}]", "is not a string")
    return tuple(value)


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, "is not an object")
    return value


def _port(key: str) -> str:
    try:
        return normalize_port(key)
    except InvalidArgument:
        return key  # Docker keeps ExposedPorts keys unchecked; an odd one is shown as written


def _image_config(value: Any) -> ImageConfig:
    raw = _object(value, "config")
    labels = _object(raw.get("Labels"), "config.Labels")
    for key, label in labels.items():
        _string(label, f"config.Labels[{json.dumps(key)}]")
    ports = [_port(port) for port in _object(raw.get("ExposedPorts"), "config.ExposedPorts")]
    return ImageConfig(
        entrypoint=_strings(raw.get("Entrypoint"), "config.Entrypoint"),
        cmd=_strings(raw.get("Cmd"), "config.Cmd"),
        env=_strings(raw.get("Env"), "config.Env") or (),
        working_dir=_string(raw.get("WorkingDir"), "config.WorkingDir"),
        user=_string(raw.get("User"), "config.User"),
        exposed_ports=tuple(sorted(set(ports), key=port_sort_key)),
        stop_signal=_string(raw.get("StopSignal"), "config.StopSignal"),
        labels=tuple(sorted((key, label or "") for key, label in labels.items())),
        volumes=tuple(sorted(_object(raw.get("Volumes"), "config.Volumes"))),
    )


def _history(value: Any) -> tuple[HistoryEntry, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _fail("history", "is not a list")
    entries = []
    for index, raw in enumerate(value):
        where = f"history[{index}]"
        if not isinstance(raw, dict):
            raise _fail(where, "is not an object")
        empty = raw.get("empty_layer", False)
        if not isinstance(empty, bool) and empty is not None:
            raise _fail(f"{where}.empty_layer", "is not a boolean")
        entries.append(HistoryEntry(
            created=_string(raw.get("created"), f"{where}.created"),
            created_by=_string(raw.get("created_by"), f"{where}.created_by"),
            comment=_string(raw.get("comment"), f"{where}.comment"),
            author=_string(raw.get("author"), f"{where}.author"),
            empty_layer=bool(empty),
        ))
    return tuple(entries)


def _diff_ids(document: dict) -> list:
    rootfs = document.get("rootfs")
    if not isinstance(rootfs, dict):
        raise _fail("rootfs", "is missing or not an object")
    if rootfs.get("type") != "layers":
        raise _fail("rootfs.type", 'is not "layers"')
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise _fail("rootfs.diff_ids", "is missing or not a list")
    for index, diff_id in enumerate(diff_ids):
        if not isinstance(diff_id, str) or not _DIFF_ID.fullmatch(diff_id):
            raise _fail(f"rootfs.diff_ids[{index}]", "is not a sha256 digest")
    return diff_ids


def parse_config(data: bytes) -> ImageSpec:
    """The image config in `data`, checked; unknown fields are ignored, a null Cmd stays None (not empty)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"image config: not JSON ({error})") from None
    if not isinstance(document, dict):
        raise InvalidArgument("image config: not a JSON object")
    return ImageSpec(
        architecture=_string(document.get("architecture"), "architecture"),
        os=_string(document.get("os"), "os"),
        variant=_string(document.get("variant"), "variant"),
        created=_string(document.get("created"), "created"),
        author=_string(document.get("author"), "author"),
        config=_image_config(document.get("config")),
        diff_ids=tuple(_diff_ids(document)),
        history=_history(document.get("history")),
    )


def config_bytes(document: dict) -> bytes:
    """The one encoding of `document` (sorted keys, no spaces, UTF-8): its sha256 is the image id."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _history_entry(created: str, created_by: str, comment: str, author: str = "") -> dict:
    entry = {"created": created, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if author:
        entry["author"] = author
    return entry


def _check_diff_id(diff_id: str) -> None:
    if not _DIFF_ID.fullmatch(diff_id):
        raise InvalidArgument(f'invalid layer diff id "{diff_id}": expected sha256:<64 lowercase hex digits>')


def flat_rootfs_config(diff_id: str, created: str, architecture: str, os_name: str = "linux",
                       comment: str = "") -> dict:
    """The config of an image made of one rootfs tar: no Cmd, so, as for `docker import`, runs name a command."""
    _check_diff_id(diff_id)
    return {
        "architecture": architecture,
        "os": os_name,
        "created": created,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [_history_entry(created, IMPORT_CREATED_BY, comment)],
    }


def child_config(parent: dict, diff_id: str, created: str, created_by: str, comment: str = "", author: str = "",
                 changes: Iterable[Change] = ()) -> dict:
    """The config of an image made of `parent` and one more layer (commit); the parent's other fields are kept."""
    _check_diff_id(diff_id)
    document = copy.deepcopy(parent)
    _diff_ids(document).append(diff_id)
    history = document.get("history")
    document["history"] = (history if isinstance(history, list) else []) + [
        _history_entry(created, created_by, comment, author)]
    document["created"] = created
    if author:
        document["author"] = author
    if not isinstance(document.get("config"), dict):
        document["config"] = {}
    return apply_changes(document, changes)


def with_run_config(document: dict, run: RunSpec, entrypoint: tuple[str, ...] | None) -> dict:
    """The config `document` with a container's run-time settings in place of the image's (docker commit).

    `run.argv` becomes Cmd after `entrypoint` (None keeps the image's Entrypoint); an empty
    working dir or user leaves the image's.
    """
    result = copy.deepcopy(document)
    config = result.get("config")
    if not isinstance(config, dict):
        config = result["config"] = {}
    if entrypoint is not None:
        config["Entrypoint"] = list(entrypoint) or None
    config["Cmd"] = list(run.argv) or None
    config["Env"] = list(run.env) or None
    if run.working_dir:
        config["WorkingDir"] = run.working_dir
    if run.user:
        config["User"] = run.user
    return result


def _env_key(entry: str) -> str:
    return entry.partition("=")[0]


def merge_env(base: Iterable[str], overrides: Iterable[str]) -> tuple[str, ...]:
    """`base` with each of `overrides` replacing the same-named entry in place, or appended."""
    merged = list(base)
    positions = {_env_key(entry): index for index, entry in enumerate(merged)}
    for entry in overrides:
        key = _env_key(entry)
        if key in positions:
            merged[positions[key]] = entry
        else:
            positions[key] = len(merged)
            merged.append(entry)
    return tuple(merged)


def resolve_run(config: ImageConfig, command: list[str] | None, entrypoint: str | None, env: list[str],
                working_dir: str, user: str) -> RunSpec:
    """What `run` starts, as Docker decides it.

    `command` None (or empty, as in Docker's API): the user named none, the image's Cmd runs.
    `entrypoint` None: the image's; otherwise it replaces the
    image's ("" clears it) and the image's Cmd is dropped too. The user's `K=V` replace the image's
    same-named variables in place; a bare `K` is kept as given (resolving it is the caller's job).
    """
    if entrypoint is None:
        first = list(config.entrypoint or ())
        rest = command or list(config.cmd or ())
    else:
        first = [entrypoint] if entrypoint else []
        rest = command or []
    argv = tuple(first + list(rest))
    if not argv:
        raise InvalidArgument("no command given: name one after the image (the image has no Cmd or Entrypoint)")
    if working_dir and not working_dir.startswith("/"):
        raise InvalidArgument(f'invalid working directory "{working_dir}": it must be an absolute path')
    return RunSpec(
        argv=argv,
        env=merge_env(config.env, env),
        working_dir=working_dir or clean_absolute(config.working_dir),
        user=user or config.user,
    )


_NANOS = 1_000_000_000
_CREATED = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))")
_GO_ZERO_TIME = -62135596800  # 0001-01-01T00:00:00Z: Go's zero time, Docker's "unknown"


def format_created_ns(nanoseconds: int) -> str:
    """RFC 3339 in UTC as Go writes it (RFC3339Nano): fraction digits up to nanoseconds, trailing zeros dropped."""
    seconds, fraction = divmod(nanoseconds, _NANOS)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return stamp + (f".{digits}" if digits else "") + "Z"


def format_created(seconds: float) -> str:
    """`format_created_ns` for seconds since the epoch, taken as written (1.5 is exactly 1.5 s, no float noise)."""
    return format_created_ns(int(Decimal(repr(seconds)).scaleb(9).to_integral_value()))


def parse_created(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (Z or an offset, any fraction); "" and Go's zero time are 0.0."""
    if not text:
        return 0.0
    match = _CREATED.fullmatch(text.strip())
    if not match:
        raise InvalidArgument(f'invalid time "{text}": expected RFC 3339 such as 2026-12-07T14:01:39.123456789Z')
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    try:
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise InvalidArgument(f'invalid time "{text}": no such date or time of day') from None
    offset = 0
    if match.group(9):
        offset = (int(match.group(10)) * 60 + int(match.group(11))) * 60 * (1 if match.group(9) == "+" else -1)
    whole = calendar.timegm((year, month, day, hour, minute, second)) - offset
    if whole == _GO_ZERO_TIME:
        return 0.0
    return whole + int((match.group(7) or "0")[:9].ljust(9, "0")) / _NANOS
