"""Job state: one interface, two backends.

- :mod:`.sqlite` — the embedded default, one file (sqlite-utils).
- :mod:`.postgres` — a PostgreSQL database reached over verified TLS (psycopg 3), for ephemeral
  workers, several workers on one export, the hosted service.

Both hold only names, locations, ids, sizes, hashes and sanitised errors: never a credential,
never content, never call metadata. Open one with :func:`open_state` (a path means SQLite, a
``postgresql://`` URL means PostgreSQL); ``State.open(path)`` is the same thing.
"""

from __future__ import annotations

import json
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
from .claims import Claimed, Claims
from .journal import StateJournal
from .source_rates import SourceRates

__all__ = [
    "Claimed",
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
        "listed_count", "attempt", "listing_attempt",
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


class State(Claims, SourceRates, ABC):
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

    # --- what the statements below, the same on both backends (``?`` marks a parameter), go through:
    # the jobs a ``select * from jobs`` returns, the rows of a read, one write committed when it
    # returns (the rows it changed); ``what`` names the read or write in an error
    @abstractmethod
    def _jobs(self, query: str, params: list[Any]) -> list[JobRecord]: ...

    @abstractmethod
    def _rows(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _write(self, what: str, query: str, params: list[Any]) -> int: ...

    def job(self, job_id: str) -> JobRecord | None:
        """The job with this id, or the only job whose id starts or ends with it."""
        rows = self.find_jobs(job_id)
        return rows[0] if len(rows) == 1 else None

    def find_jobs(self, text: str, limit: int = 20) -> list[JobRecord]:
        """Jobs whose id is ``text``, or else starts or ends with it (newest first)."""
        exact = self._jobs("select * from jobs where id = ?", [text])
        if exact or not text:
            return exact
        like = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self._jobs(
            "select * from jobs where id like ? escape '\\' or id like ? escape '\\' order by started_at desc, id desc limit ?",
            [like + "%", "%" + like, limit],
        )

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        return self._jobs("select * from jobs order by started_at desc, id desc limit ?", [limit])

    def unfinished_job(self, job_key: str) -> JobRecord | None:
        rows = self._jobs(
            "select * from jobs where job_key = ? and status != 'complete' order by started_at desc, id desc limit 1",
            [job_key],
        )
        return rows[0] if rows else None

    def last_complete_job(self, job_key: str) -> JobRecord | None:
        rows = self._jobs(
            "select * from jobs where job_key = ? and status = 'complete' order by window_end desc, started_at desc limit 1",
            [job_key],
        )
        return rows[0] if rows else None

    def abandon_unfinished(self, job_key: str) -> int:
        """Mark unfinished jobs of this job file as abandoned (``--new``)."""
        return self._write(
            "abandon the unfinished job",
            "update jobs set status = 'abandoned', finished_at = coalesce(finished_at, ?) "
            "where job_key = ? and status != 'complete' and status != 'abandoned'",
            [now_iso(), job_key],
        )

    def exported_by_earlier_jobs(self, job_key: str, since: str, exclude_job: str) -> dict[str, str]:
        """Recording id -> the id of the job that exported it, for recordings done by other jobs
        of this job file whose window ends after ``since`` (a window re-listed by ``--since last``)."""
        rows = self._rows(
            "read earlier jobs",
            "select r.recording_id, r.job_id from recordings r join jobs j on j.id = r.job_id "
            "where j.job_key = ? and j.id != ? and j.window_end > ? and r.status = 'done'",
            [job_key, exclude_job, since],
        )
        return {rec: job for rec, job in rows}

    def oldest_pending(self, job_key: str) -> str | None:
        """The start time of the oldest recording left pending by a job of this job file and not
        exported since (``--since last`` lists from there, so it is picked up once ready)."""
        rows = self._rows(
            "read pending recordings",
            "select min(p.started_at) from recordings p join jobs j on j.id = p.job_id "
            "where j.job_key = ? and p.status = 'pending' and p.started_at is not null and not exists ("
            "select 1 from recordings d join jobs k on k.id = d.job_id "
            "where k.job_key = j.job_key and d.recording_id = p.recording_id and d.status = 'done')",
            [job_key],
        )
        return rows[0][0] if rows else None

    # --- progress
    def done_recordings(self, job_id: str) -> set[str]:
        rows = self._rows(
            "read done recordings", "select recording_id from recordings where job_id = ? and status = 'done'", [job_id]
        )
        return {r[0] for r in rows}

    def set_recording(
        self,
        job_id: str,
        recording_id: str,
        status: RecordingStatus | str,
        reason: str = "",
        message: str = "",
        started_at: str | None = None,
    ) -> None:
        self._write(
            "record a recording",
            "insert into recordings (job_id, recording_id, status, reason, message, updated_at, started_at) "
            "values (?, ?, ?, ?, ?, ?, ?) on conflict (job_id, recording_id) do update set "
            "status = excluded.status, reason = excluded.reason, message = excluded.message, "
            "updated_at = excluded.updated_at, started_at = coalesce(excluded.started_at, recordings.started_at)",
            [job_id, recording_id, RecordingStatus(status).value, reason, message[:500], now_iso(), started_at],
        )

    def add_missing(self, job_id: str, recording_id: str, artifact: str, reason: str, message: str) -> None:
        """One artifact the source said does not exist (the recording is still exported)."""
        self._write(
            "record a missing artifact",
            "insert into missing_artifacts (job_id, recording_id, artifact, reason, message) values (?, ?, ?, ?, ?) "
            "on conflict (job_id, recording_id, artifact) do update set reason = excluded.reason, message = excluded.message",
            [job_id, recording_id, artifact, reason, message[:500]],
        )

    def recording_counts(self, job_id: str) -> dict[str, int]:
        rows = self._rows(
            "count recordings", "select status, count(*) from recordings where job_id = ? group by status", [job_id]
        )
        return {r[0]: int(r[1]) for r in rows}

    def problems(self, job_id: str) -> list[Problem]:
        """Recordings not exported (failed, skipped, pending) and artifacts missing at the source."""
        rows = self._rows(
            "read problems",
            "select recording_id, status, reason, message, '' as artifact from recordings "
            "where job_id = ? and status in ('failed', 'skipped', 'pending') "
            "union all select recording_id, 'missing', reason, message, artifact from missing_artifacts where job_id = ? "
            "order by 2, 1, 5",
            [job_id, job_id],
        )
        return [Problem(rec, status, reason or "", message or "", art or "") for rec, status, reason, message, art in rows]

    def outcome_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        """Recordings per outcome and reason, and files missing at the source per reason:
        ``{"done": {"": 12}, "skipped": {"private": 1}, "missing": {"media_not_found": 2}}``."""
        rows = self._rows(
            "count outcomes",
            "select status, coalesce(reason, ''), count(*) from recordings where job_id = ? group by 1, 2 "
            "union all select 'missing', coalesce(reason, ''), count(*) from missing_artifacts where job_id = ? group by 2",
            [job_id, job_id],
        )
        out: dict[str, dict[str, int]] = {}
        for status, why, n in rows:
            out.setdefault(status, {})[why] = int(n)
        return out

    @abstractmethod
    def listed_ids(self, job_id: str) -> Iterator[str]:
        """Every recording id the job listed, in code-point (bytewise) order."""

    def exported_earlier(self, job_id: str) -> list[tuple[str, str]]:
        """(recording id, message) of the recordings a --since last job found exported by an earlier job."""
        rows = self._rows(
            "read earlier exports",
            "select recording_id, message from recordings where job_id = ? and status = 'exported_earlier' order by recording_id",
            [job_id],
        )
        return [(rid, message) for rid, message in rows]

    # --- files
    def add_file(self, job_id: str, f: FileRecord) -> None:
        self._write(
            "record a file",
            "insert into files (job_id, key, size, sha256, recording_id, artifact, content_type, "
            "recorded_at, done_at, verified, provider_checksums, kind) values (?,?,?,?,?,?,?,?,?,?,?,?) "
            "on conflict (job_id, key) do update set size = excluded.size, sha256 = excluded.sha256, "
            "recording_id = excluded.recording_id, artifact = excluded.artifact, "
            "content_type = excluded.content_type, recorded_at = excluded.recorded_at, "
            "done_at = excluded.done_at, verified = excluded.verified, "
            "provider_checksums = excluded.provider_checksums, kind = excluded.kind",
            [job_id, f.key, f.size, f.sha256, f.recording_id, f.artifact, f.content_type, f.recorded_at, now_iso(),
             f.verified, json.dumps(f.provider_checksums or {}, sort_keys=True), f.kind],
        )  # fmt: skip

    def remove_files_of(self, job_id: str, recording_id: str) -> None:
        self._write("remove files", "delete from files where job_id = ? and recording_id = ?", [job_id, recording_id])

    def done_artifacts(self, job_id: str, recording_id: str) -> set[str]:
        rows = self._rows(
            "read done artifacts",
            "select artifact from files where job_id = ? and recording_id = ? and kind = 'content'",
            [job_id, recording_id],
        )
        return {r[0] for r in rows}

    def remove_manifest_files(self, job_id: str) -> None:
        self._write("remove manifest files", "delete from files where job_id = ? and kind = 'manifest'", [job_id])

    @abstractmethod
    def files(self, job_id: str, kind: str = "content") -> Iterator[dict[str, Any]]:
        """Done files of a job, sorted by key, streamed."""

    def last_file_done_at(self, job_id: str) -> str | None:
        """When the job's last content file was stored (None when it has none): the manifest's
        ``# finished``, the same on every rewrite of the manifest."""
        rows = self._rows("read files", "select max(done_at) from files where job_id = ? and kind = 'content'", [job_id])
        return rows[0][0] if rows else None

    def totals(self, job_id: str) -> tuple[int, int]:
        rows = self._rows(
            "count files", "select count(*), coalesce(sum(size), 0) from files where job_id = ? and kind = 'content'", [job_id]
        )
        return int(rows[0][0]), int(rows[0][1])

    # --- the sinks' journal of in-flight operations (one per worker: see .claims)
    def journal(self, job_id: str, worker: str | None = None) -> StateJournal:
        return StateJournal(self, job_id, worker)

    def journal_begin(self, job_id: str, key: str, data: dict[str, str], worker: str | None = None) -> None:
        self._write(
            "record an operation in flight",
            "insert into sink_journal (job_id, key, data, started_at, worker) values (?, ?, ?, ?, ?) "
            "on conflict (job_id, key) do update set data = excluded.data, started_at = excluded.started_at, "
            "worker = excluded.worker",
            [job_id, key, json.dumps(data, sort_keys=True), now_iso(), worker],
        )

    def journal_end(self, job_id: str, key: str) -> None:
        self._write("end an operation in flight", "delete from sink_journal where job_id = ? and key = ?", [job_id, key])

    def journal_pending(self, job_id: str, worker: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """The job's operations in flight (``worker``: only that worker's)."""
        rows = self._rows(
            "read operations in flight",
            "select key, data from sink_journal where job_id = ? and (cast(? as text) is null or worker = ?) order by started_at",
            [job_id, worker, worker],
        )
        return [(key, json.loads(data)) for key, data in rows]
