"""The listing of a job's window, by the one worker that holds the job's listing lock.

Each listed recording becomes a row: its outcome when the listing already tells it (skipped,
pending, exported by an earlier job), else ``todo`` for any worker to claim, written in small
batches (one transaction each) so the other workers start as soon as the first rows exist. When
the whole window is listed, the job records the count and that this attempt's listing is
complete; a lister that dies leaves the lock free and another worker lists again (every write is
an upsert, so listing twice is listing once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ..api import Recording, Source
from ..records import JobRecord, RecordingStatus
from ..state import Claimed, State
from ..state.claims import listing_lock
from .planning import Plan, from_iso, iso

log = logging.getLogger("portshift.run")

BATCH = 200  #: rows per transaction
BATCH_SECONDS = 0.3  #: or this long after the first row of a batch
KEEP = 10_000  #: listed recordings kept in memory for this process's own transfers


def storable(recording_id: str) -> str:
    """The id as the state DB can store it: a lone surrogate (possible in JSON) is written as its
    escape sequence, deterministically, so that resume still recognises the recording."""
    try:
        recording_id.encode("utf-8")
        return recording_id
    except UnicodeEncodeError:
        return recording_id.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


class Lister:
    """Lists the window into the state. ``outcome(rec, e)`` records a recording the listing
    already decided (skipped or pending); ``cancel`` stops it between recordings."""

    def __init__(
        self,
        state: State,
        job: JobRecord,
        plan: Plan,
        source: Source,
        *,
        attempt: int,
        cancel: threading.Event,
        outcome: Callable[[Recording, BaseException], None],
        on_listed: Callable[[int | None], None],
        on_already: Callable[[], None],
        on_rows: Callable[[], None] = lambda: None,
    ) -> None:
        self.state, self.job, self.plan, self.source = state, job, plan, source
        self.attempt = attempt
        self.cancel = cancel
        self.outcome = outcome
        self.on_listed, self.on_already, self.on_rows = on_listed, on_already, on_rows
        self.already = 0
        self.complete = False  #: the whole window was listed
        self._known: OrderedDict[str, Recording] = OrderedDict()
        self._known_lock = threading.Lock()
        self._batch: list[tuple[str, str | None, str]] = []
        self._batch_since = 0.0
        self._batch_lock = threading.Lock()
        self._wanted = False  #: a transfer found nothing to claim: the next row is written at once

    def recording(self, claimed: Claimed) -> Recording:
        """The recording as listed by this process, else rebuilt from what the state keeps."""
        with self._known_lock:
            rec = self._known.pop(claimed.id, None)
        return rec if rec is not None else self.rebuild(claimed)

    @staticmethod
    def rebuild(claimed: Claimed) -> Recording:
        """A recording another worker listed, from what the state keeps: id, start, fields, size."""
        started = from_iso(claimed.started_at) if claimed.started_at else None
        return Recording(id=claimed.id, started_at=started, fields=dict(claimed.fields), size=claimed.size)

    def run(self) -> None:
        """List the whole window (raises what the source raises; the caller records it)."""
        listed = 0
        try:
            for rec in self.source.recordings(self.plan.window):
                if self.cancel.is_set():
                    break
                listed += 1
                self.on_listed(rec.size)
                rec.id = storable(rec.id)
                started = iso(rec.started_at) if rec.started_at else None
                if rec.id in self.plan.done or rec.id in self.plan.earlier:
                    self.already += 1
                    self.on_already()
                    if rec.id in self.plan.earlier:  # in this window's inventory, exported elsewhere
                        msg = f"exported by job {self.plan.earlier[rec.id]}"
                        self.state.set_recording(self.job.id, rec.id, RecordingStatus.EXPORTED_EARLIER, "", msg, started)
                elif rec.skipped is not None:
                    self.outcome(rec, rec.skipped)
                else:
                    with self._known_lock:
                        self._known[rec.id] = rec
                        while len(self._known) > KEEP:
                            self._known.popitem(last=False)
                    self._add(rec.id, started, Claimed.ref(dict(rec.fields), rec.size))
            else:
                if not self.cancel.is_set():
                    self.flush()
                    # the whole window: a total for progress bars, and the job can now complete
                    self.state.update_job(self.job.id, listed_count=listed, listing_attempt=self.attempt)
                    self.complete = True
                    self.on_rows()  # the claims may end now
        finally:
            if not self.complete:
                try:
                    self.flush()  # what was listed is kept: another worker's listing upserts it again
                except Exception:  # noqa: BLE001 - the listing's own error is the one to report
                    log.debug("recording the last listed recordings failed", exc_info=True)
            self.state.unlock(listing_lock(self.job.id))
            self.on_rows()

    def _add(self, rid: str, started: str | None, ref: str) -> None:
        with self._batch_lock:
            if not self._batch:
                self._batch_since = time.monotonic()
            self._batch.append((rid, started, ref))
            full = len(self._batch) >= BATCH or self._wanted
        if full:
            self.flush()
        else:
            self.flush(stale_only=True)

    def want(self) -> None:
        """A transfer found nothing to claim: write what is listed now, and the next row as soon
        as it is listed (the first rows of a job are not held back for a batch to fill)."""
        with self._batch_lock:
            self._wanted = True
            waiting = bool(self._batch)
        if waiting:
            self.flush()

    def flush(self, stale_only: bool = False) -> None:
        """Write the batch (``stale_only``: only when it waited ``BATCH_SECONDS``) and tell the
        claims (``on_rows``)."""
        with self._batch_lock:
            if stale_only and (not self._batch or time.monotonic() - self._batch_since < BATCH_SECONDS):
                return
            batch, self._batch = self._batch, []
            if batch:
                self.state.add_todo(self.job.id, batch)
                self._wanted = False
        if batch:
            self.on_rows()
