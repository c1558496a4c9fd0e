"""The ``chorus`` source: lists a tenant's calls and yields each one's artifacts.

Artifacts of one call, in this order (each optional, see the ``artifacts`` option):

- ``media`` (``.mp4``/``.m4a``/``.mp3``/...: the extension follows the final Content-Type):
  ``GET /api/v1/conversations/{id}/media``, by redirect or by a JSON download link; a call
  without media (404/403 there) keeps its other files, the media is reported missing;
- ``transcript`` (``.json``): the ``GET /api/v1/conversations/{id}`` document exactly as Chorus
  returned it (metadata and ``recording.utterances``);
- ``captions`` (``.vtt``): WebVTT built from those utterances;
- ``metadata`` (``.json``): the call's ``/v3/engagements`` item (subject, participants,
  trackers, account, ...), as the listing returned it, pretty-printed;
- opt-in: ``summary`` and ``action_items`` (``.json``) where the conversation carries them,
  ``scorecards`` (``.json``: the tenant's scorecards that name the call), ``email`` (``.json``:
  ``GET /api/v1/emails/{id}`` for e-mail engagements).

Every call the listing returns in the window is yielded exactly once: to export, or with
``skipped`` set (a :class:`portshift.RecordingPending` for a call not processed yet, a
:class:`portshift.SkipRecording` with the reason otherwise). The conversation document is fetched
once per call: it is the proof the call is visible, and feeds transcript, captions and summary.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from portshift import (
    Artifact,
    Interrupted,
    PortshiftError,
    RateLimiter,
    RateMemory,
    Recording,
    SkipRecording,
    Source,
    SourceError,
    Window,
    check_failure,
)

from . import captions, listing
from .client import ChorusClient
from .extras import Extras
from .options import ARTIFACTS, ChorusOptions
from .pacing import AutoPacing

log = logging.getLogger("portshift.chorus")

#: engagement items kept between listing and export (the core lists only a little ahead)
METADATA_CACHE = 4096
#: a worker that did not list the job lists ahead of the call it needs the metadata of: first
#: this far, then wider or narrower (never beyond these bounds) to find about a page of calls
AHEAD_START, AHEAD_MIN, AHEAD_MAX = timedelta(days=1), timedelta(minutes=1), timedelta(days=31)
AHEAD_PAGES = 3  #: pages a look ahead reads at most (then the call is asked for by id)
AHEAD_FEW = 50  #: a look that found fewer calls than this (in one page) looks further next time
#: artifacts that need the full conversation document
FROM_CONVERSATION = frozenset({"transcript", "captions", "summary", "action_items"})
#: artifacts read per call from the conversation's endpoints (the rest come from the listing)
PER_CALL = FROM_CONVERSATION | {"media"}
#: artifacts a call without a recording can still have
WITHOUT_RECORDING = frozenset({"metadata", "email"})


class ChorusSource(Source):
    Options = ChorusOptions
    description = "Chorus by ZoomInfo: recorded calls (media, transcript, captions, metadata) over the public API"
    listing_limits = (
        "Chorus never lists recordings marked private, nor calls the token's user may not see "
        "(data access rules): export with a user who sees every recording"
    )

    def __init__(self, options: ChorusOptions) -> None:
        super().__init__(options)
        self.options: ChorusOptions = options
        self.client = ChorusClient(options)
        self.extras = Extras(self.client)
        self._metadata: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._ahead_lock = threading.Lock()
        #: how far a worker that did not list looks ahead, per engagement type (:meth:`_look_ahead`)
        self._ahead: dict[str, timedelta] = {}
        self._rate_memory: RateMemory | None = None

    # the core sets ``cancel`` before listing: every wait of the client ends when it is set
    @property  # type: ignore[override]
    def cancel(self) -> threading.Event | None:
        return self.client.cancel

    @cancel.setter
    def cancel(self, event: threading.Event | None) -> None:
        self.client.cancel = event

    @property  # type: ignore[override]
    def rate_limiter(self) -> RateLimiter:
        """The client's limiter: the core shares it with every worker of the job."""
        return self.client.limiter

    def location(self) -> str:
        return self.client.location

    # ``requests_per_second = "auto"``: the rate found is kept per base_url (never per token)
    @property  # type: ignore[override]
    def rate_memory(self) -> RateMemory | None:
        return self._rate_memory

    @rate_memory.setter
    def rate_memory(self, memory: RateMemory | None) -> None:
        self._rate_memory = memory
        pacing = self.client.pacing
        if memory is not None and isinstance(pacing, AutoPacing):
            rate = memory.source_rate(self._rate_key)
            if rate is not None:
                pacing.resume(rate)
                log.info("starting at %.3g requests/s, the rate the last run found", rate)

    @property
    def _rate_key(self) -> str:
        return f"chorus {self.client.location}"

    def status(self) -> str:
        return self.client.pacing.status()

    def check(self) -> None:
        """List one page of the last week to prove the host, TLS trust and token: a host that
        does not answer fails at once (short connect timeout, no retry)."""
        end = datetime.now(timezone.utc)
        filters = listing.query_for(end - timedelta(days=7), end, self.options.engagement_types[0])
        try:
            self.client.list_page(filters, check=True)
        except PortshiftError as e:  # one line, and run stops before listing: auth or fatal
            raise check_failure(e) from None

    def close(self) -> None:
        try:
            pacing, memory = self.client.pacing, self._rate_memory
            if memory is not None and isinstance(pacing, AutoPacing) and pacing.found:
                memory.save_source_rate(self._rate_key, pacing.rate)
        finally:  # connections closed even when the rate cannot be kept (a state that refuses it)
            self.client.close()

    # --- listing -----------------------------------------------------------------------------
    def recordings(self, window: Window) -> Iterator[Recording]:
        seen: set[str] = set()
        o = self.options
        for lo, hi in listing.slices(window.start, window.end, o.window_days):
            for etype in o.engagement_types:
                filters = listing.query_for(lo, hi, etype)
                filters["with_trackers"] = "true"
                what = f"calls {lo:%Y-%m-%d %H:%M} .. {hi:%Y-%m-%d %H:%M} ({etype})"
                page = 0

                def get_page(params: dict[str, str], what: str = what) -> dict[str, Any]:
                    nonlocal page
                    page += 1  # said before the request: the line shows what a long wait is for
                    self._progress(f"{what}, page {page}: {len(seen)} listed")
                    return self._page(params)

                for items in listing.pages(get_page, filters, older_than=lo):
                    for item in items:
                        rec = self._recording(item, lo, hi, etype)
                        if rec is None or rec.id in seen:
                            continue
                        seen.add(rec.id)
                        yield rec

    def _page(self, params: dict[str, str]) -> dict[str, Any]:
        if self.cancel is not None and self.cancel.is_set():
            raise Interrupted("interrupted while listing")
        return self.client.list_page(params)

    def _progress(self, text: str) -> None:
        if self.on_listing is not None:
            self.on_listing(text)

    def _recording(self, item: Any, lo: datetime, hi: datetime, etype: str) -> Recording | None:
        if not isinstance(item, dict):
            return None
        eid = item.get("engagement_id")
        started = listing.started_at(item)
        if not isinstance(eid, str) or not eid.strip() or started is None:
            log.warning("an engagement without engagement_id or date_time was ignored")
            return None
        if not lo <= started < hi:
            return None  # outside this slice (the query was widened, or not honoured): another slice has it
        kind = item.get("engagement_type", etype)
        if kind != etype:
            return None  # listed under its own type's query
        o = self.options
        what = listing.plan(item, str(kind), o.include_unprocessed, o.include_no_show)
        rec = Recording(id=eid, started_at=started, fields={"type": str(kind)})
        if isinstance(what, SkipRecording):
            rec.skipped = what
        elif what == listing.METADATA and not WITHOUT_RECORDING & set(o.artifacts):
            rec.skipped = SkipRecording(
                "no_recording", f"a {kind} engagement has no recording (add 'metadata' to artifacts to export its listing item)"
            )
        else:
            self._remember(eid, item, what)
        return rec

    def _remember(self, eid: str, item: dict[str, Any], what: str) -> None:
        data = json.dumps(item, ensure_ascii=False, indent=2).encode()
        with self._lock:
            self._metadata[eid] = (data, what)
            self._metadata.move_to_end(eid)
            while len(self._metadata) > METADATA_CACHE:
                self._metadata.popitem(last=False)

    def _engagement(self, rec: Recording) -> tuple[bytes, str]:
        with self._lock:
            known = self._metadata.get(rec.id)
        if known is not None:
            return known
        # Not listed by this process (another worker of the job listed it, or it was evicted)
        if rec.started_at is None:
            raise SourceError(f"call {rec.id}: its engagement is not known", retryable=False)
        kind = rec.fields.get("type", "meeting")
        with self._ahead_lock:  # one look ahead at a time: the threads that wait for it find their calls
            with self._lock:
                known = self._metadata.get(rec.id)
            if known is None:
                self._look_ahead(rec.started_at, kind)
                with self._lock:
                    known = self._metadata.get(rec.id)
        if known is not None:
            return known
        # ask for it by id around its start time
        day = timedelta(days=1)
        filters = listing.query_for(rec.started_at - day, rec.started_at + day, kind)
        filters["engagement_id"] = rec.id
        filters["with_trackers"] = "true"
        for items in listing.pages(self.client.list_page, filters):
            for item in items:
                if isinstance(item, dict) and item.get("engagement_id") == rec.id:
                    o = self.options
                    what = listing.plan(item, kind, o.include_unprocessed, o.include_no_show)
                    if isinstance(what, SkipRecording):
                        raise what
                    self._remember(rec.id, item, what)
                    return self._metadata[rec.id]
        raise SourceError(f"call {rec.id}: its engagement is no longer listed", retryable=False)

    def _look_ahead(self, start: datetime, kind: str) -> None:
        """List the calls of ``kind`` from ``start`` on, for its span (``_ahead``, at most
        ``AHEAD_PAGES`` pages) and remember them: a worker that did not list the job gets its
        calls (claimed oldest first) one listing request per page of them, not one per call.
        The span follows the tenant: wider while a look finds less than half a page, narrower
        when it needs more than one."""
        span = self._ahead.get(kind, AHEAD_START)
        filters = listing.query_for(start, start + span, kind)
        filters["with_trackers"] = "true"
        o, count, pages, whole = self.options, 0, 0, False  # whole: every page of the span was read
        for items in listing.pages(self.client.list_page, filters):
            pages += 1
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("engagement_id"), str):
                    continue
                count += 1
                what = listing.plan(item, kind, o.include_unprocessed, o.include_no_show)
                if item.get("engagement_type", kind) == kind and not isinstance(what, SkipRecording):
                    self._remember(item["engagement_id"], item, what)
            if pages >= AHEAD_PAGES:
                break
        else:
            whole = True
        if not whole:
            span = max(AHEAD_MIN, span / 4)
        elif pages > 1:
            span = max(AHEAD_MIN, span / 2)
        elif count < AHEAD_FEW:  # in proportion, at most 8 times as far
            span = min(AHEAD_MAX, span * min(8.0, AHEAD_FEW / max(count, 1)))
        self._ahead[kind] = span

    # --- artifacts -----------------------------------------------------------------------------
    def artifacts(self, recording: Recording) -> list[Artifact]:
        if recording.skipped is not None:
            raise recording.skipped  # a core that did not look at ``skipped`` still records it
        metadata, what = self._engagement(recording)
        wanted = [a for a in ARTIFACTS if a in self.options.artifacts]
        if what == listing.METADATA:
            wanted = [a for a in wanted if a in WITHOUT_RECORDING]
        elif "email" in wanted:
            wanted.remove("email")
        doc: Any = None
        doc_bytes = b""
        if what == listing.FULL and PER_CALL & set(wanted):
            # the conversation proves the call is visible (403/404 skip it) before its media is
            # asked for: a media 404 then means only the media is missing
            doc_bytes, doc = self.client.conversation(recording.id, full=bool(FROM_CONVERSATION & set(wanted)))
        out: list[Artifact] = []
        cid = recording.id
        for name in wanted:
            if name == "media":
                out.append(
                    Artifact(
                        name="media",
                        open=lambda cid=cid: self.client.open_media(cid),
                        extension="bin",
                        open_from=lambda offset, validator, cid=cid: self.client.open_media_from(cid, offset, validator),
                    )
                )
            elif name == "transcript":
                out.append(Artifact.from_bytes("transcript", doc_bytes, "json", "application/json"))
            elif name == "captions":
                out.append(Artifact.from_bytes("captions", captions.webvtt(doc).encode(), "vtt", "text/vtt"))
            elif name == "metadata":
                out.append(Artifact.from_bytes("metadata", metadata, "json", "application/json"))
            elif name in ("summary", "action_items"):
                out.append(self.extras.from_conversation(name, cid, doc, metadata))
            elif name == "scorecards":
                out.append(self.extras.scorecards(cid))
            elif name == "email":
                out.append(self.extras.email(cid))
        return out
