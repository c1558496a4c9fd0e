"""The ``chorus`` source: lists a tenant's recorded calls and yields each one's artifacts.

Artifacts of one call, in this order (each optional, see the ``artifacts`` option):

- ``media`` (``.mp4``/``.m4a``/``.mp3``/...: the extension follows the final Content-Type):
  ``GET /api/v1/conversations/{id}/media``, by redirect or by a JSON download link;
- ``transcript`` (``.json``): the ``GET /api/v1/conversations/{id}`` document exactly as Chorus
  returned it (metadata and ``recording.utterances``);
- ``captions`` (``.vtt``): WebVTT built from those utterances;
- ``metadata`` (``.json``): the call's ``/v3/engagements`` item (subject, participants,
  trackers, account, ...), as the listing returned it, pretty-printed.

The conversation document is fetched once per call and shared by ``transcript`` and ``captions``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from portshift.api import Artifact, Recording, Source, Window
from portshift.errors import Interrupted, SourceError

from . import captions, listing
from .client import ChorusClient
from .options import ARTIFACTS, ChorusOptions

log = logging.getLogger("portshift.chorus")

#: engagement items kept between listing and export (the core lists only a little ahead)
METADATA_CACHE = 4096


class ChorusSource(Source):
    Options = ChorusOptions
    description = "Chorus by ZoomInfo: recorded calls (media, transcript, captions, metadata) over the public API"

    def __init__(self, options: ChorusOptions) -> None:
        super().__init__(options)
        self.options: ChorusOptions = options
        self.client = ChorusClient(options, sleep=self._sleep)
        self._metadata: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake up at once when the run is asked to stop."""
        if self.cancel is None:
            time.sleep(seconds)
        elif self.cancel.wait(seconds):
            raise Interrupted("interrupted while waiting to retry")

    def location(self) -> str:
        return self.client.location

    def check(self) -> None:
        """List one page of the last week to prove the token works."""
        end = datetime.now(timezone.utc)
        filters = listing.query_for(end - timedelta(days=7), end, self.options.engagement_types[0])
        self.client.list_page(filters)

    def close(self) -> None:
        self.client.close()

    # --- listing -----------------------------------------------------------------------------
    def recordings(self, window: Window) -> Iterator[Recording]:
        seen: set[str] = set()
        o = self.options
        for lo, hi in listing.slices(window.start, window.end, o.window_days):
            for etype in o.engagement_types:
                filters = listing.query_for(lo, hi, etype)
                for items in listing.pages(self.client.list_page, filters):
                    for item in items:
                        rec = self._recording(item, lo, hi, etype)
                        if rec is None or rec.id in seen:
                            continue
                        seen.add(rec.id)
                        self._remember(rec.id, item)
                        yield rec

    def _recording(self, item: Any, lo: datetime, hi: datetime, etype: str) -> Recording | None:
        if not isinstance(item, dict):
            return None
        eid = item.get("engagement_id")
        started = listing.started_at(item)
        if not isinstance(eid, str) or not eid.strip() or started is None:
            log.warning("an engagement without engagement_id or date_time was ignored")
            return None
        if not lo <= started < hi:
            return None  # outside this slice (the query was widened): another slice has it
        kind = item.get("engagement_type", etype)
        if kind != etype:
            return None
        if not listing.wanted(item, self.options.include_unprocessed, self.options.include_no_show):
            return None
        return Recording(id=eid, started_at=started, fields={"type": str(kind)})

    def _remember(self, eid: str, item: dict[str, Any]) -> None:
        data = json.dumps(item, ensure_ascii=False, indent=2).encode()
        with self._lock:
            self._metadata[eid] = data
            self._metadata.move_to_end(eid)
            while len(self._metadata) > METADATA_CACHE:
                self._metadata.popitem(last=False)

    def _engagement_json(self, rec: Recording) -> bytes:
        with self._lock:
            data = self._metadata.get(rec.id)
        if data is not None:
            return data
        # Not listed by this process (evicted): ask for it by id around its start time.
        if rec.started_at is None:
            raise SourceError(f"call {rec.id}: its engagement is not known", retryable=False)
        day = timedelta(days=1)
        filters = listing.query_for(rec.started_at - day, rec.started_at + day, rec.fields.get("type", "meeting"))
        filters["engagement_id"] = rec.id
        for items in listing.pages(self.client.list_page, filters):
            for item in items:
                if isinstance(item, dict) and item.get("engagement_id") == rec.id:
                    self._remember(rec.id, item)
                    return json.dumps(item, ensure_ascii=False, indent=2).encode()
        raise SourceError(f"call {rec.id}: its engagement is no longer listed", retryable=False)

    # --- artifacts -----------------------------------------------------------------------------
    def artifacts(self, recording: Recording) -> list[Artifact]:
        wanted = [a for a in ARTIFACTS if a in self.options.artifacts]
        doc_bytes: bytes | None = None
        doc: Any = None
        if "transcript" in wanted or "captions" in wanted:
            doc_bytes, doc = self.client.conversation(recording.id)
        out: list[Artifact] = []
        for name in wanted:
            if name == "media":
                cid = recording.id
                out.append(Artifact(name="media", open=lambda cid=cid: self.client.open_media(cid), extension="bin"))
            elif name == "transcript" and doc_bytes is not None:
                out.append(Artifact.from_bytes("transcript", doc_bytes, "json", "application/json"))
            elif name == "captions":
                out.append(Artifact.from_bytes("captions", captions.webvtt(doc).encode(), "vtt", "text/vtt"))
            elif name == "metadata":
                out.append(Artifact.from_bytes("metadata", self._engagement_json(recording), "json", "application/json"))
        return out
