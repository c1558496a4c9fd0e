"""Job state: one interface, two backends.

- :mod:`.sqlite` — the embedded default, one file (sqlite-utils).
- :mod:`.postgres` — a PostgreSQL database reached over verified TLS (psycopg 3), for ephemeral
  workers, several workers on one export, the hosted service.

Both hold only names, locations, ids, sizes, hashes and sanitised errors: never a credential,
never content, never call metadata. Open one with :func:`open_state` (a path means SQLite, a
``postgresql://`` URL means PostgreSQL); ``State.open(path)`` is the same thing.
"""

from __future__ import annotations

import secrets as _random
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs

from ..records import JobRecord, Problem, RecordingStatus
from ..secrets import Secret
from ..settings import read_settings

__all__ = [
    "FileRecord",
    "State",
    "StateJournal",
    "default_state_path",
    "is_postgres_url",
    "new_job_id",
    "now_iso",
    "open_state",
]


def default_state_path() -> Path:
    env = read_settings().state
    if env and not is_postgres_url(env):
        return Path(env)
    return Path(platformdirs.user_data_dir("portshift")) / "state.db"


def default_state_target() -> str | Path:
    """``PORTSHIFT_STATE`` (a path or a URL), else the state file in the user data folder."""
    env = read_settings().state
    if env and is_postgres_url(env):
        return env
    return default_state_path()


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.strip().lower().startswith(("postgresql://", "postgres://"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_job_id() -> str:
    """Sortable, readable: ``20261129T054012Z-3f9a1c``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + _random.token_hex(3)


@dataclass
class FileRecord:
    key: str
    size: int
    sha256: str
    recording_id: str
    artifact: str
    content_type: str | None = None
    recorded_at: str | None = None
    verified: str = ""
    provider_checksums: dict[str, str] | None = None
    kind: str = "content"


#: the columns of ``jobs`` a caller may set (create_job / update_job)
JOB_COLUMNS = frozenset(
    {
        "id", "job_key", "fingerprint", "config_path", "source_type", "source_location", "sink_type", "sink_location",
        "window_start", "window_end", "export_root", "started_at", "finished_at", "status", "file_count", "byte_count",
        "error", "manifest_key", "manifest_sha256", "skipped_count", "failed_count", "pending_count", "incremental",
        "listed_count",
    }
)  # fmt: skip


def open_state(
    target: str | Path | None = None,
    *,
    create: bool = True,
    password: Secret | None = None,
    ca_bundle: Path | None = None,
    read_only: bool = False,
) -> State:
    """Open the state: a path (or nothing: the default file) is SQLite, a ``postgresql://`` URL
    is PostgreSQL (``password`` and ``ca_bundle`` apply to it only). ``read_only`` opens a SQLite
    file another process writes, without migrating or writing anything (PostgreSQL ignores it:
    its reader's role decides)."""
    if target is None or (isinstance(target, str) and not target.strip()):
        target = default_state_target()
    if is_postgres_url(target):
        from .pg_url import require_psycopg

        require_psycopg()
        from .postgres import PostgresState

        return PostgresState.connect(str(target), password=password, ca_bundle=ca_bundle)
    from .sqlite import SqliteState

    if read_only:
        return SqliteState.open_read_only(Path(target))
    return SqliteState.open(Path(target), create=create)


class State(ABC):
    """What the pipeline, the CLI, verify and the server see of the job state.

    Writes are committed when the call returns (a SIGKILL right after loses nothing); every
    method may be called from several threads at once.
    """

    created: bool = False  #: this process created the state (a new file)
    path: Path | None = None  #: the SQLite file; None for a database

    @classmethod
    def open(cls, path: str | Path | None = None, *, create: bool = True, **kwargs: Any) -> State:
        return open_state(path, create=create, **kwargs)

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the state is, safe to show (a path, or a URL without any password)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def discard_if_unused(self) -> None:
        """Remove what this process created when no job was ever recorded (a run that stopped on
        bad input leaves nothing behind). A database is never removed."""

    @abstractmethod
    def lock(self, job_key: str) -> None:
        """Take the run lock of this job (released when the process ends, even on SIGKILL);
        :class:`~portshift.errors.LockedError` when another run holds it."""

    # --- jobs
    @abstractmethod
    def create_job(self, **values: Any) -> str: ...

    @abstractmethod
    def update_job(self, job_id: str, **values: Any) -> None: ...

    def job(self, job_id: str) -> JobRecord | None:
        """The job with this id, or the only job whose id starts or ends with it."""
        rows = self.find_jobs(job_id)
        return rows[0] if len(rows) == 1 else None

    @abstractmethod
    def find_jobs(self, text: str, limit: int = 20) -> list[JobRecord]:
        """Jobs whose id is ``text``, or else starts or ends with it (newest first)."""

    @abstractmethod
    def jobs(self, limit: int = 50) -> list[JobRecord]: ...

    @abstractmethod
    def unfinished_job(self, job_key: str) -> JobRecord | None: ...

    @abstractmethod
    def last_complete_job(self, job_key: str) -> JobRecord | None: ...

    @abstractmethod
    def abandon_unfinished(self, job_key: str) -> int:
        """Mark unfinished jobs of this job file as abandoned (``--new``)."""

    @abstractmethod
    def exported_by_earlier_jobs(self, job_key: str, since: str, exclude_job: str) -> dict[str, str]:
        """Recording id -> the id of the job that exported it, for recordings done by other jobs
        of this job file whose window ends after ``since``."""

    @abstractmethod
    def oldest_pending(self, job_key: str) -> str | None:
        """The start time of the oldest recording left pending by a job of this job file and not
        exported since."""

    # --- progress
    @abstractmethod
    def done_recordings(self, job_id: str) -> set[str]: ...

    @abstractmethod
    def set_recording(
        self,
        job_id: str,
        recording_id: str,
        status: RecordingStatus | str,
        reason: str = "",
        message: str = "",
        started_at: str | None = None,
    ) -> None: ...

    @abstractmethod
    def add_missing(self, job_id: str, recording_id: str, artifact: str, reason: str, message: str) -> None: ...

    @abstractmethod
    def recording_counts(self, job_id: str) -> dict[str, int]: ...

    @abstractmethod
    def problems(self, job_id: str) -> list[Problem]: ...

    @abstractmethod
    def outcome_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        """Recordings per outcome and reason, and files missing at the source per reason:
        ``{"done": {"": 12}, "skipped": {"private": 1}, "missing": {"media_not_found": 2}}``."""

    @abstractmethod
    def listed_ids(self, job_id: str) -> Iterator[str]:
        """Every recording id the job listed, in code-point (bytewise) order."""

    @abstractmethod
    def exported_earlier(self, job_id: str) -> list[tuple[str, str]]:
        """(recording id, message) of the recordings a --since last job found exported by an earlier job."""

    # --- files
    @abstractmethod
    def add_file(self, job_id: str, f: FileRecord) -> None: ...

    @abstractmethod
    def remove_files_of(self, job_id: str, recording_id: str) -> None: ...

    @abstractmethod
    def done_artifacts(self, job_id: str, recording_id: str) -> set[str]: ...

    @abstractmethod
    def remove_manifest_files(self, job_id: str) -> None: ...

    @abstractmethod
    def files(self, job_id: str, kind: str = "content") -> Iterator[dict[str, Any]]:
        """Done files of a job, sorted by key, streamed."""

    @abstractmethod
    def last_file_done_at(self, job_id: str) -> str | None: ...

    @abstractmethod
    def totals(self, job_id: str) -> tuple[int, int]: ...

    # --- the sinks' journal of in-flight operations
    def journal(self, job_id: str) -> StateJournal:
        return StateJournal(self, job_id)

    @abstractmethod
    def journal_begin(self, job_id: str, key: str, data: dict[str, str]) -> None: ...

    @abstractmethod
    def journal_end(self, job_id: str, key: str) -> None: ...

    @abstractmethod
    def journal_pending(self, job_id: str) -> list[tuple[str, dict[str, str]]]: ...


class StateJournal:
    """A sink's journal of in-flight operations, kept in the job state."""

    def __init__(self, state: State, job_id: str) -> None:
        self.state = state
        self.job_id = job_id

    @property
    def path(self) -> Path | None:
        return self.state.path

    def begin(self, key: str, data: dict[str, str]) -> None:
        self.state.journal_begin(self.job_id, key, data)

    def end(self, key: str) -> None:
        self.state.journal_end(self.job_id, key)

    def pending(self) -> list[tuple[str, dict[str, str]]]:
        return self.state.journal_pending(self.job_id)
