"""What a run is asked to do (:class:`RunRequest`) and what it did (:class:`RunResult`), with the
machine-readable report ``portshift run --report json`` prints (schema in docs/cli.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..errors import ExitCode
from ..records import JobStatus

#: the JSON report's format; bumped only on an incompatible change
REPORT_VERSION = 1

EXIT_CODES = {
    JobStatus.COMPLETE: ExitCode.OK,
    JobStatus.PARTIAL: ExitCode.PARTIAL,
    JobStatus.INTERRUPTED: ExitCode.INTERRUPTED,
    JobStatus.FAILED: ExitCode.FATAL,
}


@dataclass
class RunRequest:
    since: datetime | None = None
    since_last: bool = False
    until: datetime | None = None
    transfers: int | None = None
    dry_run: bool = False
    new: bool = False
    allow_empty: bool = False  #: store a manifest even when the window had nothing to export
    #: one of several workers of the job (``portshift worker``): share it instead of holding it alone
    worker: bool = False


@dataclass
class RunResult:
    job_id: str | None
    status: str  #: a JobStatus value, or "up-to-date", "dry-run", "nothing-new"
    exit_code: int
    export_root: str = ""
    window_start: str = ""
    window_end: str = ""
    files: int = 0
    bytes: int = 0
    already_done: int = 0  #: recordings exported by an earlier attempt or an earlier job
    exported_now: int = 0  #: recordings exported by this run
    counts: dict[str, int] = field(default_factory=dict)  #: recordings per outcome, this job
    skipped: list[dict[str, str]] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)  #: artifacts missing at the source
    failed: list[dict[str, str]] = field(default_factory=list)
    manifest_key: str | None = None
    manifest_sha256: str | None = None
    message: str = ""
    resumed: bool = False
    duration: float = 0.0
    listed: list[dict[str, Any]] = field(default_factory=list)  #: --dry-run: what would be exported

    def report(self) -> dict[str, Any]:
        """The ``--report json`` document (docs/cli.md, "The JSON report")."""
        return {
            "report_version": REPORT_VERSION,
            "job_id": self.job_id,
            "status": self.status,
            "exit_code": int(self.exit_code),
            "export_root": self.export_root or None,
            "window": {"start": self.window_start or None, "end": self.window_end or None},
            "resumed": self.resumed,
            "recordings": {
                "exported": self.exported_now,
                "already_exported": self.already_done,
                "skipped": self.counts.get("skipped", 0),
                "pending": self.counts.get("pending", 0),
                "failed": self.counts.get("failed", 0),
            },
            "files": self.files,
            "bytes": self.bytes,
            "duration_seconds": round(self.duration, 3),
            "manifest": {"key": self.manifest_key, "sha256": self.manifest_sha256} if self.manifest_sha256 else None,
            "skipped": self.skipped,
            "pending": self.pending,
            "missing_artifacts": self.missing,
            "failed": self.failed,
            "message": self.message or None,
            **({"dry_run": self.listed} if self.status == "dry-run" else {}),
        }


def error_report(exit_code: int, message: str) -> dict[str, Any]:
    """The report when the run stopped before a job existed (bad job file, unreachable sink)."""
    return {
        "report_version": REPORT_VERSION,
        "job_id": None,
        "status": "error",
        "exit_code": int(exit_code),
        "message": message,
    }
