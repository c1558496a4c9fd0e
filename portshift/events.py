"""Values passed to lifecycle hooks: no secrets, no content, no call metadata."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FileExported:
    key: str
    size: int
    sha256: str
    recording_id: str
    artifact: str
