"""The export pipeline: list, skip what is done, stream each artifact through a
:class:`HashingStream` into the sink, check, record, and write the manifest last.

    source.recordings(window) -> skip if done -> source.artifacts(rec) -> HashingStream
    -> sink.put(key, stream) -> check size/hash -> state: file done -> ... -> manifest writers
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .api import Artifact, JobInfo, ManifestEntry, Recording, Sink, Source, StoredFile, Window
from .config import DEFAULT_SINCE, JobConfig
from .errors import (
    ConfigError,
    ExitCode,
    FatalError,
    IntegrityError,
    Interrupted,
    PortshiftError,
    SkipRecording,
)
from .events import FileExported
from .hashing import HashingStream
from .keys import build_key
from .manifest import SIGNATURE_SUFFIX
from .plugins import call_event
from .progress import Progress
from .records import JobStatus
from .redact import sanitize_message
from .retry import Backoff
from .state import FileRecord, State, now_iso

log = logging.getLogger("portshift.run")

#: artifacts declared at least this large are read ahead from their first byte; those of unknown
#: size once this much has passed (most are small documents, which a thread would only slow down)
READ_AHEAD_FROM = 8 * 1024 * 1024
READ_AHEAD_CHUNKS = 4  #: chunks held ready for the sink, at most ...
READ_AHEAD_BYTES = 16 * 1024 * 1024  #: ... and at most this many bytes (at least one chunk)
_POLL = 0.2  #: seconds between checks of the cancel event while waiting


class _ReadAhead:
    """The source's chunks, received by a thread of their own while the sink hashes and writes.

    Receiving (TLS decryption), SHA-256 and writing each release the GIL, so they overlap instead
    of running one after another in the sink's thread. The thread is at most
    ``READ_AHEAD_CHUNKS`` chunks (and ``READ_AHEAD_BYTES``) ahead. An exception in the source
    reaches the reader unchanged, in order, after the chunks before it. ``close()`` (always
    called) stops the thread: it finishes the chunk it is receiving, closes the source's iterator
    in its own thread (a generator cannot be closed from another thread while it runs) and ends.
    A cancel (SIGINT/SIGTERM) is noticed within ``_POLL`` seconds even while the source is silent.
    """

    def __init__(self, chunks: Iterable[bytes], cancel: threading.Event, *, start_after: int = 0) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._cancel = cancel
        self._start_after = start_after  #: bytes passed through inline before the thread starts
        self._passed = 0
        self._cond = threading.Condition()
        self._ready: list[bytes] = []  #: FIFO, at most READ_AHEAD_CHUNKS long
        self._ready_bytes = 0
        self._end: BaseException | None = None  #: StopIteration, or what the source raised
        self._stop = False
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._thread is None:
            if self._stop:
                raise StopIteration
            if self._passed < self._start_after:
                chunk = next(self._it)
                self._passed += len(chunk)
                return chunk
            self._thread = threading.Thread(
                target=self._produce, name=f"{threading.current_thread().name}-read-ahead", daemon=True
            )
            self._thread.start()
        with self._cond:
            while not self._ready:
                if self._stop:
                    raise StopIteration
                if self._end is not None:
                    end = self._end
                    if isinstance(end, StopIteration):
                        raise StopIteration
                    raise end
                if self._cancel.is_set():
                    raise Interrupted("interrupted while transferring")
                self._cond.wait(_POLL)
            chunk = self._ready.pop(0)
            self._ready_bytes -= len(chunk)
            self._cond.notify_all()
            return chunk

    def _produce(self) -> None:
        it = self._it
        try:
            while True:
                with self._cond:
                    while (
                        not self._stop
                        and self._ready
                        and (len(self._ready) >= READ_AHEAD_CHUNKS or self._ready_bytes >= READ_AHEAD_BYTES)
                    ):
                        self._cond.wait()
                    if self._stop:
                        return
                if self._cancel.is_set():
                    return  # the reader raises Interrupted
                try:
                    chunk = next(it)
                except BaseException as e:  # noqa: BLE001 - handed to the reader, in order
                    with self._cond:
                        self._end = e
                        self._cond.notify_all()
                    return
                if not chunk:
                    continue
                with self._cond:
                    self._ready.append(chunk)
                    self._ready_bytes += len(chunk)
                    self._cond.notify_all()
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    log.debug("closing an artifact's chunks failed", exc_info=True)

    def stop(self) -> None:
        """Ask the thread to end and drop what it read ahead (does not wait)."""
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._ready_bytes = 0
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the thread to end; True when it has (or never started)."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def close_inline(self) -> None:
        """Close the source's iterator when no thread ever took it over."""
        if self._thread is None:
            close = getattr(self._it, "close", None)
            if close is not None:
                close()


