"""Job state in one SQLite file (sqlite-utils): the embedded default.

``secure_delete`` is on so overwritten values do not linger. Writes come from worker threads
through one connection guarded by a lock; each is committed when it returns (WAL).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

from ..errors import ConfigError, LockedError, StateError
from ..records import JobRecord, JobStatus, Problem, RecordingStatus
from . import FileRecord, State, default_state_path, new_job_id, now_iso
from .sqlite_migrations import migrate


def _guard(fn):  # noqa: ANN001, ANN202
    """Turn SQLite write failures (disk full, read-only file system) into one clear StateError."""
    import functools

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.OperationalError as e:
            raise StateError(
                f"cannot write the state file {self.path}: {e}",
                hint="free space or fix permissions, then re-run the same command to resume",
            ) from None

    return wrapper


class SqliteState(State):
    """The state file. Open with :meth:`open`; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._lock_files: list[int] = []
        self.created = False  #: this process created the file

    @classmethod
    def open_read_only(cls, path: Path) -> SqliteState:
        """Read a state file another process is writing (the service watching its workers):
        no migration, no write, no file created. A file not migrated yet raises StateError."""
        if not path.is_file():
            raise ConfigError(f"no state file at {path}", hint="nothing has run yet")
        try:
            conn = sqlite3.connect(
                "file:" + urllib.parse.quote(str(path)) + "?mode=ro", uri=True, check_same_thread=False, timeout=2
            )
            state = cls(path, conn)
            conn.execute("select id from jobs limit 0")
        except sqlite3.Error as e:
            raise StateError(f"cannot read the state file {path} yet: {e}") from None
        return state

    @classmethod
    def open(cls, path: Path | str | None = None, *, create: bool = True) -> SqliteState:
        path = Path(path) if path else default_state_path()
        if not create and not path.exists():
            raise ConfigError(f"no state file at {path}", hint="nothing has run yet, or use --state to point at it")
        created = not path.exists()
        if path.exists() and path.is_dir():
            raise ConfigError(f"--state {path} is a folder", hint="give the path of a file, e.g. state.db")
        if not path.parent.exists():
            if path == default_state_path():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                raise ConfigError(f"the folder of the state file {path} does not exist", hint="create it first")
        if created:
            try:  # private from the first byte: SQLite gives -wal/-shm the database file's mode
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as e:
                raise ConfigError(f"cannot create the state file {path}: {e.strerror}") from None
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            state = cls(path, conn)
            state.created = created
            migrate(state.db)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"cannot open the state file {path}: {e}", hint="use --state to choose another file") from None
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass
        return state

    @property
    def location(self) -> str:
        return str(self.path)

    def close(self) -> None:
        for fd in self._lock_files:
            os.close(fd)
        self._lock_files.clear()
        self.conn.close()

    def discard_if_unused(self) -> None:
        """Remove the state file this process created when no job was ever recorded in it (a run
        that stopped on bad input leaves nothing behind)."""
        if not self.created:
            return
        if self.conn.execute("select count(*) from jobs").fetchone()[0]:
            return
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
        locks = self.path.parent / (self.path.name + ".locks")
        if locks.is_dir():
            for f in locks.iterdir():
                f.unlink()
            locks.rmdir()

    # --- locking: one run per job file at a time ------------------------------------------
    def lock(self, job_key: str) -> None:
        """Take the run lock of this job (released when the process ends, even on SIGKILL)."""
        lock_dir = self.path.parent / (self.path.name + ".locks")
        lock_dir.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(lock_dir / f"{job_key[:32]}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(
                "another portshift run of this job is in progress",
                hint="wait for it to finish; two runs of the same job never run at once",
            ) from None
        self._lock_files.append(fd)

    # --- jobs -------------------------------------------------------------------------------
    @_guard
    def create_job(self, **values: Any) -> str:
        job_id = values.pop("id", None) or new_job_id()
        row = {"id": job_id, "started_at": now_iso(), "status": JobStatus.RUNNING.value, "file_count": 0, "byte_count": 0}
        row.update({k: (v.value if isinstance(v, JobStatus) else v) for k, v in values.items()})
        with self._lock:
            self.db["jobs"].insert(row)
        return job_id

    @_guard
    def update_job(self, job_id: str, **values: Any) -> None:
        values = {k: (v.value if isinstance(v, JobStatus) else v) for k, v in values.items()}
        with self._lock:
            self.db["jobs"].update(job_id, values)

    def _jobs(self, sql: str, params: list[Any]) -> list[JobRecord]:
        return [JobRecord.from_row(r) for r in self.db.query(sql, params)]

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

    @_guard
    def abandon_unfinished(self, job_key: str) -> int:
        """Mark unfinished jobs of this job file as abandoned (``--new``)."""
        with self._lock:
            cur = self.conn.execute(
                "update jobs set status = 'abandoned', finished_at = coalesce(finished_at, ?) "
                "where job_key = ? and status != 'complete' and status != 'abandoned'",
                [now_iso(), job_key],
            )
            return cur.rowcount

    def exported_by_earlier_jobs(self, job_key: str, since: str, exclude_job: str) -> dict[str, str]:
        """Recording id -> the id of the job that exported it, for recordings done by other jobs
        of this job file whose window ends after ``since`` (a window re-listed by ``--since last``)."""
        rows = self.conn.execute(
            "select r.recording_id, r.job_id from recordings r join jobs j on j.id = r.job_id "
            "where j.job_key = ? and j.id != ? and j.window_end > ? and r.status = 'done'",
            [job_key, exclude_job, since],
        )
        return {rec: job for rec, job in rows}

    def oldest_pending(self, job_key: str) -> str | None:
        """The start time of the oldest recording left pending by a job of this job file and not
        exported since (``--since last`` lists from there, so it is picked up once ready)."""
        row = self.conn.execute(
            "select min(p.started_at) from recordings p join jobs j on j.id = p.job_id "
            "where j.job_key = ? and p.status = 'pending' and p.started_at is not null and not exists ("
            "select 1 from recordings d join jobs k on k.id = d.job_id "
            "where k.job_key = j.job_key and d.recording_id = p.recording_id and d.status = 'done')",
            [job_key],
        ).fetchone()
        return row[0] if row else None

    # --- progress ---------------------------------------------------------------------------
    def done_recordings(self, job_id: str) -> set[str]:
        return {
            r[0] for r in self.conn.execute("select recording_id from recordings where job_id = ? and status = 'done'", [job_id])
        }

    @_guard
    def set_recording(
        self,
        job_id: str,
        recording_id: str,
        status: RecordingStatus | str,
        reason: str = "",
        message: str = "",
        started_at: str | None = None,
    ) -> None:
        status = RecordingStatus(status)
        with self._lock:
            self.conn.execute(
                "insert into recordings (job_id, recording_id, status, reason, message, updated_at, started_at) "
                "values (?, ?, ?, ?, ?, ?, ?) on conflict(job_id, recording_id) do update set "
                "status = excluded.status, reason = excluded.reason, message = excluded.message, "
                "updated_at = excluded.updated_at, started_at = coalesce(excluded.started_at, recordings.started_at)",
                [job_id, recording_id, status.value, reason, message[:500], now_iso(), started_at],
            )

    @_guard
    def add_missing(self, job_id: str, recording_id: str, artifact: str, reason: str, message: str) -> None:
        """One artifact the source said does not exist (the recording is still exported)."""
        with self._lock:
            self.conn.execute(
                "insert into missing_artifacts (job_id, recording_id, artifact, reason, message) values (?, ?, ?, ?, ?) "
                "on conflict(job_id, recording_id, artifact) do update set reason = excluded.reason, "
                "message = excluded.message",
                [job_id, recording_id, artifact, reason, message[:500]],
            )

    def recording_counts(self, job_id: str) -> dict[str, int]:
        return {
            r[0]: r[1]
            for r in self.conn.execute("select status, count(*) from recordings where job_id = ? group by status", [job_id])
        }

    def problems(self, job_id: str) -> list[Problem]:
        """Recordings not exported (failed, skipped, pending) and artifacts missing at the source."""
        rows = self.conn.execute(
            "select recording_id, status, reason, message, '' from recordings "
            "where job_id = ? and status in ('failed', 'skipped', 'pending') "
            "union all select recording_id, 'missing', reason, message, artifact from missing_artifacts where job_id = ? "
            "order by 2, 1, 5",
            [job_id, job_id],
        )
        return [Problem(rec, status, reason or "", message or "", art or "") for rec, status, reason, message, art in rows]

    def outcome_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        """Recordings per outcome and reason, and files missing at the source per reason:
        ``{"done": {"": 12}, "skipped": {"private": 1}, "missing": {"media_not_found": 2}}``."""
        out: dict[str, dict[str, int]] = {}
        rows = self.conn.execute(
            "select status, coalesce(reason, ''), count(*) from recordings where job_id = ? group by 1, 2 "
            "union all select 'missing', coalesce(reason, ''), count(*) from missing_artifacts where job_id = ? group by 2",
            [job_id, job_id],
        )
        for status, reason, n in rows:
            out.setdefault(status, {})[reason] = n
        return out

    def listed_ids(self, job_id: str) -> Iterator[str]:
        """Every recording id the job listed, in code-point order (a backend must sort bytes-wise,
        e.g. COLLATE "C" on PostgreSQL): the manifest's ``listed ids sha256`` is computed over it."""
        for (rid,) in self.conn.execute("select recording_id from recordings where job_id = ? order by recording_id", [job_id]):
            yield rid

    def exported_earlier(self, job_id: str) -> list[tuple[str, str]]:
        """(recording id, message) of the recordings a --since last job found exported by an earlier job."""
        return list(
            self.conn.execute(
                "select recording_id, message from recordings where job_id = ? and status = 'exported_earlier' "
                "order by recording_id",
                [job_id],
            )
        )

    @_guard
    def add_file(self, job_id: str, f: FileRecord) -> None:
        with self._lock:
            self.conn.execute(
                "insert into files (job_id, key, size, sha256, recording_id, artifact, content_type, "
                "recorded_at, done_at, verified, provider_checksums, kind) values (?,?,?,?,?,?,?,?,?,?,?,?) "
                "on conflict(job_id, key) do update set size = excluded.size, sha256 = excluded.sha256, "
                "recording_id = excluded.recording_id, artifact = excluded.artifact, "
                "content_type = excluded.content_type, recorded_at = excluded.recorded_at, "
                "done_at = excluded.done_at, verified = excluded.verified, "
                "provider_checksums = excluded.provider_checksums, kind = excluded.kind",
                [
                    job_id,
                    f.key,
                    f.size,
                    f.sha256,
                    f.recording_id,
                    f.artifact,
                    f.content_type,
                    f.recorded_at,
                    now_iso(),
                    f.verified,
                    json.dumps(f.provider_checksums or {}, sort_keys=True),
                    f.kind,
                ],
            )

    @_guard
    def remove_files_of(self, job_id: str, recording_id: str) -> None:
        with self._lock:
            self.conn.execute("delete from files where job_id = ? and recording_id = ?", [job_id, recording_id])

    def done_artifacts(self, job_id: str, recording_id: str) -> set[str]:
        return {
            r[0]
            for r in self.conn.execute(
                "select artifact from files where job_id = ? and recording_id = ? and kind = 'content'",
                [job_id, recording_id],
            )
        }

    @_guard
    def remove_manifest_files(self, job_id: str) -> None:
        with self._lock:
            self.conn.execute("delete from files where job_id = ? and kind = 'manifest'", [job_id])

    def files(self, job_id: str, kind: str = "content") -> Iterator[dict[str, Any]]:
        """Done files of a job, sorted by key, streamed from the DB."""
        cur = self.conn.execute(
            "select key, size, sha256, recording_id, artifact, content_type, recorded_at, verified "
            "from files where job_id = ? and kind = ? order by key",
            [job_id, kind],
        )
        cols = [d[0] for d in cur.description]
        for row in cur:
            yield dict(zip(cols, row))

    def last_file_done_at(self, job_id: str) -> str | None:
        """When the job's last content file was stored (None when it has none): the manifest's
        ``# finished``, the same on every rewrite of the manifest."""
        row = self.conn.execute("select max(done_at) from files where job_id = ? and kind = 'content'", [job_id]).fetchone()
        return row[0] if row else None

    def totals(self, job_id: str) -> tuple[int, int]:
        row = self.conn.execute(
            "select count(*), coalesce(sum(size), 0) from files where job_id = ? and kind = 'content'", [job_id]
        ).fetchone()
        return int(row[0]), int(row[1])

    # --- the sinks' journal
    @_guard
    def journal_begin(self, job_id: str, key: str, data: dict[str, str]) -> None:
        with self._lock:
            self.conn.execute(
                "insert into sink_journal (job_id, key, data, started_at) values (?, ?, ?, ?) "
                "on conflict(job_id, key) do update set data = excluded.data, started_at = excluded.started_at",
                [job_id, key, json.dumps(data, sort_keys=True), now_iso()],
            )

    @_guard
    def journal_end(self, job_id: str, key: str) -> None:
        with self._lock:
            self.conn.execute("delete from sink_journal where job_id = ? and key = ?", [job_id, key])

    def journal_pending(self, job_id: str) -> list[tuple[str, dict[str, str]]]:
        rows = self.conn.execute("select key, data from sink_journal where job_id = ? order by started_at", [job_id]).fetchall()
        return [(key, json.loads(data)) for key, data in rows]
