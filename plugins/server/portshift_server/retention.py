"""Retention: a finished job is forgotten once it has been finished for the retention period.

After ``--retention-days`` (default 7) from a job's end (complete, partial, failed or cancelled),
its work folder (job file, state file, temporary files), its worker state (the state database's
rows, when the service runs on PostgreSQL), any database role left for it and its row in the
service database are deleted; from then on its id is unknown (404), so it can no longer be read,
resumed or cancelled. A job that is running is never touched. The sign-ups are not affected: they
are kept until the operator deletes them (``portshift serve signups delete EMAIL``). Rate-limit
counters expire on their own at the end of their window. docs/security.md lists what is kept.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from portshift import PortshiftError

from .job_state import JobStates
from .workdirs import WorkDirs

log = logging.getLogger("portshift.server.retention")

DEFAULT_DAYS = 7.0
#: a job id as the service makes them (secrets.token_urlsafe): never a path
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def cutoff(days: float, now: datetime | None = None) -> str:
    """The ISO time (UTC, as the service writes ``finished_at``) before which a job is forgotten."""
    now = now or datetime.now(timezone.utc)
    return (now - timedelta(days=days)).astimezone(timezone.utc).isoformat(timespec="seconds")


def sweep(
    db: Any,
    states: JobStates,
    jobs_dir: Path,
    days: float,
    *,
    now: datetime | None = None,
    running: Callable[[], set[str]] = set,
) -> int:
    """Forget every job finished before ``now - days``; return how many were forgotten."""
    forgotten = 0
    busy = running()
    for job_id in db.finished_before(cutoff(days, now)):
        if job_id in busy:
            continue
        try:
            states.remove(job_id)
            if _JOB_ID.match(job_id):
                shutil.rmtree(WorkDirs(jobs_dir).of(job_id), ignore_errors=True)  # named by a keyed hash of the id
            db.delete_job(job_id)  # last: a sweep stopped half-way is finished by the next one
        except PortshiftError as e:
            log.warning("retention: job %s not removed yet: %s", job_id[:6], e)
            continue
        forgotten += 1
    states.sweep(busy)  # and what runs that ended without cleaning up left (a job's database role)
    if forgotten:
        log.info("retention: %d finished job(s) older than %g days removed", forgotten, days)
    return forgotten


class RetentionSweeper:
    """Runs :func:`sweep` at start and then every ``every`` seconds, until :meth:`stop`."""

    def __init__(self, run_sweep: Callable[[], int], every: float = 3600.0) -> None:
        self.run_sweep = run_sweep
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> RetentionSweeper:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_sweep()
            except Exception as e:  # noqa: BLE001 - the service keeps serving; the next round tries again
                log.warning("retention sweep failed: %s", type(e).__name__)
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
