"""One worker's share of a job's data path: claim recordings, and for each stream every artifact
through a :class:`HashingStream` into the sink, check it and record it.

    lister thread:  only in the worker holding the listing lock (:mod:`.listing`)
    claims thread:  claim a few todo rows while the local queue has room; when none is left to
                    claim, wait for what the listing or other live workers may still bring
                    (a dead worker's rows come back), and end when the job has nothing left
    N transfers:    source.artifacts(rec) -> for each: open -> [read-ahead] -> HashingStream
                    -> sink.put -> size/SHA-256 checks -> state: the recording's files and its
                    outcome in one transaction (the outcome only while this worker still holds
                    the claim: nothing recorded twice; a file of 8 MiB or more when stored)

Threads are daemons and every wait polls the cancel event, so SIGINT/SIGTERM end a run within
about a second in any phase: a worker still blocked after the grace period (a socket read) is
left behind; its upload is in the sink's journal and the next run cleans it up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TypeVar

from ..api import JobInfo, Recording, Sink, Source
from ..config import JobConfig
from ..errors import (
    ArtifactMissing,
    FatalError,
    Interrupted,
    PortshiftError,
    RecordingPending,
    SkipRecording,
)
from ..logs import recording_context
from ..progress import Progress
from ..records import JobRecord, JobStatus, RecordingStatus
from ..redact import sanitize_message
from ..resume import resume_above
from ..state import Claimed, FileRecord, State
from ..state.claims import listing_lock
from .artifacts import ArtifactSteps
from .listing import Lister
from .planning import Plan, iso
from .recovery import recover_orphans
from .resuming import Resumables
from .seat import WorkerSeat

log = logging.getLogger("portshift.run")
T = TypeVar("T")

GRACE = 0.8  #: seconds the workers get to stop after a cancel before the run ends without them
_TICK = 0.1
_WAIT = 0.2  #: between looks for work when there is nothing to claim
REAP_EVERY = 1.0  #: seconds between looks for dead workers while others hold recordings
RECORD_AT_ONCE = 8 * 1024 * 1024  #: files this large are recorded when stored, smaller ones with their recording


def _message(e: BaseException) -> str:
    return sanitize_message(str(e) if isinstance(e, PortshiftError) else f"{type(e).__name__}: {e}")


class Transfer(ArtifactSteps):
    """One worker's share of a job: claim recordings from the state and move them from the
    source into the sink (and list the window, when this worker holds the listing lock)."""

    def __init__(
        self,
        cfg: JobConfig,
        state: State,
        job: JobRecord,
        plan: Plan,
        source: Source,
        sink: Sink,
        *,
        info: JobInfo,
        progress: Progress,
        cancel: threading.Event,
        transfers: int,
        retry_base: float,
        payload_prefix: str,
        seat: WorkerSeat,
    ) -> None:
        self.cfg, self.state, self.job, self.plan = cfg, state, job, plan
        self.source, self.sink, self.info = source, sink, info
        self.progress, self.cancel = progress, cancel
        self.transfers, self.retry_base, self.payload_prefix, self.seat = transfers, retry_base, payload_prefix, seat
        self.exported = 0  #: recordings exported by this worker
        self._work: queue.Queue[Recording | None] = queue.Queue()
        self._fatal: BaseException | None = None
        self._lock = threading.Lock()
        self._listing_error: str | None = None
        self._left_behind = False  #: the run ended while a worker was still busy
        self._mine: set[str] = set()  #: claimed by this worker and not finished
        self._reaped_at = self._counted_at = 0.0
        self._wake = threading.Event()  #: for the claims: work taken, rows listed, a recording done
        self._running = transfers  #: transfer threads not ended
        self._ended = threading.Event()  #: every transfer thread ended
        self._batch = (transfers + 1) // 2  #: recordings claimed at once (at least)
        self._held = threading.local()  #: ``files``: the files of the recording a transfer thread exports
        self.lister: Lister | None = None
        self.resumables = Resumables()  #: uploads gone workers left mid-file (see .resuming)
        self.resume_from = resume_above()
        self._lister_thread: threading.Thread | None = None

    @property
    def already(self) -> int:
        """Recordings the listing found exported before (an earlier attempt, or an earlier job)."""
        return self.lister.already if self.lister is not None else 0

    # --- the whole job --------------------------------------------------------------------
    def run(self) -> tuple[JobStatus, str | None]:
        """Transfer until nothing is left to do; return the status and a one-line error (or None)."""
        self.source.on_listing = self.progress.listing
        workers = [threading.Thread(target=self._worker, name=f"transfer-{n}", daemon=True) for n in range(self.transfers)]
        dispatcher = threading.Thread(target=self._dispatch, name="claims", daemon=True)
        self.progress.start()
        self._start_listing()
        for t in (dispatcher, *workers):
            t.start()
        try:
            while not self._ended.is_set() and not self.cancel.is_set():
                self._ended.wait(_TICK)
            if self.cancel.is_set():
                deadline = time.monotonic() + GRACE
                for t in (self._lister_thread, dispatcher, *workers):
                    if t is not None:
                        t.join(max(0.0, deadline - time.monotonic()))
                self._left_behind = any(t.is_alive() for t in workers)
        finally:
            self.progress.stop(interrupted=self.cancel.is_set() and self._fatal is None)
        return self._outcome()

    @property
    def fatal_exit_code(self) -> int | None:
        """The exit code the fatal error that stopped the job asks for (a residency refusal is a
        configuration problem: 2), or None."""
        fatal = self._fatal
        return fatal.exit_code if isinstance(fatal, PortshiftError) else None

    def _outcome(self) -> tuple[JobStatus, str | None]:
        fatal = self._fatal
        if fatal is not None and not isinstance(fatal, Exception):
            raise fatal  # SystemExit/KeyboardInterrupt in a worker: end the process as asked
        if fatal is not None:
            return JobStatus.FAILED, _message(fatal)
        if self.cancel.is_set():
            return JobStatus.INTERRUPTED, "interrupted"
        if self._listing_error:
            return JobStatus.FAILED, self._listing_error
        if not self.seat.alive:
            return JobStatus.FAILED, "this worker stalled past its lease; the others redo what it held"
        failed = self.state.recording_counts(self.job.id).get(RecordingStatus.FAILED.value, 0)
        if failed:
            return JobStatus.PARTIAL, f"{failed} recordings failed; re-run to retry them"
        return JobStatus.COMPLETE, None

    def _set_fatal(self, e: BaseException) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = e
        self.cancel.set()

    # --- listing (one thread, in the worker that holds the listing lock) -----------------------
    def _start_listing(self) -> bool:
        """List the window here unless this attempt's listing is complete or another worker lists."""
        job = self.state.job(self.job.id)
        if job is None or job.listing_attempt == self.seat.attempt:
            return False
        if not self.state.try_lock(listing_lock(self.job.id)):
            return False
        self.lister = Lister(
            self.state,
            self.job,
            self.plan,
            self.source,
            attempt=self.seat.attempt,
            cancel=self.cancel,
            outcome=lambda rec, e: self._record_outcome(rec, e, claimed=False),
            on_listed=self.progress.listed,
            on_already=lambda: self.progress.recording_finished("already"),
            on_rows=self._wake.set,
        )
        self._lister_thread = threading.Thread(target=self._list, name="listing", daemon=True)
        self._lister_thread.start()
        return True

    def _list(self) -> None:
        assert self.lister is not None
        try:
            self.lister.run()
        except FatalError as e:
            self._set_fatal(e)
        except Interrupted:
            self.cancel.set()
        except Exception as e:  # noqa: BLE001 - a plugin bug must not lose state
            if not self.cancel.is_set():
                self._listing_error = f"listing recordings failed: {_message(e)}"
                log.error("%s", self._listing_error)
        except BaseException as e:  # noqa: BLE001 - SystemExit in a plugin: stop as asked
            self._set_fatal(e)
        finally:
            self.progress.listing_done()

    def _listing(self) -> bool:
        return self._lister_thread is not None and self._lister_thread.is_alive()

    # --- claims (one thread) ------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Claim recordings in small batches while the local queue has room; end when nothing is
        left to do in the whole job (what other live workers hold is waited for: if one dies,
        its recordings come back and are claimed here)."""
        try:
            while not self.cancel.is_set() and not self._listing_error and self.seat.alive:
                room = self.transfers - self._work.qsize()
                if room < self._batch:  # enough work waiting: claim half a queue at once, later
                    self._job_progress()
                    self._wake.wait(_WAIT)
                    self._wake.clear()
                    continue
                claimed = self.state.claim(self.job.id, self.seat.id, room)
                if claimed:
                    for c in claimed:
                        with self._lock:
                            self._mine.add(c.id)
                        self._work.put(self._recording_of(c))
                    continue
                if not self._more_to_come():
                    return
                self._job_progress()
                self._wake.wait(_WAIT)  # rows listed here, a recording of this worker done, or a look again
                self._wake.clear()
        except BaseException as e:  # noqa: BLE001 - a lost state database stops this worker
            if not self.cancel.is_set():
                self._set_fatal(e)
        finally:
            for _ in range(self.transfers):
                self._work.put(None)

    def _job_progress(self) -> None:
        """The job's totals, once per progress line (at most every second), so that it counts what
        all workers did; not without a progress display (a count scans the job's recordings)."""
        if not self.progress.enabled or time.monotonic() - self._counted_at < max(1.0, self.progress.interval):
            return
        self._counted_at = time.monotonic()
        counts = self.state.recording_counts(self.job.id)
        job = self.state.job(self.job.id)
        listed = sum(counts.values())
        complete = job is not None and job.listing_attempt == self.seat.attempt
        self.progress.job_counts(listed, listed - counts.get(RecordingStatus.TODO.value, 0), complete)

    def _recording_of(self, claimed: Claimed) -> Recording:
        if self.lister is not None:
            return self.lister.recording(claimed)
        return Lister.rebuild(claimed)

    def _more_to_come(self) -> bool:
        """Nothing to claim now: will there be (a listing under way, recordings other live
        workers hold, or this worker's own still in flight)?"""
        if self._listing():
            assert self.lister is not None
            self.lister.want()
            return True
        job = self.state.job(self.job.id)
        if job is not None and job.listing_attempt != self.seat.attempt:
            self._start_listing()  # the lister is gone before the end of the window: list again here
            return True
        unclaimed, claimed = self.state.todo_counts(self.job.id)
        with self._lock:
            mine = len(self._mine)
        if unclaimed or mine:
            return True
        if claimed:
            if time.monotonic() - self._reaped_at >= REAP_EVERY:
                self._reaped_at = time.monotonic()
                if self.state.reap(self.job.id, self.seat.id):
                    log.info("a worker of this job stopped; its recordings are claimed again")
                    # its open uploads too (those it left mid-file are kept, to be continued)
                    left = recover_orphans(self.state, self.job.id, self.sink, self.cancel, keep_resumable=self.resume_from >= 0)
                    self.resumables.add(left)
            return True
        return False

    # --- one recording (N worker threads) ----------------------------------------------------
    def _worker(self) -> None:
        try:
            self._work_loop()
        finally:
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self._ended.set()

    def _work_loop(self) -> None:
        while not self.cancel.is_set():
            try:
                rec = self._work.get(timeout=_TICK)
            except queue.Empty:
                continue
            if self.transfers - self._work.qsize() >= self._batch and not self._wake.is_set():
                self._wake.set()  # the claims thread may fill the queue again (not woken for less)
            if rec is None:
                return
            try:
                with recording_context(rec.id):
                    self._recording(rec)
            except BaseException as e:  # noqa: BLE001 - anything escaping stops the job
                if not self._left_behind:
                    self._set_fatal(e)
                return
            finally:
                with self._lock:
                    self._mine.discard(rec.id)
                if self._work.empty():
                    self._wake.set()  # the claims may be waiting for the last ones to end

    def _record_outcome(self, rec: Recording, e: BaseException, *, claimed: bool = True) -> None:
        started = iso(rec.started_at) if rec.started_at else None
        if isinstance(e, RecordingPending):
            status, reason, how = RecordingStatus.PENDING, e.reason, "pending"
            log.info("recording %s is not ready yet (%s): a later run exports it", rec.id, e.reason)
        elif isinstance(e, SkipRecording):
            status, reason, how = RecordingStatus.SKIPPED, e.reason, "skipped"
            log.warning("skipped recording %s: %s", rec.id, _message(e))
        else:
            status, reason, how = RecordingStatus.FAILED, type(e).__name__, "failed"
            log.error("recording %s failed: %s", rec.id, _message(e))
        if claimed:
            self._finish(rec, status, reason, _message(e))
        else:
            self.state.set_recording(self.job.id, rec.id, status, reason, _message(e), started)
        self.progress.recording_finished(how)

    def _finish(self, rec: Recording, status: RecordingStatus, reason: str = "", message: str = "") -> bool:
        files = getattr(self._held, "files", None) or []
        finished = self.state.finish_claim(self.job.id, rec.id, self.seat.id, status, reason, message, files=files)
        self._held.files = []  # recorded with the outcome, in one transaction
        if finished:
            return True
        log.warning("recording %s was given to another worker while this one worked on it (lease lost)", rec.id)
        return False

    def _add_file(self, job_id: str, f: FileRecord) -> None:
        """A file the sink confirmed: a small one is recorded with its recording's outcome (one
        transaction per recording; a crash before it redoes the file), a large one at once."""
        files = getattr(self._held, "files", None)
        if files is None or f.size >= RECORD_AT_ONCE:
            self.state.add_file(job_id, f)
        else:
            files.append(f)

    def _recording(self, rec: Recording) -> None:
        self._held.files = []
        try:
            self._export(rec)
        finally:
            files, self._held.files = self._held.files, None
            if files:  # the recording ended without an outcome (a cancel, a fatal error): keep its files
                try:
                    self.state.add_files(self.job.id, files)
                except Exception as e:  # noqa: BLE001 - they are exported again by the next run
                    log.warning("recording %s: its stored files could not be recorded (%s)", rec.id, type(e).__name__)

    def _export(self, rec: Recording) -> None:
        try:
            artifacts = self._with_retries(lambda: list(self.source.artifacts(rec)), f"recording {rec.id}")
            done = self.state.done_artifacts(self.job.id, rec.id)
            for artifact in artifacts:
                if self.cancel.is_set():
                    return
                if artifact.name in done:
                    continue
                try:
                    self._with_retries(lambda a=artifact: self._artifact(rec, a), f"{rec.id}/{artifact.name}")
                except ArtifactMissing as e:
                    self.state.add_missing(self.job.id, rec.id, artifact.name, e.reason, _message(e))
                    log.warning("recording %s: %s is missing at the source (%s)", rec.id, artifact.name, _message(e))
        except FatalError as e:
            self._set_fatal(e)
            return
        except Interrupted:
            return
        except SkipRecording as e:
            self._record_outcome(rec, e)
            return
        except Exception as e:  # noqa: BLE001 - recorded as failed, the job goes on
            if not (self.cancel.is_set() and not isinstance(e, PortshiftError)):
                self._record_outcome(rec, e)
            return
        if self._finish(rec, RecordingStatus.DONE):
            with self._lock:
                self.exported += 1
        self.progress.recording_finished("done")
