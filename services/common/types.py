"""Plain values more than one service's core works with, mirroring protos/types/v1 without gRPC."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Volume:
    """One `-v host:container[:ro]` bind volume; both paths absolute."""

    host_path: str
    container_path: str
    read_only: bool = False
