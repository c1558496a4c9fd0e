"""Where each job's worker keeps its state, and how the service reads the job's progress from it.

- :class:`FileJobStates` (the service database is a SQLite file: a one-machine trial): a state
  file in the job's work folder, read read-only by the service.
- :class:`~.job_roles.PgJobStates` (the service runs on PostgreSQL): the core state tables of the service's
  own database. The worker gets a ``postgresql://`` URL naming a login role made for this run of
  the job (job_roles.py) and, on its credential channel, that role's password; the service reads
  progress with its own role. Nothing of a job's state is on the worker's disk.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Protocol

from portshift import PortshiftError
from portshift.state import State, open_state


def progress_of(state: State, job_id: str) -> dict[str, Any] | None:
    """The service's view of one state job: its status, counts and totals."""
    job = state.job(job_id)
    if job is None:
        return None
    files, nbytes = state.totals(job.id)
    recs = state.recording_counts(job.id)
    return {
        "portshift_job_id": job.id,
        "state_status": job.status.value,
        "export_root": job.export_root,
        "manifest_sha256": job.manifest_sha256,
        "state_error": job.error,
        "file_count": files,
        "byte_count": nbytes,
        "recordings_done": int(recs.get("done", 0)),
        "recordings_failed": int(recs.get("failed", 0)),
        "recordings_skipped": int(recs.get("skipped", 0)),
        # known once the worker's listing has covered the window: the page's bar and estimate
        "recordings_total": job.listed_count or None,
    }


def read_state(path: Path) -> dict[str, Any] | None:
    """The latest job of a worker's state file, read-only; None if there is none (yet): not
    created, not migrated, or busy — the next tick reads it again."""
    try:
        with open_state(path, read_only=True) as state:
            state.seals.unwrap = False  # a sealed job's key is for its worker only: its clear fields here
            latest = state.jobs(1)
            return progress_of(state, latest[0].id) if latest else None
    except (PortshiftError, sqlite3.Error):
        return None


class JobStates(Protocol):
    def start(self, job_id: str, work: Path, valid_for: float) -> tuple[str | Path, str | None]:
        """The state target for this run of the job's worker, and the password it needs (or None)."""

    def read(self, job_id: str, target: str | Path) -> dict[str, Any] | None:
        """The job's progress (see :func:`progress_of`), None if there is nothing yet."""

    def end(self, job_id: str) -> None:
        """The worker has ended (or never started): what was made for this run goes."""

    def remove(self, job_id: str) -> None:
        """Delete the job's state (retention)."""

    def sweep(self, running: set[str] | None = None) -> None:
        """Remove what runs that ended without :meth:`end` left behind (at start: every run's;
        later: those of jobs not in ``running``)."""


class FileJobStates:
    """A SQLite state file in each job's work folder: removed with the folder."""

    def start(self, job_id: str, work: Path, valid_for: float) -> tuple[str | Path, str | None]:
        return work / "state.db", None

    def read(self, job_id: str, target: str | Path) -> dict[str, Any] | None:
        return read_state(Path(target))

    def end(self, job_id: str) -> None:
        pass

    def remove(self, job_id: str) -> None:
        pass

    def sweep(self, running: set[str] | None = None) -> None:
        pass


def add_state_password(secrets: bytearray, password: str) -> None:
    """Add ``"state": {"password": ...}`` to the credential document (``--secrets-from-stdin``),
    in place: the bytearray the launcher zeroes once handed over. A ``"state"`` object already
    there (the state key's credentials) gets the password as its first member."""
    if not secrets.endswith(b"}"):
        raise ValueError("the credential document is not a JSON object")
    member = b'"password": ' + json.dumps(password).encode()
    # json.dumps escapes every quote inside a string, so this only matches the top-level member
    at = secrets.find(b'"state": {')
    if at >= 0:
        at += len(b'"state": {')
        secrets[at:at] = member + b", "
        return
    piece = b'"state": {' + member + b"}}"
    secrets[-1:] = piece if len(secrets) == 2 else b", " + piece
