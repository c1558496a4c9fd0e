"""One run of a job file, top to bottom: open the plugins, check that source and sink answer,
decide which job and window (:mod:`.planning`), clean up what a killed run left in flight,
transfer (:mod:`.transfer`), write the manifests (:mod:`.manifests`), record how it ended."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

from .. import __version__
from ..api import JobInfo, Sink, Source
from ..config import JobConfig
from ..errors import ConfigError, Interrupted, LockedError, PortshiftError, RecordingPending
from ..logs import set_log_context
from ..manifest import build_inventory
from ..plugins import call_event
from ..progress import Progress
from ..records import JobRecord, JobStatus, RecordingStatus
from ..redact import sanitize_message
from ..resume import resume_above
from ..state import State, new_job_id, now_iso
from ..state.claims import finishing_lock, planning_lock
from .collector import fewer_collections
from .manifests import ManifestRun
from .planning import Plan, iso, plan_job, run_command
from .recovery import cancellable, cancellable_all, recover_orphans
from .result import EXIT_CODES, RunRequest, RunResult
from .seat import WorkerSeat
from .shared_rate import share_source_rate
from .transfer import Transfer

log = logging.getLogger("portshift.run")
T = TypeVar("T")


def job_key(cfg: JobConfig, source: Source, sink: Sink) -> str:
    """What identifies "the same job": source, sink, their non-secret options, the key layout."""
    doc = {
        "source": [cfg.source_type, source.location(), cfg.source_options.model_dump(mode="json")],
        "sink": [cfg.sink_type, sink.location(), cfg.sink_options.model_dump(mode="json")],
        "key_template": cfg.job.key_template,
        "manifest": cfg.job.manifest,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class Runner:
    """Runs one job. Create with a validated :class:`JobConfig` and an open :class:`State`
    (``None`` only for a dry run with no state file yet: a dry run writes nothing)."""

    def __init__(
        self,
        cfg: JobConfig,
        state: State | None,
        *,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        retry_base: float = 1.0,
        on_started: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.on_started = on_started  #: called with the job once this worker has its seat
        self.cfg = cfg
        self.state = state
        self.progress = progress or Progress(enabled=False)
        self.cancel = cancel or threading.Event()
        self.retry_base = retry_base
        prefixes = {cls.payload_prefix for _, cls, _ in cfg.writers if getattr(cls, "payload_prefix", "")}
        if len(prefixes) > 1:
            raise ConfigError(f"manifest writers disagree on the payload folder: {', '.join(sorted(prefixes))}")
        self._payload_prefix = prefixes.pop() if prefixes else ""

    def run(self, req: RunRequest) -> RunResult:
        started = time.monotonic()
        source: Source = self.cfg.source_cls(self.cfg.source_options)
        sink: Sink = self.cfg.sink_cls(self.cfg.sink_options)
        source.cancel = sink.cancel = self.cancel
        source.rate_memory, self.progress.source_status = self.state, source.status
        try:
            result = self._run(req, source, sink)
            result.source_status = source.status()
        finally:
            for closer in (source.close, sink.close):
                try:
                    closer()
                except Exception:  # noqa: BLE001 - closing must not mask the result
                    log.debug("close failed", exc_info=True)
        result.duration = time.monotonic() - started
        return result

    def _run(self, req: RunRequest, source: Source, sink: Sink) -> RunResult:
        key = job_key(self.cfg, source, sink)
        if req.dry_run:
            return self._dry_run(plan_job(self.cfg, self.state, req, key), source)
        state = self.state
        if state is None:
            raise ConfigError("a run needs a state file")
        if req.worker:
            if not state.try_lock(key, shared=True):
                raise LockedError(
                    "a `portshift run` of this job is in progress on its own",
                    hint="wait for it to finish, or run every process as `portshift worker`",
                )
        else:
            state.lock(key)
        plan = plan_job(self.cfg, state, req, key)  # a window refused or nothing to do: said before any request
        if plan.up_to_date is not None:
            return self._up_to_date(plan.up_to_date)
        # workers share one request budget per job file from their first request (their checks
        # included: several starting together must not burst); a lone run's budget is its job's
        budget = f"source:{key}" if req.worker else ""
        if budget:
            share_source_rate(source, state, budget)
        self._check_reachable(source, sink)
        with self._planning(key):
            plan = plan_job(self.cfg, state, req, key)  # again: another worker may have started the job meanwhile
            if plan.up_to_date is not None:
                return self._up_to_date(plan.up_to_date)
            if plan.abandon is not None:
                self._recover(plan.abandon.id, sink)  # its in-flight uploads too
                state.abandon_unfinished(key)
                log.info("starting over: job %s abandoned (--new)", plan.abandon.id)
            job, seat = self._start(plan, source, sink)
        try:
            if not budget:  # a lone run: its job's budget, now that the job is known
                share_source_rate(source, state, f"source:{job.id}")
            if self.on_started is not None:
                self.on_started(job)
            set_log_context(job=job.id, phase="transfer")
            result = RunResult(job_id=job.id, status="", exit_code=0, export_root=job.export_root)
            result.resumed = plan.resume is not None
            status, error, exit_code = self._export(job, plan, source, sink, req, result, seat)
            self._finish(job, status, error, exit_code, result, seat)
        finally:
            seat.leave()
        files = result.files
        if status is JobStatus.COMPLETE and not files and not req.allow_empty:
            result.status, result.export_root = "nothing-new", ""
            result.message = f"nothing new in {job.window_start} .. {job.window_end}: no export written" + (
                " (--allow-empty writes an empty one)" if not result.pending and not result.skipped else ""
            )
        call_event("job_finished", job=self._job_info(job.id), manifest_sha256=result.manifest_sha256)
        set_log_context(phase="finished")
        return result

    def _export(
        self, job: JobRecord, plan: Plan, source: Source, sink: Sink, req: RunRequest, result: RunResult, seat: WorkerSeat
    ) -> tuple[JobStatus, str | None, int]:
        """Clean up, transfer, write the manifests: how the job ended, a one-line error, and the
        exit code (a fatal error's own, e.g. 2 for a residency refusal, else the status's)."""
        assert self.state is not None
        phase = ""
        try:
            info = self._job_info(job.id)
            resumable = self._recover(job.id, sink, seat, resumable=resume_above() >= 0)  # off: none continued
            call_event("job_started", job=info, resumed=plan.resume is not None)
            transfers = req.transfers or self.cfg.job.transfers
            log.debug("job %s: %d transfers in this process", job.id, transfers)
            transfer = Transfer(
                self.cfg,
                self.state,
                job,
                plan,
                source,
                sink,
                info=info,
                progress=self.progress,
                cancel=self.cancel,
                transfers=transfers,
                retry_base=self.retry_base,
                payload_prefix=self._payload_prefix,
                seat=seat,
            )
            transfer.resumables.add(resumable)
            with fewer_collections():
                status, error = transfer.run()
            if status is not JobStatus.INTERRUPTED:  # uploads left mid-file that nobody continued
                self._abort_left(job.id, sink)
            result.already_done, result.exported_now = transfer.already, transfer.exported
            if req.worker:  # what the job's workers together exported in this run, not only this one
                done = self.state.recording_counts(job.id).get(RecordingStatus.DONE.value, 0)
                result.exported_now = max(transfer.exported, done - len(plan.done))
            if status is JobStatus.COMPLETE and (self.state.totals(job.id)[0] or req.allow_empty):
                set_log_context(phase="manifest")
                phase = "writing the manifest: "
                with self._locked(finishing_lock(job.id)):  # one worker writes it, the others find it
                    done = self.state.job(job.id)
                    if done is not None and done.status is JobStatus.COMPLETE and done.manifest_sha256:
                        result.manifest_key, result.manifest_sha256 = done.manifest_key or "", done.manifest_sha256
                    else:
                        result.manifest_key, result.manifest_sha256 = self._write_manifests(job, sink)
        except Interrupted:
            return JobStatus.INTERRUPTED, "interrupted", EXIT_CODES[JobStatus.INTERRUPTED]
        except Exception as e:  # noqa: BLE001 - the job is recorded failed, nothing lost
            text = str(e) if isinstance(e, PortshiftError) else f"{type(e).__name__}: {e}"
            return JobStatus.FAILED, f"{phase}{sanitize_message(text)}", EXIT_CODES[JobStatus.FAILED]
        return status, error, transfer.fatal_exit_code or EXIT_CODES[status]

    # --- before the transfer ---------------------------------------------------------------
    def _check_reachable(self, source: Source, sink: Sink) -> None:
        """Source and sink answer before any listing: a destination that cannot be written to is
        one line now, not a failure per call after spending the source's rate limit."""
        set_log_context(phase="check")
        cancellable_all([(sink.check, "checking the sink"), (source.check, "checking the source")], self.cancel)

    def _start(self, plan: Plan, source: Source, sink: Sink) -> tuple[JobRecord, WorkerSeat]:
        """Create the job, or join it: a job no live worker works on starts its next attempt (its
        window listed again, what failed tried again); else this worker joins the attempt."""
        state = self.state
        assert state is not None
        if plan.resume is not None:
            job = plan.resume
            state.reap(job.id)
            if state.live_workers(job.id):
                log.info("joining job %s (attempt %d) with the workers already on it", job.id, job.attempt)
                return job, WorkerSeat(state, job.id, job.attempt).take()
            state.update_job(job.id, status=JobStatus.RUNNING, finished_at=None, error=None, attempt=job.attempt + 1)
            log.info("resuming job %s: %d recordings already exported; --new to start over", job.id, len(plan.done))
            return job, WorkerSeat(state, job.id, job.attempt + 1).take()
        job_id = new_job_id()
        window = plan.window
        state.create_job(
            id=job_id,
            job_key=plan.key,
            fingerprint=hashlib.sha256(f"{plan.key}|{iso(window.start)}|{iso(window.end)}".encode()).hexdigest(),
            config_path=str(self.cfg.path) if self.cfg.path else None,
            source_type=self.cfg.source_type,
            source_location=source.location(),
            sink_type=self.cfg.sink_type,
            sink_location=sink.location(),
            window_start=iso(window.start),
            window_end=iso(window.end),
            export_root=job_id,
            incremental=int(plan.incremental),
            attempt=1,
        )
        log.info("job %s: exporting %s .. %s into %s/%s", job_id, iso(window.start), iso(window.end), sink.location(), job_id)
        job = state.job(job_id)
        assert job is not None
        return job, WorkerSeat(state, job_id, 1).take()

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """Hold a named lock of the state, waiting for it (a cancel ends the wait)."""
        assert self.state is not None
        while not self.state.try_lock(name):
            if self.cancel.wait(0.1):
                raise Interrupted("interrupted while waiting for another worker")
        try:
            yield
        finally:
            self.state.unlock(name)

    def _planning(self, key: str) -> AbstractContextManager[None]:
        """Workers starting at once plan one job: one at a time decides, the others join it."""
        return self._locked(planning_lock(key))

    def _recover(
        self, job_id: str, sink: Sink, seat: WorkerSeat | None = None, *, resumable: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        """Let the sink clean up what workers that are gone left in flight (multipart uploads);
        this worker's own journal entries are kept apart from then on. With ``resumable``, the
        uploads left mid-file that can be continued are kept and returned instead."""
        assert self.state is not None
        self.state.reap(job_id, seat.id if seat else "")
        sink.journal = self.state.journal(job_id, seat.id if seat else None)
        return recover_orphans(self.state, job_id, sink, self.cancel, keep_resumable=resumable)

    # --- after the transfer ----------------------------------------------------------------
    def _abort_left(self, job_id: str, sink: Sink) -> None:
        """Abort the uploads gone workers left mid-file that no worker continued."""
        assert self.state is not None
        try:
            recover_orphans(self.state, job_id, sink, self.cancel, keep_resumable=False)
        except Interrupted:
            raise
        except Exception as e:  # noqa: BLE001 - the next run of the job tries again
            log.warning("cleaning up uploads left by a stopped worker failed (%s)", sanitize_message(str(e)))

    def _write_manifests(self, job: JobRecord, sink: Sink) -> tuple[str, str]:
        state = self.state
        assert state is not None
        files, nbytes = state.totals(job.id)
        # "finished" is when the last file was stored, not this attempt's time: a manifest
        # rewritten after a failed or killed attempt is byte for byte the same, so a store that
        # refuses to replace an object (GCS with ifGenerationMatch=0) accepts it as already there.
        finished = state.last_file_done_at(job.id) or job.started_at
        state.update_job(job.id, finished_at=finished, file_count=files, byte_count=nbytes)
        writer = ManifestRun(self.cfg, state, job.id, job.export_root, sink)
        info = self._job_info(job.id, inventory=True)
        key, digest = cancellable(lambda: writer.write(info), self.cancel, "writing the manifest")
        state.update_job(job.id, manifest_key=key, manifest_sha256=digest)
        return key, digest

    def _finish(
        self, job: JobRecord, status: JobStatus, error: str | None, exit_code: int, result: RunResult, seat: WorkerSeat
    ) -> None:
        state = self.state
        assert state is not None
        files, nbytes = state.totals(job.id)
        counts = state.recording_counts(job.id)
        ended = status in (JobStatus.COMPLETE, JobStatus.PARTIAL)
        if ended or not state.live_workers(job.id, exclude=seat.id):  # else the job goes on without this worker
            state.update_job(
                job.id,
                status=status,
                finished_at=now_iso(),
                file_count=files,
                byte_count=nbytes,
                error=error,
                skipped_count=counts.get(RecordingStatus.SKIPPED.value, 0),
                failed_count=counts.get(RecordingStatus.FAILED.value, 0),
                pending_count=counts.get(RecordingStatus.PENDING.value, 0),
            )
        problems = [p.as_dict() for p in state.problems(job.id)]
        result.status, result.exit_code = status.value, exit_code
        result.files, result.bytes, result.counts = files, nbytes, counts
        result.window_start, result.window_end = job.window_start, job.window_end
        lists = {"skipped": result.skipped, "pending": result.pending, "failed": result.failed}
        for p in problems:
            lists.get(p["status"], result.missing).append(p)
        result.message = error or ""
        if status in (JobStatus.INTERRUPTED, JobStatus.FAILED, JobStatus.PARTIAL):
            result.message = (result.message + "; " if result.message else "") + f"resume with `{run_command(self.cfg)}`"

    def _up_to_date(self, last: JobRecord) -> RunResult:
        return RunResult(
            job_id=last.id,
            status="up-to-date",
            exit_code=0,
            export_root=last.export_root,
            window_start=last.window_start,
            window_end=last.window_end,
            manifest_key=last.manifest_key,
            manifest_sha256=last.manifest_sha256,
            message=(
                f"job {last.id} of this job file is already complete ({last.window_start} .. {last.window_end}); "
                "nothing to do. Use --since last to export what is newer, or --new for a fresh full export"
            ),
        )

    def _dry_run(self, plan: Plan, source: Source) -> RunResult:
        result = RunResult(job_id=None, status="dry-run", exit_code=0)
        result.window_start, result.window_end = iso(plan.window.start), iso(plan.window.end)
        todo = 0
        for rec in source.recordings(plan.window):
            if self.cancel.is_set():
                break
            if rec.id in plan.done or rec.id in plan.earlier:
                result.already_done += 1
                continue
            item = {"recording_id": rec.id, "started_at": iso(rec.started_at) if rec.started_at else None, "size": rec.size}
            if rec.skipped is not None:
                item["outcome"] = "pending" if isinstance(rec.skipped, RecordingPending) else "skipped"
                item["reason"] = getattr(rec.skipped, "reason", "")
            else:
                todo += 1
            result.listed.append(item)
        result.message = (
            f"dry run: {len(result.listed) + result.already_done} recordings in {result.window_start} .. "
            f"{result.window_end}, {todo} to export"
        )
        if plan.resume is not None:
            result.message += f" ({len(plan.done)} already exported by job {plan.resume.id})"
        elif plan.earlier:
            result.message += f" ({result.already_done} already exported by earlier jobs)"
        return result

    def _job_info(self, job_id: str, inventory: bool = False) -> JobInfo:
        assert self.state is not None
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
            not_exported=[p.as_dict() for p in self.state.problems(job_id)],
            inventory=build_inventory(self.state.outcome_counts(job_id), self.state.listed_ids(job_id)) if inventory else {},
            exported_earlier=[
                {"recording_id": rid, "job": message.rsplit(" ", 1)[-1]} for rid, message in self.state.exported_earlier(job_id)
            ]
            if inventory
            else [],
        )
