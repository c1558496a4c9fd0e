"""`portshift verify --against-source`: list the export's window at the source again and compare
it with the inventory the export carries (portshift-manifest.json), without portshift's database.

- **new**: listed now, in no part of the inventory (a call added, or processed, since the export);
- **gone**: exported, and no longer listed by the source (deleted, or made private, since);
- **vanished**: in the inventory as not exported (skipped, pending, failed) and no longer listed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .api import Window
from .config import JobConfig
from .errors import ConfigError
from .manifest import INDEX_NAME, listed_ids_sha256
from .pipeline.listing import storable


@dataclass
class SourceComparison:
    listed_now: int = 0
    new: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    same_listing: bool = False  #: the listed ids' digest equals the manifest's
    limits: str = ""  #: what the source's listing cannot see (the source's own words)

    @property
    def passed(self) -> bool:
        return not (self.new or self.gone or self.vanished)

    def as_dict(self) -> dict[str, Any]:
        return {
            "listed_now": self.listed_now,
            "new": self.new,
            "gone": self.gone,
            "vanished": self.vanished,
            "same_listing": self.same_listing,
            "limits": self.limits or None,
            "passed": self.passed,
        }


def load_index(raw: bytes) -> dict[str, Any]:
    try:
        index = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{INDEX_NAME} is not a JSON document") from None
    if not isinstance(index, dict) or not isinstance(index.get("inventory"), dict):
        raise ConfigError(
            f"{INDEX_NAME} carries no inventory of the source",
            hint="--against-source needs an export written by portshift 0.1 with manifest format 2 or later",
        )
    return index


def compare_with_source(index: dict[str, Any], cfg: JobConfig, cancel: threading.Event | None = None) -> SourceComparison:
    window = index["job"]["window"]
    start = datetime.fromisoformat(window["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(window["end"].replace("Z", "+00:00"))
    source = cfg.source_cls(cfg.source_options)
    source.cancel = cancel
    try:
        now = {storable(rec.id) for rec in source.recordings(Window(start, end))}
    finally:
        source.close()
    exported = {f["recording_id"] for f in index.get("files", []) if f.get("recording_id")}
    not_exported = {p["recording_id"] for p in index.get("not_exported", []) if p.get("status") != "missing"}
    earlier = {e["recording_id"] for e in index.get("exported_earlier", [])}
    known = exported | not_exported | earlier
    return SourceComparison(
        listed_now=len(now),
        new=sorted(now - known),
        gone=sorted(exported - now),
        vanished=sorted((not_exported | earlier) - exported - now),
        same_listing=listed_ids_sha256(sorted(now))[1] == index["inventory"].get("listed_ids_sha256"),
        limits=getattr(source, "listing_limits", "") or "",
    )