@dataclass
class RunRequest:
    since: datetime | None = None
    since_last: bool = False
    until: datetime | None = None
    transfers: int | None = None
    dry_run: bool = False
    new: bool = False


@dataclass
class RunResult:
    job_id: str | None
    status: str
    exit_code: int
    export_root: str = ""
    files: int = 0
    bytes: int = 0
    already_done: int = 0
    exported_now: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    manifest_key: str | None = None
    manifest_sha256: str | None = None
    message: str = ""
    resumed: bool = False


def job_key(cfg: JobConfig, source: Source, sink: Sink) -> str:
    """What identifies "the same job": source, sink, their non-secret options, the key layout."""
    doc = {
        "source": [cfg.source_type, source.location(), cfg.source_options.model_dump(mode="json")],
        "sink": [cfg.sink_type, sink.location(), cfg.sink_options.model_dump(mode="json")],
        "key_template": cfg.job.key_template,
        "manifest": cfg.job.manifest,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(started_iso: str) -> str:
    try:
        started = datetime.fromisoformat(started_iso)
    except ValueError:
        return "earlier"
    secs = max(0, int((datetime.now(timezone.utc) - started).total_seconds()))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    if secs < 172800:
        return f"{secs // 3600}h ago"
    return f"{secs // 86400}d ago"


def _storable(recording_id: str) -> str:
    """The id as the state DB can store it: a lone surrogate (possible in JSON) is written as its
    escape sequence, deterministically, so that resume still recognises the recording."""
    try:
        recording_id.encode("utf-8")
        return recording_id
    except UnicodeEncodeError:
        return recording_id.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


class Runner:
    """Runs one job. Create with a validated :class:`JobConfig` and an open :class:`State`."""

    def __init__(
        self,
        cfg: JobConfig,
        state: State,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        retry_base: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.progress = progress or Progress(enabled=False)
        self.cancel = cancel or threading.Event()
        self.retry_base = retry_base
        self._fatal: BaseException | None = None
        self._fatal_lock = threading.Lock()
        prefixes = {cls.payload_prefix for _, cls, _ in cfg.writers if getattr(cls, "payload_prefix", "")}
        if len(prefixes) > 1:
            raise ConfigError(f"manifest writers disagree on the payload folder: {', '.join(sorted(prefixes))}")
        self._payload_prefix = prefixes.pop() if prefixes else ""
        self._resuming = False

    # --- window and job selection -----------------------------------------------------------
    def _window(self, req: RunRequest, key: str) -> tuple[Window, bool]:
        explicit = req.since is not None or req.since_last or req.until is not None
        until = req.until
        if until is None and self.cfg.job.until is not None:
            from .config import parse_when

            until = parse_when(self.cfg.job.until, "[job] until")
        if until is None:
            until = datetime.now(timezone.utc).replace(microsecond=0)
        since = req.since
        if req.since_last:
            last = self.state.last_complete_job(key)
            if last is None:
                raise ConfigError(
                    "--since last: no completed job of this job file yet",
                    hint="run it once without --since last, or give a date",
                )
            since = datetime.fromisoformat(last.window_end.replace("Z", "+00:00"))
        if since is None and self.cfg.job.since is not None:
            from .config import parse_when

            since = parse_when(self.cfg.job.since, "[job] since")
        if since is None:
            since = DEFAULT_SINCE
        if since >= until:
            raise ConfigError(f"the export window is empty: since {_iso(since)} is not before until {_iso(until)}")
        return Window(since, until), explicit

    # --- the run ----------------------------------------------------------------------------
    def run(self, req: RunRequest) -> RunResult:
        cfg = self.cfg
        source: Source = cfg.source_cls(cfg.source_options)
        source.cancel = self.cancel
        sink: Sink = cfg.sink_cls(cfg.sink_options)
        sink.cancel = self.cancel
        try:
            return self._run(req, source, sink)
        finally:
            for closer in (source.close, sink.close):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - closing must not mask the result
                    log.debug("close failed", exc_info=True)

    def _run(self, req: RunRequest, source: Source, sink: Sink) -> RunResult:
        cfg = self.cfg
        key = job_key(cfg, source, sink)
        if not req.dry_run:
            self.state.lock(key)
        window, explicit = self._window(req, key)
        transfers = req.transfers or cfg.job.transfers

        resumed = False
        unfinished = self.state.unfinished_job(key)
        if unfinished and unfinished.status is JobStatus.ABANDONED:
            unfinished = None
        if req.new and unfinished and not req.dry_run:
            self._recover(self.state.journal(unfinished.id), sink)  # its in-flight uploads too
            self.state.abandon_unfinished(key)
            log.info("starting over: job %s abandoned (--new)", unfinished.id)
            unfinished = None
        if unfinished:
            same_window = unfinished.window_start == _iso(window.start) and unfinished.window_end == _iso(window.end)
            if explicit and not same_window:
                raise ConfigError(
                    f"job {unfinished.id} of this job file is unfinished "
                    f"(window {unfinished.window_start} .. {unfinished.window_end})",
                    hint="re-run without --since/--until to finish it, or add --new to start over",
                )
            window = Window(
                datetime.fromisoformat(unfinished.window_start.replace("Z", "+00:00")),
                datetime.fromisoformat(unfinished.window_end.replace("Z", "+00:00")),
            )
            resumed = True

        if not unfinished and not explicit and not req.new:
            last = self.state.last_complete_job(key)
            if last is not None:
                return RunResult(
                    job_id=last.id,
                    status="up-to-date",
                    exit_code=ExitCode.OK,
                    export_root=last.export_root,
                    manifest_key=last.manifest_key,
                    manifest_sha256=last.manifest_sha256,
                    message=(
                        f"job {last.id} of this job file is already complete "
                        f"({last.window_start} .. {last.window_end}); nothing to do. "
                        "Use --since last to export what is newer, or --new for a fresh full export"
                    ),
                )

        done: set[str] = self.state.done_recordings(unfinished.id) if unfinished else set()

        if req.dry_run:
            return self._dry_run(source, window, done, unfinished)

        if unfinished:
            job_id = unfinished.id
            export_root = unfinished.export_root
            self.state.update_job(job_id, status="running", finished_at=None, error=None)
            log.info(
                "skipping %d recordings already exported (job %s, started %s); --new to start over",
                len(done),
                job_id,
                _age(unfinished.started_at),
            )
        else:
            from .state import new_job_id

            job_id = new_job_id()
            export_root = job_id
            self.state.create_job(
                id=job_id,
                job_key=key,
                fingerprint=hashlib.sha256(f"{key}|{_iso(window.start)}|{_iso(window.end)}".encode()).hexdigest(),
                config_path=str(cfg.path) if cfg.path else None,
                source_type=cfg.source_type,
                source_location=source.location(),
                sink_type=cfg.sink_type,
                sink_location=sink.location(),
                window_start=_iso(window.start),
                window_end=_iso(window.end),
                export_root=export_root,
            )
            log.info(
                "job %s: exporting %s .. %s into %s/%s",
                job_id,
                _iso(window.start),
                _iso(window.end),
                sink.location(),
                export_root,
            )

        info = self._job_info(job_id)
        self._resuming = resumed
        journal = self.state.journal(job_id)
        sink.journal = journal
        self._recover(journal, sink)
        call_event("job_started", job=info, resumed=resumed)
        status, error = self._transfer(job_id, export_root, source, sink, window, done, transfers, info)

        result = RunResult(job_id=job_id, status=status, exit_code=ExitCode.OK, export_root=export_root, resumed=resumed)
        result.already_done = len(done)
        if status == "complete":
            try:
                key_, digest = self._write_manifests(job_id, export_root, sink)
                result.manifest_key, result.manifest_sha256 = key_, digest
            except PortshiftError as e:
                status, error = "failed", f"writing the manifest: {sanitize_message(str(e))}"
            except Exception as e:  # noqa: BLE001
                status, error = "failed", f"writing the manifest: {sanitize_message(f'{type(e).__name__}: {e}')}"
        files, nbytes = self.state.totals(job_id)
        counts = self.state.recording_counts(job_id)
        self.state.update_job(
            job_id,
            status=status,
            finished_at=now_iso(),
            file_count=files,
            byte_count=nbytes,
            error=error,
            skipped_count=counts.get("skipped", 0),
            failed_count=counts.get("failed", 0),
        )
        result.status = status
        result.files, result.bytes = files, nbytes
        problems = self.state.problems(job_id)
        result.skipped = [p.as_dict() for p in problems if p.status == "skipped"]
        result.failed = [p.as_dict() for p in problems if p.status == "failed"]
        result.message = error or ""
        result.exit_code = {
            "complete": ExitCode.OK,
            "partial": ExitCode.PARTIAL,
            "interrupted": ExitCode.INTERRUPTED,
        }.get(status, ExitCode.FATAL)
        call_event("job_finished", job=self._job_info(job_id), manifest_sha256=result.manifest_sha256)
        return result

    def _recover(self, journal: Any, sink: Sink) -> None:
        """Let the sink clean up what earlier runs left in flight (e.g. abort multipart uploads)."""
        pending = journal.pending()
        if not pending:
            return
        log.info("cleaning up %d operations a previous run of this job left unfinished", len(pending))
        try:
            sink.recover(pending)
        except Exception as e:  # noqa: BLE001 - kept for the next run; the export goes on
            log.warning("cleaning up after a previous run failed (%s); will retry next run", sanitize_message(str(e)))
            return
        remaining = {k for k, _ in journal.pending()}
        for key, _ in pending:
            if key in remaining:
                journal.end(key)

    def _dry_run(self, source: Source, window: Window, done: set[str], unfinished: dict[str, Any] | None) -> RunResult:
        total = 0
        todo = 0
        for rec in source.recordings(window):
            total += 1
            if rec.id not in done:
                todo += 1
        msg = f"dry run: {total} recordings in {_iso(window.start)} .. {_iso(window.end)}, {todo} to export"
        if unfinished:
            msg += f" ({len(done)} already exported by job {unfinished.id})"
        return RunResult(job_id=None, status="dry-run", exit_code=ExitCode.OK, message=msg)

    def _job_info(self, job_id: str) -> JobInfo:
        row = self.state.job(job_id)
        assert row is not None
        files, nbytes = self.state.totals(job_id)
        return JobInfo(
            id=job_id,
            window_start=row.window_start,
            window_end=row.window_end,
            started_at=row.started_at,
            finished_at=row.finished_at,
            source=f"{row.source_type} {row.source_location}".strip(),
            sink=f"{row.sink_type} {row.sink_location}".strip(),
            export_root=row.export_root,
            file_count=files,
            total_bytes=nbytes,
            tool_version=__version__,
            status=row.status.value,
        )

    # --- transfers --------------------------------------------------------------------------
    def _escaped(self, fut: Future[None]) -> None:
        """Anything that escaped a worker (SystemExit, a bug) stops the job: a recording must end
        done, skipped or failed, never silently nothing."""
        if fut.cancelled():
            return
        e = fut.exception()
        if e is not None:
            self._set_fatal(e)

    def _set_fatal(self, e: BaseException) -> None:
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = e
        self.cancel.set()

    def _transfer(
        self,
        job_id: str,
        export_root: str,
        source: Source,
        sink: Sink,
        window: Window,
        done: set[str],
        transfers: int,
        info: JobInfo,
    ) -> tuple[str, str | None]:
        slots = threading.BoundedSemaphore(transfers * 2)
        futures: set[Future[None]] = set()
        listing_error: str | None = None
        self.progress.start()
        with ThreadPoolExecutor(max_workers=transfers, thread_name_prefix="transfer") as pool:
            try:
                for rec in source.recordings(window):
                    if self.cancel.is_set():
                        break
                    self.progress.listed()
                    rec.id = _storable(rec.id)
                    if rec.id in done:
                        self.progress.recording_finished("already")
                        continue
                    slots.acquire()
                    if self.cancel.is_set():
                        slots.release()
                        break
                    fut = pool.submit(self._recording, job_id, export_root, source, sink, rec, info)
                    futures.add(fut)
                    fut.add_done_callback(lambda f: (slots.release(), futures.discard(f), self._escaped(f)))
            except FatalError as e:
                self._set_fatal(e)
            except Interrupted:
                self.cancel.set()
            except PortshiftError as e:
                listing_error = f"listing recordings failed: {sanitize_message(str(e))}"
                log.error("%s", listing_error)
            except Exception as e:  # noqa: BLE001 - a plugin bug must not lose state
                listing_error = f"listing recordings failed: {sanitize_message(f'{type(e).__name__}: {e}')}"
                log.error("%s", listing_error)
            self.progress.listing_done()
        self.progress.stop()
        counts = self.state.recording_counts(job_id)
        if self._fatal is not None and not isinstance(self._fatal, Exception):
            raise self._fatal  # SystemExit/KeyboardInterrupt in a worker: end the process as asked
        if self._fatal is not None:
            return "failed", sanitize_message(str(self._fatal))
        if self.cancel.is_set():
            return "interrupted", "interrupted; re-run to resume"
        if listing_error:
            return "failed", listing_error
        if counts.get("failed", 0):
            return "partial", f"{counts['failed']} recordings failed; re-run to retry them"
        return "complete", None

    def _recording(self, job_id: str, export_root: str, source: Source, sink: Sink, rec: Recording, info: JobInfo) -> None:
        if self.cancel.is_set():
            return
        try:
            artifacts = self._with_retries(lambda: list(source.artifacts(rec)), f"recording {rec.id}")
            already = self.state.done_artifacts(job_id, rec.id) if self._resuming else set()
            for artifact in artifacts:
                if self.cancel.is_set():
                    return
                if artifact.name in already:
                    continue
                self._with_retries(
                    lambda a=artifact: self._artifact(job_id, export_root, sink, rec, a, info),
                    f"{rec.id}/{artifact.name}",
                )
        except SkipRecording as e:
            self.state.set_recording(job_id, rec.id, "skipped", e.reason, sanitize_message(str(e)))
            self.progress.recording_finished("skipped")
            log.warning("skipped recording %s: %s", rec.id, sanitize_message(str(e)))
            return
        except FatalError as e:
            self._set_fatal(e)
            return
        except Interrupted:
            return
        except Exception as e:  # noqa: BLE001 - recorded as failed, the job goes on
            if self.cancel.is_set() and not isinstance(e, PortshiftError):
                return
            msg = sanitize_message(str(e) if isinstance(e, PortshiftError) else f"{type(e).__name__}: {e}")
            self.state.set_recording(job_id, rec.id, "failed", type(e).__name__, msg)
            self.progress.recording_finished("failed")
            log.error("recording %s failed: %s", rec.id, msg)
            return
        self.state.set_recording(job_id, rec.id, "done")
        self.progress.recording_finished("done")

    def _with_retries(self, fn: Any, what: str) -> Any:
        backoff = Backoff(base=self.retry_base, cap=max(30.0, self.retry_base), attempts=self.cfg.job.retries + 1)
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except (SkipRecording, FatalError, ConfigError, Interrupted):
                raise
            except Exception as e:  # noqa: BLE001
                retryable = e.retryable if isinstance(e, PortshiftError) else True
                if self.cancel.is_set() or not retryable or attempt >= backoff.attempts:
                    raise
                delay = backoff.delay(attempt)
                log.warning(
                    "%s: attempt %d failed (%s); retrying in %.1fs",
                    what,
                    attempt,
                    sanitize_message(str(e) if isinstance(e, PortshiftError) else type(e).__name__),
                    delay,
                )
                if self.cancel.wait(delay):
                    raise Interrupted("interrupted") from None

    def _artifact(self, job_id: str, export_root: str, sink: Sink, rec: Recording, artifact: Artifact, info: JobInfo) -> None:
        opened = artifact.open()
        ahead: _ReadAhead | None = None
        stopped = True
        try:
            ext = opened.extension or artifact.extension
            rel = self._payload_prefix + build_key(
                self.cfg.job.key_template,
                recording_id=rec.id,
                artifact=artifact.name,
                ext=ext,
                started_at=rec.started_at,
                fields=rec.fields,
                source=self.cfg.source_type,
            )
            declared = opened.size if opened.size is not None else artifact.size
            chunks: Iterable[bytes] = opened.chunks
            if declared is None or declared >= READ_AHEAD_FROM:
                ahead = _ReadAhead(opened.chunks, self.cancel, start_after=0 if declared is not None else READ_AHEAD_FROM)
                chunks = ahead
            stream = HashingStream(
                chunks,
                cancel=self.cancel,
                expect_size=declared,
                expect_sha256=artifact.sha256,
                content_type=opened.content_type or artifact.content_type,
            )
            stream.observe(self.progress.add_bytes)
            result = sink.put(f"{export_root}/{rel}", stream, declared)
            if not stream.finished:
                raise IntegrityError(f"{rel}: the sink stopped reading before the end of the stream")
            got = stream.bytes_read
            if declared is not None and got != declared:
                raise IntegrityError(f"{rel}: {got} bytes received, {declared} declared by the source")
            digest = stream.sha256_hex()
            if artifact.sha256 and artifact.sha256.lower() != digest:
                raise IntegrityError(f"{rel}: SHA-256 differs from the one the source declared")
            if result.size != got:
                raise IntegrityError(f"{rel}: the sink stored {result.size} bytes, {got} were sent")
            confirmed = result.checksums.get("sha256")
            if confirmed and confirmed.lower() != digest:
                raise IntegrityError(f"{rel}: the sink confirmed a different SHA-256")
        finally:
            if ahead is not None:
                ahead.stop()
                # a thread still receiving gets its chunk (or its source's error) and ends; a
                # source that is silent is woken by its close below
                stopped = ahead.join(0.5)
                if stopped:
                    ahead.close_inline()
            if opened.close:
                try:
                    opened.close()
                except Exception:  # noqa: BLE001
                    log.debug("closing an artifact failed", exc_info=True)
            if ahead is not None and not stopped and not ahead.join(10.0):
                log.debug("a read-ahead thread is still waiting for its source; it ends at the source's read timeout")
        self.state.add_file(
            job_id,
            FileRecord(
                key=rel,
                size=got,
                sha256=digest,
                recording_id=rec.id,
                artifact=artifact.name,
                content_type=opened.content_type or artifact.content_type,
                recorded_at=_iso(rec.started_at) if rec.started_at else None,
                verified=result.verified,
                provider_checksums=result.checksums,
            ),
        )
        self.progress.file_done(got)
        call_event(
            "file_exported",
            job=info,
            file=FileExported(key=rel, size=got, sha256=digest, recording_id=rec.id, artifact=artifact.name),
        )

    # --- manifest ---------------------------------------------------------------------------
    def _write_manifests(self, job_id: str, export_root: str, sink: Sink) -> tuple[str, str]:
        """Run the manifest writers, the primary (first-named) one last, so that its manifest
        also lists the files the other writers stored (BagIt tag files): ``sha256sum -c`` then
        covers everything under the export root but the manifest and its signature."""
        files, nbytes = self.state.totals(job_id)
        # The manifest's "finished" time is when the last file was recorded, not the time of this
        # attempt: a manifest rewritten after a failed or killed attempt is then byte for byte the
        # same, so a store that refuses to replace an object (GCS with objectCreator, or the GCS
        # sink's ifGenerationMatch=0) accepts it as already there.
        job = self.state.job(job_id)
        finished = self.state.last_file_done_at(job_id) or (job.started_at if job else None) or now_iso()
        self.state.update_job(job_id, finished_at=finished, file_count=files, byte_count=nbytes)
        self.state.remove_manifest_files(job_id)  # a manifest attempt that crashed is rewritten
        info = self._job_info(job_id)
        stored: dict[str, StoredFile] = {}
        signed: dict[str, bytearray] = {}

        def content() -> Iterator[ManifestEntry]:
            for row in self.state.files(job_id):
                yield ManifestEntry(
                    path=row["key"],
                    size=row["size"],
                    sha256=row["sha256"],
                    recording_id=row["recording_id"],
                    artifact=row["artifact"],
                    content_type=row["content_type"],
                    recorded_at=row["recorded_at"],
                    verified=row["verified"] or "",
                )

        def entries_for(earlier: list[StoredFile]) -> Iterator[ManifestEntry]:
            extra = [
                ManifestEntry(path=f.path, size=f.size, sha256=f.sha256, recording_id="", artifact="manifest")
                for f in sorted(earlier, key=lambda f: f.path)
            ]
            return heapq.merge(content(), extra, key=lambda e: e.path)

        def store(path: str, chunks: Iterable[bytes]) -> StoredFile:
            stream = HashingStream(chunks)
            if self.cfg.signing_key is not None:
                signed[path] = bytearray()
                stream.observe(signed[path].extend)
            result = sink.put(f"{export_root}/{path}", stream, None)
            if not stream.finished or result.size != stream.bytes_read:
                raise IntegrityError(f"{path}: the sink did not store the whole manifest")
            sf = StoredFile(path=path, size=stream.bytes_read, sha256=stream.sha256_hex())
            self.state.add_file(
                job_id,
                FileRecord(
                    key=path,
                    size=sf.size,
                    sha256=sf.sha256,
                    recording_id="",
                    artifact="manifest",
                    kind="manifest",
                    verified=result.verified,
                    provider_checksums=result.checksums,
                ),
            )
            stored[path] = sf
            return sf

        primary_key = primary_sha = ""
        for n, (_name, cls, options) in reversed(list(enumerate(self.cfg.writers))):
            writer = cls(options)
            earlier = list(stored.values())
            primary = writer.write(info, lambda earlier=earlier: entries_for(earlier), store)
            if n == 0:
                primary_key, primary_sha = f"{export_root}/{primary}", stored[primary].sha256
                if self.cfg.signing_key is not None:
                    from .signing import sign

                    signature = sign(self.cfg.signing_key, bytes(signed[primary]))
                    store(primary + SIGNATURE_SUFFIX, iter([signature]))
            signed.clear()
        self.state.update_job(job_id, manifest_key=primary_key, manifest_sha256=primary_sha)
        return primary_key, primary_sha
