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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import platformdirs

from ..records import JobRecord, JobStatus
from ..secrets import Secret
from ..settings import read_settings
from .claims import Claimed, Claims
from .journal import StateJournal
from .rows import FileRecord, SharedRows
from .sealed import JOB_SEALED, Seals
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


#: the columns of ``jobs`` a caller may set (create_job / update_job)
JOB_COLUMNS = frozenset(
    {
        "id", "job_key", "fingerprint", "config_path", "source_type", "source_location", "sink_type", "sink_location",
        "window_start", "window_end", "export_root", "started_at", "finished_at", "status", "file_count", "byte_count",
        "error", "manifest_key", "manifest_sha256", "skipped_count", "failed_count", "pending_count", "incremental",
        "listed_count", "attempt", "listing_attempt",
    }
)  # fmt: skip


def import_backend(target: str | Path | None) -> None:
    """Import the module that opens ``target`` now (``run --workers`` does, before it forks its
    workers: imported once in the first process instead of once in each). What cannot be
    imported is left for :func:`open_state` to report."""
    try:
        if target is not None and is_postgres_url(str(target)):
            from . import postgres  # noqa: F401
        else:
            from . import sqlite  # noqa: F401
    except ImportError:
        pass


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


class State(SharedRows, Claims, SourceRates, ABC):
    """What the pipeline, the CLI, verify and the server see of the job state.

    Writes are committed when the call returns (a SIGKILL right after loses nothing); every
    method may be called from several threads at once.
    """

    created: bool = False  #: this process created the state (a new file)
    path: Path | None = None  #: the SQLite file; None for a database

    @property
    def seals(self) -> Seals:
        """The key that seals new jobs (``[state] key``) and the data keys unwrapped so far."""
        seals = self.__dict__.get("_seals")
        if seals is None:
            seals = self.__dict__["_seals"] = Seals(self)
        return seals

    def _sealer(self, job_id: str) -> Any:
        """The job's :class:`~portshift.sealing.Sealer`, None for a clear job; raises
        :class:`~portshift.sealing.KeyUnavailableError` naming the key when it is not available
        (one read of ``job_keys`` per job, then remembered)."""
        return self.seals.of(job_id)

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
    def create_job(self, **values: Any) -> str:
        """Record a new job; with a key (``[state] key``) its data key is made, checked and stored
        wrapped first, and the job's sealed columns are sealed with it."""
        job_id = values.pop("id", None) or new_job_id()
        row = {"id": job_id, "started_at": now_iso(), "status": JobStatus.RUNNING.value, "file_count": 0, "byte_count": 0}
        row.update({k: (v.value if isinstance(v, JobStatus) else v) for k, v in values.items()})
        sealer = self.seals.for_new_job(job_id)
        if sealer is not None:
            row.update({c: sealer.seal("jobs", c, row[c]) for c in JOB_SEALED if row.get(c) is not None})
        self._insert_job(row)
        return job_id

    def update_job(self, job_id: str, **values: Any) -> None:
        values = {k: (v.value if isinstance(v, JobStatus) else v) for k, v in values.items()}
        sealer = self._sealer(job_id) if any(values.get(c) is not None for c in JOB_SEALED) else None
        if sealer is not None:
            values.update({c: sealer.seal("jobs", c, values[c]) for c in JOB_SEALED if values.get(c) is not None})
        self._update_job(job_id, values)

    @abstractmethod
    def _insert_job(self, row: dict[str, Any]) -> None: ...

    @abstractmethod
    def _update_job(self, job_id: str, values: dict[str, Any]) -> None: ...

    # --- what the statements below, the same on both backends (``?`` marks a parameter), go through:
    # the jobs a ``select * from jobs`` returns, the rows of a read, one write committed when it
    # returns (the rows it changed); ``what`` names the read or write in an error
    @abstractmethod
    def _job_rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]: ...

    def _jobs(self, query: str, params: list[Any], strict: bool = False) -> list[JobRecord]:
        """The jobs a query returns, sealed columns opened; a job whose key is not available has
        them empty and says so in ``sealed`` (``strict``: raises instead, e.g. to resume it)."""
        rows = self._job_rows(query, params)
        if strict:
            for r in rows:
                self._sealer(r["id"])
        return [JobRecord.from_row(self.seals.job_row(r)) for r in rows]

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
            strict=True,
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
