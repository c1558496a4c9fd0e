"""One artifact of a recording: open it at the source, stream it through a
:class:`HashingStream` (with read-ahead for big ones) into the sink, check size and SHA-256
against what the source declared and the sink confirmed, and record the file."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ..api import Artifact, JobInfo, Recording, Sink
from ..config import JobConfig
from ..errors import ArtifactMissing, ConfigError, FatalError, IntegrityError, Interrupted, PortshiftError, SkipRecording
from ..events import FileExported
from ..hashing import HashingStream
from ..keys import build_key
from ..plugins import call_event
from ..progress import Progress
from ..records import JobRecord
from ..redact import sanitize_message
from ..resume import Continuation, ResumePoint, ResumeRefused
from ..retry import Attempts, Backoff
from ..state import FileRecord, State
from .planning import iso
from .readahead import READ_AHEAD_FROM, ReadAhead
from .recovery import cancellable
from .resuming import Resumables, can_resume
from .seat import WorkerSeat

log = logging.getLogger("portshift.run")
T = TypeVar("T")


class ArtifactSteps:
    """Mixed into :class:`~portshift.pipeline.transfer.Transfer`: the steps of one artifact."""

    cfg: JobConfig
    state: State
    job: JobRecord
    sink: Sink
    info: JobInfo
    progress: Progress
    cancel: threading.Event
    payload_prefix: str
    seat: WorkerSeat
    retry_base: float
    resumables: Resumables
    resume_from: int  #: uploads of at least this size are offered a resume point (-1: none)

    def _add_file(self, job_id: str, f: FileRecord) -> None:  # Transfer: with the recording's outcome
        self.state.add_file(job_id, f)

    # --- one artifact ------------------------------------------------------------------------
    def _artifact(self, rec: Recording, artifact: Artifact) -> None:
        if len(self.resumables):
            left = self.resumables.take(self.state, self.job.id, self.seat.id, rec.id, artifact.name)
            if left is not None and self._continue(rec, artifact, *left):
                return
        opened = artifact.open()
        ahead: ReadAhead | None = None
        stream: HashingStream | None = None
        try:
            ext = opened.extension or artifact.extension
            rel = self._rel(rec, artifact, ext)
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
            if self._may_resume(declared):
                stream.resume_info = {"recording": rec.id, "artifact": artifact.name, "ext": ext, "validator": opened.validator}
            stream.observe(self.progress.add_bytes)
            result = self.sink.put(f"{self.job.export_root}/{rel}", stream, declared)
            got, digest = self._checked(rel, stream, declared, artifact.sha256, result)
        finally:
            _settle(stream)
            _close(opened.close, ahead, self.cancel.is_set())
        self._record(rec, artifact, rel, got, digest, content_type, result)

    def _continue(self, rec: Recording, artifact: Artifact, key: str, data: dict[str, str], point: ResumePoint) -> bool:
        """Finish the upload a gone worker left mid-file (see :mod:`.resuming`); ``False`` when it
        cannot be continued (said once; the old upload is aborted): the caller sends it again."""
        rel = self._rel(rec, artifact, point.extension)
        held: dict[str, Any] = {}
        size = f"{point.size} bytes" if point.size is not None else "its bytes"

        def open_rest() -> HashingStream:
            if f"{self.job.export_root}/{rel}" != key:
                raise ResumeRefused("its key is not the one this job builds now")
            if artifact.open_from is None:
                raise ResumeRefused("the source cannot send part of a file")
            held["opened"] = opened = artifact.open_from(point.offset, point.validator)
            if point.size is not None and opened.size is not None and opened.size != point.size:
                raise ResumeRefused(f"its size at the source is now {opened.size} bytes")
            if point.validator and opened.validator and opened.validator != point.validator:
                raise ResumeRefused("it changed at the source")
            held["ahead"] = ahead = ReadAhead(opened.chunks, self.cancel, start_after=0, readinto=opened.readinto)
            held["type"] = opened.content_type or artifact.content_type
            stream = HashingStream(
                ahead,
                cancel=self.cancel,
                expect_size=point.size if point.size is not None else opened.size,
                expect_sha256=artifact.sha256,
                content_type=held["type"],
                resume=(point.offset, point.sha256_state),
            )
            stream.resume_info = {
                "recording": rec.id,
                "artifact": artifact.name,
                "ext": point.extension,
                "validator": point.validator or opened.validator,
            }
            stream.observe(self.progress.add_bytes)
            held["stream"] = stream
            return stream

        cont = Continuation(key=key, data=data, offset=point.offset, size=point.size, _open=open_rest)
        try:
            result = self.sink.resume(key, cont, point.size)
            stream = held.get("stream")
            if stream is None:
                raise IntegrityError(f"{rel}: the destination continued an upload without reading the rest of it")
            got, digest = self._checked(rel, stream, point.size, artifact.sha256, result)
        except ResumeRefused as e:
            log.warning(
                "%s: the upload a stopped worker left at byte %d of %s cannot be continued (%s); sending it again from byte 0",
                rel,
                point.offset,
                size,
                e.message,
            )
            self._abandon(key, data)
            return False
        except Exception:
            # failed otherwise (the store or the source out of reach): the retry tries to continue
            # it again, unless the sink ended the entry (it aborted the upload)
            self.resumables.add([(key, data)])
            raise
        finally:
            opened = held.get("opened")
            _settle(held.get("stream"))
            _close(opened.close if opened is not None else None, held.get("ahead"), self.cancel.is_set())
        log.info("%s: continued the upload a stopped worker left at byte %d of %s", rel, point.offset, size)
        self._record(rec, artifact, rel, got, digest, held["type"], result)
        return True

    def _abandon(self, key: str, data: dict[str, str]) -> None:
        """Abort an upload that cannot be continued (the sink's crash clean-up), then forget it."""
        try:
            cancellable(lambda: self.sink.recover([(key, data)]), self.cancel, "aborting an upload left mid-file")
        except Interrupted:
            raise
        except Exception as e:  # noqa: BLE001 - left to the store's lifecycle rule, as any failed abort
            log.warning("could not abort the upload a stopped worker left (%s)", sanitize_message(str(e)))
        self.state.journal_end(self.job.id, key)

    def _rel(self, rec: Recording, artifact: Artifact, ext: str) -> str:
        return self.payload_prefix + build_key(
            self.cfg.job.key_template,
            recording_id=rec.id,
            artifact=artifact.name,
            ext=ext,
            started_at=rec.started_at,
            fields=rec.fields,
            source=self.cfg.source_type,
        )

    def _may_resume(self, declared: int | None) -> bool:
        """Whether this upload is offered a resume point (see :meth:`HashingStream.keep_states`)."""
        above = self.resume_from
        return above >= 0 and (declared is None or declared >= above) and can_resume(self.sink)

    def _record(
        self, rec: Recording, artifact: Artifact, rel: str, got: int, digest: str, content_type: str | None, result: Any
    ) -> None:
        self._add_file(
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


def _settle(stream: HashingStream | None) -> None:
    """End the stream's hashing thread, if the sink's reads started one (its error, if any, was
    raised to the sink already)."""
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.settle()


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
