"""One artifact of a recording: open it at the source, stream it through a
:class:`HashingStream` (with read-ahead for big ones) into the sink, check size and SHA-256
against what the source declared and the sink confirmed, and record the file."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..api import Artifact, JobInfo, Recording, Sink
from ..config import JobConfig
from ..errors import IntegrityError
from ..events import FileExported
from ..hashing import HashingStream
from ..keys import build_key
from ..plugins import call_event
from ..progress import Progress
from ..records import JobRecord
from ..state import FileRecord, State
from .planning import iso
from .readahead import READ_AHEAD_FROM, ReadAhead

log = logging.getLogger("portshift.run")


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

    def _add_file(self, job_id: str, f: FileRecord) -> None:  # Transfer: with the recording's outcome
        self.state.add_file(job_id, f)

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
