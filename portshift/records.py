"""Typed rows of the job state: what a job, a recording's outcome and a problem are.

Every backend of :mod:`portshift.state` returns these, never bare dicts; statuses are enums
everywhere (pipeline, CLI, report, server), stored as their string values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any


class JobStatus(str, Enum):
    """Where a job stands. ``COMPLETE`` is final; every other status can be resumed or abandoned."""

    RUNNING = "running"
    COMPLETE = "complete"
    PARTIAL = "partial"  #: ran to the end, some recordings failed: re-run to retry them
    FAILED = "failed"  #: stopped on a fatal error (credentials, destination, listing)
    INTERRUPTED = "interrupted"  #: SIGINT/SIGTERM
    ABANDONED = "abandoned"  #: given up by ``--new``

    def __str__(self) -> str:
        return self.value


class RecordingStatus(str, Enum):
    """The outcome of one listed recording: exactly one of these."""

    DONE = "done"  #: every artifact stored (some may be recorded as missing at the source)
    SKIPPED = "skipped"  #: not exported, with a reason (private, filtered, nothing to export)
    PENDING = "pending"  #: not ready yet (live, processing): a later run exports it
    FAILED = "failed"  #: an error; re-run to retry
    #: listed, waiting for a worker to claim and export it (only while a job is in progress)
    TODO = "todo"
    #: listed again by a ``--since last`` job, exported into an earlier job's root
    EXPORTED_EARLIER = "exported_earlier"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class JobRecord:
    """One job as the state holds it (names and locations only, never a credential)."""

    id: str
    job_key: str
    window_start: str
    window_end: str
    started_at: str
    status: JobStatus
    export_root: str = ""
    fingerprint: str = ""
    config_path: str | None = None
    source_type: str = ""
    source_location: str = ""
    sink_type: str = ""
    sink_location: str = ""
    finished_at: str | None = None
    file_count: int = 0
    byte_count: int = 0
    error: str | None = None
    manifest_key: str | None = None
    manifest_sha256: str | None = None
    skipped_count: int = 0
    failed_count: int = 0
    pending_count: int = 0
    listed_count: int = 0  #: recordings the last complete listing of the window found (progress totals)
    incremental: bool = False  #: a ``--since last`` job: recordings earlier jobs exported are not exported again
    attempt: int = 0  #: how many times workers started on this job (a run after a crash starts the next)
    listing_attempt: int = 0  #: the attempt whose listing of the window completed (0: none yet)
    sealed: str | None = None  #: why the sealed fields are empty: the customer's key is not available (docs/byok.md)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        values["status"] = JobStatus(values.get("status") or "running")
        for k in (
            "file_count",
            "byte_count",
            "skipped_count",
            "failed_count",
            "pending_count",
            "listed_count",
            "attempt",
            "listing_attempt",
        ):
            values[k] = int(values.get(k) or 0)
        values["incremental"] = bool(values.get("incremental"))
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        out["incremental"] = int(self.incremental)
        return out

    @property
    def finished(self) -> bool:
        return self.status is JobStatus.COMPLETE


@dataclass(frozen=True)
class Problem:
    """A recording that was not exported, or an artifact that was missing at the source."""

    recording_id: str
    status: str  #: a RecordingStatus value, or ``"missing"`` for one artifact
    reason: str
    message: str
    artifact: str = ""  #: set for a missing artifact

    def as_dict(self) -> dict[str, str]:
        out = {"recording_id": self.recording_id, "status": self.status, "reason": self.reason, "message": self.message}
        if self.artifact:
            out["artifact"] = self.artifact
        return out
