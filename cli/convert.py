"""Proto messages to the plain values the CLI prints."""

from __future__ import annotations


def status_name(enum_type, value: int) -> str:
    """CONTAINER_STATUS_RUNNING -> "running"."""
    name = enum_type.Name(value)
    return name.rsplit("_", 1)[-1].lower()


def timestamp_seconds(ts) -> float | None:
    """A google.protobuf.Timestamp as unix seconds; None when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.seconds + ts.nanos / 1e9
