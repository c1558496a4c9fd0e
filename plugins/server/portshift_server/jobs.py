"""Jobs of the service: a private work folder each, one worker each, progress from its state DB.

A job's work folder (mode 0700, under ``<data dir>/jobs/``, named by a keyed hash of the job id
so that no file name a worker sees is the job id, the capability to read and cancel it) holds its job file (no secret) and its
state DB, and nothing else; no two jobs share a file. Progress is read from the worker's state
DB, opened read-only (the file and byte counts of files the sink confirmed), and the worker's own
output: its JSON log lines on stderr (warnings and errors, kept in memory) and its summary on
stdout. When the worker has ended, its exit code and the state DB's job row say how the job ended.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import secrets as _random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portshift import PortshiftError, sanitize_message

from .db import TERMINAL, ServiceDB, now_iso
from .destinations import blur_network_error
from .job_request import build_credentials, build_job
from .job_state import FileJobStates, JobStates, add_state_password
from .key_check import verify_key, verify_resume
from .launcher import Handle, JobSpec, Launcher, zero
from .offers import Catalogue
from .state_keys import place_ca, seal_outcome, sealed_view
from .workdirs import WorkDirs, local_export

log = logging.getLogger("portshift.server.jobs")

#: exit codes of ``portshift run`` (docs/cli.md)
EXIT_OK, EXIT_USAGE, EXIT_PARTIAL, EXIT_FATAL, EXIT_LOCKED, EXIT_INTERRUPTED = 0, 2, 3, 5, 6, 130
_MANIFEST = re.compile(r"^manifest sha256: ([0-9a-f]{64})$")
#: what the service copies from a worker's state into its own row
_PROGRESS = ("file_count", "byte_count", "recordings_done", "recordings_failed", "recordings_skipped", "recordings_total")
_PROGRESS += ("portshift_job_id", "export_root")
_RESUMED = re.compile(r"^resumed job \S+: (\d+) recordings were already exported")


class Busy(Exception):
    """Too many jobs running (HTTP 503)."""


class TooMany(Exception):
    """This client already runs as many jobs as one client may (HTTP 429)."""


class Conflict(Exception):
    """The job is not in a state that allows this (HTTP 409)."""


@dataclass
class Run:
    """A running worker and what it has told us so far (memory only)."""

    job_id: str
    spec: JobSpec
    client: str = ""
    handle: Handle | None = None
    cancel_requested: bool = False
    cancel_at: float | None = None
    started: float = field(default_factory=time.monotonic)
    messages: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=5))
    error_line: str | None = None
    manifest_sha256: str | None = None
    already_done: int | None = None
    sealed: bool = False  #: the job's state is sealed with the customer's key (state_keys.py)


class JobManager:
    def __init__(
        self,
        db: ServiceDB,
        catalogue: Catalogue,
        launcher: Launcher,
        jobs_dir: Path,
        *,
        max_jobs: int = 4,
        max_jobs_per_client: int = 1,
        cancel_grace: float = 15.0,
        poll_interval: float = 0.5,
        max_runtime: float | None = None,
        states: JobStates | None = None,
    ) -> None:
        self.db = db
        self.states: JobStates = states or FileJobStates()  # where each worker keeps its state
        self.catalogue = catalogue
        self.launcher = launcher
        self.jobs_dir = jobs_dir
        self.max_jobs = max_jobs
        self.max_jobs_per_client = max_jobs_per_client
        self.cancel_grace = cancel_grace
        self.poll_interval = poll_interval
        self.max_runtime = max_runtime
        self._runs: dict[str, Run] = {}
        self._kept: dict[str, dict[str, Any]] = {}  #: a sealed job's outcome, memory only (state_keys.seal_outcome)
        self._lock = threading.RLock()  # re-entrant: begin_shutdown runs in a signal handler
        self._closing = False
        jobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(jobs_dir, 0o700)
        self._work_dirs = WorkDirs(jobs_dir)
        for job_id in db.unfinished_jobs():
            db.update_job(
                job_id,
                status="failed",
                finished_at=now_iso(),
                error="the service stopped while this job ran; nothing exported is lost: resume the job to continue",
            )
        self.states.sweep()

    # --- API --------------------------------------------------------------------------------------
    def create(self, doc: Any, client: str = "") -> str:
        """Validate, write the job file, start the worker. Returns the new job id. Nothing is
        written (file or row) for a request that is refused."""
        self._check_capacity(client)
        job_id = _random.token_urlsafe(18)
        built = build_job(self.catalogue, doc, self._work_dirs.name(job_id))  # the local sink's default folder: not the id
        try:  # the customer's key wraps and unwraps (key_check.py) before anything exists on disk
            verify_key(self.catalogue.state_key, built.state_key, built.secrets)
            text = built.job_toml.encode("utf-8")  # before anything exists on disk: no half-written job
            work = self.work_dir(job_id)
            work.mkdir(mode=0o700)
            fd = os.open(work / "job.toml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
            if built.state_key:
                place_ca(self.catalogue.state_key, work)
            types = {"source_type": built.source_type, "sink_type": built.sink_type, "sealed_with": built.state_key}
            self.db.insert_job(id=job_id, status="starting", **types)
            self._start(job_id, built.secrets, client)
        finally:
            zero(built.secrets)
        return job_id

    def work_dir(self, job_id: str) -> Path:
        """The job's work folder, named by a keyed hash of its id (workdirs.py)."""
        return self._work_dirs.of(job_id)

    def _check_capacity(self, client: str) -> None:
        with self._lock:
            total = len(self._runs)
            mine = sum(1 for r in self._runs.values() if r.client == client)
        if mine >= self.max_jobs_per_client:
            raise TooMany(f"you already run {mine} job(s), the most one client may; wait for it to end or cancel it")
        if total >= self.max_jobs:
            raise Busy("the service is busy; try again in a minute")

    def resume(self, job_id: str, doc: Any, client: str = "") -> None:
        row = self.db.job(job_id)
        if row is None:
            raise KeyError(job_id)
        creds = build_credentials(self.catalogue, doc, row["source_type"], row["sink_type"], sealed=bool(row.get("sealed_with")))
        try:
            if row["status"] not in ("failed", "partial", "cancelled"):
                raise Conflict(f"a {row['status']} job cannot be resumed")
            if not (self.work_dir(job_id) / "job.toml").is_file():
                raise Conflict("this job's work folder is gone; start a new job")
            self._check_capacity(client)
            verify_resume(self.catalogue.state_key, row.get("sealed_with"), creds, self._kept.setdefault(job_id, {}))
            self._start(job_id, creds, client)
        finally:
            zero(creds)

    def cancel(self, job_id: str) -> str:
        row = self.db.job(job_id)
        if row is None:
            raise KeyError(job_id)
        with self._lock:
            run = self._runs.get(job_id)
        if run is None or run.handle is None:
            if row["status"] in TERMINAL:
                raise Conflict(f"the job is already {row['status']}")
            raise Conflict("the job is not running")
        self._request_cancel(run)
        self.db.update_job(job_id, status="cancelling")
        return "cancelling"

    def snapshot(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.job(job_id)
        return None if row is None else self._snapshot(row)

    def snapshots(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The snapshots of several jobs from one database read (the event feed)."""
        return {row["id"]: self._snapshot(row) for row in self.db.jobs(job_ids)}

    def _snapshot(self, row: dict[str, Any]) -> dict[str, Any]:
        job_id = row["id"]
        with self._lock:
            run = self._runs.get(job_id)
        out = {
            "id": row["id"],
            "status": row["status"],
            "created_at": row["created_at"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "source_type": row["source_type"],
            "sink_type": row["sink_type"],
            "attempts": row["attempts"],
            "files": row["file_count"] or 0,
            "bytes": row["byte_count"] or 0,
            "recordings": {
                "done": row["recordings_done"] or 0,
                "failed": row["recordings_failed"] or 0,
                "skipped": row["recordings_skipped"] or 0,
            },
            "recordings_total": row["recordings_total"],
            "export_root": row["export_root"],
            "manifest_sha256": row["manifest_sha256"],
            "error": blur_network_error(row["error"]),
            "messages": [blur_network_error(m) for m in run.messages] if run else [],
        }
        out.update(sealed_view(row, self._kept.get(job_id)))
        return out

    def running(self) -> int:
        with self._lock:
            return len(self._runs)

    def running_ids(self) -> set[str]:
        with self._lock:
            return set(self._runs)

    def begin_shutdown(self) -> None:
        """Refuse new jobs and ask every worker to stop cleanly (their state is kept)."""
        self._closing = True
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            self._request_cancel(run)

    def shutdown(self, timeout: float = 20.0) -> None:
        """Stop every worker cleanly and wait for them (the jobs can be resumed)."""
        self.begin_shutdown()
        with self._lock:
            runs = list(self._runs.values())
        deadline = time.monotonic() + timeout
        for run in runs:
            if run.handle is not None and run.handle.wait(max(0.1, deadline - time.monotonic())) is None:
                run.handle.kill()
                run.handle.wait(5)
        for t in [t for t in threading.enumerate() if t.name.startswith("job-")]:
            t.join(timeout=5)

    # --- internals ------------------------------------------------------------------------------
    def _start(self, job_id: str, secrets: bytearray, client: str = "") -> None:
        work = self.work_dir(job_id)
        with self._lock:
            if self._closing:
                raise Busy("the service is stopping")
            if job_id in self._runs:
                raise Conflict("the job is already running")
            if len(self._runs) >= self.max_jobs:
                self.db.update_job(job_id, status="failed", error="the service was busy; resume the job to try again")
                raise Busy("the service is busy; try again in a minute")
            try:  # the job's state target (with PostgreSQL, a database role for this run)
                target, password = self.states.start(job_id, work, (self.max_runtime or 86400.0) + 3600.0)
            except PortshiftError as e:
                log.error("job %s: no state for the worker: %s", job_id[:6], e)
                self._forget_run(job_id, "the service database was not available; resume the job to try again")
                raise Busy("the service database is not available for new jobs; try again in a minute") from None
            if password is not None:
                add_state_password(secrets, password)
            spec = JobSpec(job_id, work, work / "job.toml", target, export_dir=local_export(work / "job.toml"))  # type: ignore[arg-type]
            run = Run(job_id, spec, client)
            run.spec.on_output = lambda stream, line: self._on_output(run, stream, line)
            self._runs[job_id] = run
            self.db.update_job(job_id, status="starting", finished_at=None, error=None, exit_code=None)
        row = self.db.job(job_id) or {}
        run.sealed = bool(row.get("sealed_with"))
        try:
            run.handle = self.launcher.start(run.spec, secrets)
        except OSError as e:
            with self._lock:
                self._runs.pop(job_id, None)
            self._forget_run(job_id, f"the worker could not be started ({type(e).__name__})")
            log.error("job %s: worker could not be started: %s", job_id[:6], type(e).__name__)
            return
        self.db.update_job(job_id, status="running", started_at=now_iso(), attempts=(row.get("attempts") or 0) + 1)
        log.info(
            "job %s: worker started (attempt %d, %d jobs running)", job_id[:6], (row.get("attempts") or 0) + 1, self.running()
        )
        threading.Thread(target=self._monitor, args=(run,), name=f"job-{job_id[:6]}", daemon=True).start()

    def _forget_run(self, job_id: str, error: str) -> None:
        """A run that did not start: what was made for it goes, the job is failed (best effort:
        the database may be what failed)."""
        try:
            self.states.end(job_id)
            self.db.update_job(job_id, status="failed", error=error)
        except PortshiftError as e:
            log.warning("job %s: %s", job_id[:6], e)

    def _on_output(self, run: Run, stream: str, line: str) -> None:
        if not line.strip():
            return
        if stream == "stdout":
            m = _MANIFEST.match(line)
            if m:
                run.manifest_sha256 = m.group(1)
            m = _RESUMED.match(line)
            if m:
                run.already_done = int(m.group(1))
            return
        if line.startswith("{"):
            try:
                rec = json.loads(line)
            except ValueError:
                return
            if not isinstance(rec, dict):
                return
            if rec.get("event") == "fatal":  # the worker's last line, as a JSON record (--log-format json)
                text = str(rec.get("message", ""))
                for prefix in ("error: ", "internal error: ", "stopped: "):
                    text = text.removeprefix(prefix)
                run.error_line = sanitize_message(text, 500)
            elif rec.get("level") in ("warning", "error", "critical"):
                run.messages.append(sanitize_message(str(rec.get("message", "")), 300))
            return
        for prefix in ("portshift: error: ", "portshift: internal error: "):
            if line.startswith(prefix):
                run.error_line = sanitize_message(line[len(prefix) :], 500)

    def _progress(self, run: Run) -> dict[str, Any] | None:
        st = self.states.read(run.job_id, run.spec.state_file)
        if st is None:
            return None
        return {**{k: st[k] for k in _PROGRESS}, "_state": st}

    def _monitor(self, run: Run) -> None:
        assert run.handle is not None
        last: dict[str, Any] = {}
        rc: int | None = None
        killed = False
        while rc is None:
            rc = run.handle.wait(self.poll_interval)
            if rc is None and run.cancel_at is not None and not killed and time.monotonic() - run.cancel_at > self.cancel_grace:
                run.handle.kill()  # it did not stop cleanly in time; its state is still consistent
                killed = True
            if rc is None and self.max_runtime and time.monotonic() - run.started > self.max_runtime and not run.cancel_requested:
                run.messages.append("the job ran longer than the service allows; stopping it")
                self._request_cancel(run)
            got = self._progress(run)
            if got is not None:
                values = {k: v for k, v in got.items() if not k.startswith("_")}
                if values != last:
                    self.db.update_job(run.job_id, **values)
                    last = values
        self._finish(run, rc)

    def _finish(self, run: Run, rc: int) -> None:
        got = self._progress(run) or {}
        st = got.pop("_state", None) or {}
        values: dict[str, Any] = {k: v for k, v in got.items()}
        manifest = st.get("manifest_sha256") or run.manifest_sha256
        if rc == EXIT_OK and (st.get("state_status") == "complete" or manifest):
            status, error = "complete", None
        elif rc == EXIT_PARTIAL:
            status, error = "partial", st.get("state_error") or "some recordings failed; resume the job to retry them"
        elif run.cancel_requested and (rc == EXIT_INTERRUPTED or rc < 0):
            status, error = "cancelled", "cancelled; nothing exported is lost: resume the job to continue"
        elif rc < 0:
            status = "failed"
            error = f"the worker stopped unexpectedly (signal {-rc}); nothing exported is lost: resume the job to continue"
        elif rc == EXIT_INTERRUPTED:
            status, error = "failed", "the worker was interrupted; resume the job to continue"
        elif rc == EXIT_LOCKED:
            status, error = "failed", "another worker of this job is still running; try again when it has ended"
        else:
            status = "failed"
            error = run.error_line or st.get("state_error") or f"the worker ended with exit code {rc}"
        values.update(status=status, finished_at=now_iso(), exit_code=rc, error=sanitize_message(error, 500) if error else None)
        if status == "complete":
            values["manifest_sha256"] = manifest
        if run.sealed:  # what may name the customer's data stays in memory
            self._kept[run.job_id] = seal_outcome(values, error if error and error == run.error_line else None)
        self.db.update_job(run.job_id, **values)
        try:
            self.states.end(run.job_id)  # the run's database role, when there is one
        except PortshiftError as e:
            log.warning("job %s: %s", run.job_id[:6], e)
        with self._lock:
            self._runs.pop(run.job_id, None)
        log.info("job %s: %s (exit %s)", run.job_id[:6], status, rc)

    @staticmethod
    def _request_cancel(run: Run) -> None:
        if run.handle is None or run.cancel_requested:
            return
        run.cancel_requested = True
        run.cancel_at = time.monotonic()
        run.handle.cancel()
