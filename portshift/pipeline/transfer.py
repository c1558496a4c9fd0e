"""The data path of one job: list, dispatch, and for each recording stream every artifact through
a :class:`HashingStream` into the sink, check it and record it.

    lister thread: source.recordings(window) -> outcome known from the listing? record it
                   -> else queue (bounded: listing never runs far ahead of the transfers)
    N workers:     source.artifacts(rec) -> for each: open -> [read-ahead] -> HashingStream
                   -> sink.put -> size/SHA-256 checks -> state: file done -> ... -> recording done

Threads are daemons and every wait polls the cancel event, so SIGINT/SIGTERM end a run within
about a second in any phase: a worker still blocked after the grace period (a socket read) is
left behind; its upload is in the sink's journal and the next run cleans it up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..api import Artifact, JobInfo, Recording, Sink, Source
from ..config import JobConfig
from ..errors import (
    ArtifactMissing,
    ConfigError,
    FatalError,
    IntegrityError,
    Interrupted,
    PortshiftError,
    RecordingPending,
    SkipRecording,
)
from ..events import FileExported
from ..hashing import HashingStream
from ..keys import build_key
from ..logs import recording_context
from ..plugins import call_event
from ..progress import Progress
from ..records import JobRecord, JobStatus, RecordingStatus
from ..redact import sanitize_message
from ..retry import Attempts, Backoff
from ..state import FileRecord, State
from .planning import Plan, iso
from .readahead import READ_AHEAD_FROM, ReadAhead

log = logging.getLogger("portshift.run")
T = TypeVar("T")

GRACE = 0.8  #: seconds the workers get to stop after a cancel before the run ends without them
_TICK = 0.1


def storable(recording_id: str) -> str:
    """The id as the state DB can store it: a lone surrogate (possible in JSON) is written as its
    escape sequence, deterministically, so that resume still recognises the recording."""
    try:
        recording_id.encode("utf-8")
        return recording_id
    except UnicodeEncodeError:
        return recording_id.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def _message(e: BaseException) -> str:
    return sanitize_message(str(e) if isinstance(e, PortshiftError) else f"{type(e).__name__}: {e}")


class Transfer:
    """Moves every recording of one job's window from the source into the sink."""

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
    ) -> None:
        self.cfg, self.state, self.job, self.plan = cfg, state, job, plan
        self.source, self.sink, self.info = source, sink, info
        self.progress, self.cancel = progress, cancel
        self.transfers = transfers
        self.retry_base = retry_base
        self.payload_prefix = payload_prefix
        self.resuming = plan.resume is not None
        self.already = 0  #: recordings exported before (this job's earlier attempt, or an earlier job)
        self.exported = 0  #: recordings exported by this run
        self._work: queue.Queue[Recording | None] = queue.Queue(maxsize=transfers * 2)
        self._fatal: BaseException | None = None
        self._lock = threading.Lock()
        self._listing_error: str | None = None
        self._left_behind = False  #: the run ended while a worker was still busy

    # --- the whole job --------------------------------------------------------------------
    def run(self) -> tuple[JobStatus, str | None]:
        """Transfer everything; return the job's status and a one-line error (or None)."""
        self.source.on_listing = self.progress.listing
        workers = [threading.Thread(target=self._worker, name=f"transfer-{n}", daemon=True) for n in range(self.transfers)]
        lister = threading.Thread(target=self._list, name="listing", daemon=True)
        self.progress.start()
        for t in (lister, *workers):
            t.start()
        try:
            while any(t.is_alive() for t in workers) and not self.cancel.is_set():
                self.cancel.wait(_TICK)
            if self.cancel.is_set():
                deadline = time.monotonic() + GRACE
                for t in (lister, *workers):
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
        failed = self.state.recording_counts(self.job.id).get(RecordingStatus.FAILED.value, 0)
        if failed:
            return JobStatus.PARTIAL, f"{failed} recordings failed; re-run to retry them"
        return JobStatus.COMPLETE, None

    def _set_fatal(self, e: BaseException) -> None:
        with self._lock:
            if self._fatal is None:
                self._fatal = e
        self.cancel.set()

    # --- listing (one thread) ---------------------------------------------------------------
    def _list(self) -> None:
        listed = 0
        try:
            for rec in self.source.recordings(self.plan.window):
                if self.cancel.is_set():
                    break
                listed += 1
                self.progress.listed(rec.size)
                rec.id = storable(rec.id)
                if rec.id in self.plan.done or rec.id in self.plan.earlier:
                    self.already += 1
                    self.progress.recording_finished("already")
                    if rec.id in self.plan.earlier:  # in this window's inventory, exported elsewhere
                        self.state.set_recording(
                            self.job.id,
                            rec.id,
                            RecordingStatus.EXPORTED_EARLIER,
                            "",
                            f"exported by job {self.plan.earlier[rec.id]}",
                            iso(rec.started_at) if rec.started_at else None,
                        )
                elif rec.skipped is not None:
                    self._record_outcome(rec, rec.skipped)
                elif not self._put(rec):
                    break
            else:
                if not self.cancel.is_set():  # the whole window: a total for progress bars (the service's page)
                    self.state.update_job(self.job.id, listed_count=listed)
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
            for _ in range(self.transfers):
                if not self._put(None):
                    break

    def _put(self, item: Recording | None) -> bool:
        while not self.cancel.is_set():
            try:
                self._work.put(item, timeout=_TICK)
                return True
            except queue.Full:
                continue
        return False

    # --- one recording (N worker threads) ----------------------------------------------------
    def _worker(self) -> None:
        while not self.cancel.is_set():
            try:
                rec = self._work.get(timeout=_TICK)
            except queue.Empty:
                continue
            if rec is None:
                return
            try:
                with recording_context(rec.id):
                    self._recording(rec)
            except BaseException as e:  # noqa: BLE001 - anything escaping stops the job
                if not self._left_behind:
                    self._set_fatal(e)
                return

    def _record_outcome(self, rec: Recording, e: BaseException) -> None:
        started = iso(rec.started_at) if rec.started_at else None
        if isinstance(e, RecordingPending):
            self.state.set_recording(self.job.id, rec.id, RecordingStatus.PENDING, e.reason, _message(e), started)
            self.progress.recording_finished("pending")
            log.info("recording %s is not ready yet (%s): a later run exports it", rec.id, e.reason)
        elif isinstance(e, SkipRecording):
            self.state.set_recording(self.job.id, rec.id, RecordingStatus.SKIPPED, e.reason, _message(e), started)
            self.progress.recording_finished("skipped")
            log.warning("skipped recording %s: %s", rec.id, _message(e))
        else:
            msg = _message(e)
            self.state.set_recording(self.job.id, rec.id, RecordingStatus.FAILED, type(e).__name__, msg, started)
            self.progress.recording_finished("failed")
            log.error("recording %s failed: %s", rec.id, msg)

    def _recording(self, rec: Recording) -> None:
        try:
            artifacts = self._with_retries(lambda: list(self.source.artifacts(rec)), f"recording {rec.id}")
            done = self.state.done_artifacts(self.job.id, rec.id) if self.resuming else set()
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
        started = iso(rec.started_at) if rec.started_at else None
        self.state.set_recording(self.job.id, rec.id, RecordingStatus.DONE, started_at=started)
        with self._lock:
            self.exported += 1
        self.progress.recording_finished("done")

    def _with_retries(self, fn: Callable[[], T], what: str) -> T:
        policy = Backoff(base=self.retry_base, cap=max(30.0, self.retry_base), attempts=self.cfg.job.retries + 1)
        attempts = Attempts(policy, cancel=self.cancel, what=f"waiting to retry {what}")
        while True:
            try:
                return fn()
            except (SkipRecording, FatalError, ConfigError, Interrupted, ArtifactMissing):
                raise
            except Exception as e:  # noqa: BLE001
                retryable = e.retryable if isinstance(e, PortshiftError) else True
                if self.cancel.is_set() or not retryable:
                    raise
                delay = attempts.next_delay()
                if delay is None:
                    raise
                log.warning(
                    "%s: attempt %d failed (%s); retrying in %.1fs",
                    what,
                    attempts.count,
                    sanitize_message(str(e) if isinstance(e, PortshiftError) else type(e).__name__),
                    delay,
                )
                attempts.wait(delay)

    # --- one artifact ------------------------------------------------------------------------
    def _artifact(self, rec: Recording, artifact: Artifact) -> None:
        opened = artifact.open()
        ahead: ReadAhead | None = None
        try:
            rel = self.payload_prefix + build_key(
                self.cfg.job.key_template,
                recording_id=rec.id,
                artifact=artifact.name,
                ext=opened.extension or artifact.extension,
                started_at=rec.started_at,
                fields=rec.fields,
                source=self.cfg.source_type,
            )
            declared = opened.size if opened.size is not None else artifact.size
            chunks: Iterable[bytes] = opened.chunks
            if declared is None or declared >= READ_AHEAD_FROM:
                ahead = ReadAhead(
                    opened.chunks,
                    self.cancel,
                    start_after=0 if declared is not None else READ_AHEAD_FROM,
                    readinto=opened.readinto,
                )
                chunks = ahead
            content_type = opened.content_type or artifact.content_type
            stream = HashingStream(
                chunks, cancel=self.cancel, expect_size=declared, expect_sha256=artifact.sha256, content_type=content_type
            )
            stream.observe(self.progress.add_bytes)
            result = self.sink.put(f"{self.job.export_root}/{rel}", stream, declared)
            got, digest = self._checked(rel, stream, declared, artifact.sha256, result)
        finally:
            _close(opened.close, ahead, self.cancel.is_set())
        self.state.add_file(
            self.job.id,
            FileRecord(
                key=rel,
                size=got,
                sha256=digest,
                recording_id=rec.id,
                artifact=artifact.name,
                content_type=content_type,
                recorded_at=iso(rec.started_at) if rec.started_at else None,
                verified=result.verified,
                provider_checksums=result.checksums,
            ),
        )
        self.progress.file_done(got)
        exported = FileExported(key=rel, size=got, sha256=digest, recording_id=rec.id, artifact=artifact.name)
        call_event("file_exported", job=self.info, file=exported)

    @staticmethod
    def _checked(rel: str, stream: HashingStream, declared: int | None, sha256: str | None, result: Any) -> tuple[int, str]:
        """The size and SHA-256 of what was stored, after every check a done file must pass."""
        if not stream.finished:
            raise IntegrityError(f"{rel}: the sink stopped reading before the end of the stream")
        got = stream.bytes_read
        if declared is not None and got != declared:
            raise IntegrityError(f"{rel}: {got} bytes received, {declared} declared by the source")
        digest = stream.sha256_hex()
        if sha256 and sha256.lower() != digest:
            raise IntegrityError(f"{rel}: SHA-256 differs from the one the source declared")
        if result.size != got:
            raise IntegrityError(f"{rel}: the sink stored {result.size} bytes, {got} were sent")
        confirmed = result.checksums.get("sha256")
        if confirmed and confirmed.lower() != digest:
            raise IntegrityError(f"{rel}: the sink confirmed a different SHA-256")
        return got, digest


def _close(close: Callable[[], None] | None, ahead: ReadAhead | None, cancelled: bool) -> None:
    """Stop the read-ahead thread and close the artifact (a silent source is woken by the close;
    after a cancel it is closed at once instead of waiting for the thread's chunk)."""
    stopped = True
    if ahead is not None:
        ahead.stop()
        stopped = ahead.join(0.05 if cancelled else 0.5)
        if stopped:
            ahead.close_inline()
    if close:
        try:
            close()
        except Exception:  # noqa: BLE001
            log.debug("closing an artifact failed", exc_info=True)
    if ahead is not None and not stopped and not ahead.join(10.0):
        log.debug("a read-ahead thread is still waiting for its source; it ends at the source's read timeout")
