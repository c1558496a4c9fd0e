"""Job state in a PostgreSQL database (psycopg 3), reached only over verified TLS.

Every write is committed when the call returns (a SIGKILL right after loses nothing), exactly
like the SQLite file; every write is an upsert, an update or a delete, so running it again after
a lost connection is the same as running it once. Connections, the run locks and reconnecting
are in :mod:`.pg_connections`; the URL and TLS rules in :mod:`.pg_url`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ..errors import ConfigError, LockedError
from ..records import JobRecord, JobStatus, Problem, RecordingStatus
from ..secrets import Secret
from . import JOB_COLUMNS, FileRecord, State, new_job_id, now_iso
from .pg_connections import Connections, lock_id, reason
from .pg_url import PgTarget, parse_url
from .postgres_migrations import migrate

T = TypeVar("T")
PAGE = 5000


class PostgresState(State):
    """The state in a PostgreSQL database. Open with :meth:`connect` (or :func:`open_state`)."""

    def __init__(self, target: PgTarget, connections: Connections) -> None:
        self.target = target
        self.connections = connections

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection that holds the run locks (for inspection; writes use the pool)."""
        return self.connections.main

    @classmethod
    def connect(cls, url: str, *, password: Secret | None = None, ca_bundle: Path | None = None) -> PostgresState:
        target = parse_url(url, ca_bundle=ca_bundle)
        connections = Connections(target, password)
        try:
            migrate(connections.main)
        except psycopg.Error as e:
            connections.close()
            raise ConfigError(
                f"cannot set up the state schema in {target.redacted}: {reason(e)}",
                hint="the role needs to own its schema (see docs/state.md)",
            ) from None
        except BaseException:
            connections.close()
            raise
        return cls(target, connections)

    @property
    def location(self) -> str:
        return self.target.redacted

    def close(self) -> None:
        self.connections.close()

    def _run(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self.connections.run(what, fn)

    def _rows(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._run(what, lambda c: c.execute(query, params).fetchall())

    def _write(self, what: str, query: str | sql.Composed, params: list[Any]) -> int:
        return self._run(what, lambda c: c.execute(query, params).rowcount)

    # --- locking ----------------------------------------------------------------------------
    def lock(self, job_key: str) -> None:
        key = lock_id(job_key)
        held = self.connections.held
        if key in held:
            return
        take = lambda c: c.execute("select pg_try_advisory_lock(%s)", [key]).fetchone()[0]  # noqa: E731
        if not self.connections.run("take the run lock", take, on_main=True):
            raise LockedError(
                "another portshift run of this job is in progress",
                hint="wait for it to finish; two runs of the same job never run at once",
            )
        held.append(key)

    # --- jobs -------------------------------------------------------------------------------
    def create_job(self, **values: Any) -> str:
        job_id = values.pop("id", None) or new_job_id()
        row = {"id": job_id, "started_at": now_iso(), "status": JobStatus.RUNNING.value, "file_count": 0, "byte_count": 0}
        row.update({k: (v.value if isinstance(v, JobStatus) else v) for k, v in values.items()})
        cols = self._columns(row)
        query = sql.SQL("insert into jobs ({}) values ({}) on conflict (id) do nothing").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols))
        )
        self._write("record the job", query, [row[c] for c in cols])
        return job_id

    def update_job(self, job_id: str, **values: Any) -> None:
        values = {k: (v.value if isinstance(v, JobStatus) else v) for k, v in values.items()}
        cols = self._columns(values)
        if not cols:
            return
        query = sql.SQL("update jobs set {} where id = %s").format(
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in cols)
        )
        self._write("update the job", query, [*(values[c] for c in cols), job_id])

    @staticmethod
    def _columns(values: dict[str, Any]) -> list[str]:
        unknown = set(values) - JOB_COLUMNS
        if unknown:
            raise ValueError(f"unknown job columns: {sorted(unknown)}")
        return sorted(values)

    def _jobs(self, query: str, params: list[Any]) -> list[JobRecord]:
        def fetch(c: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            with c.cursor(row_factory=dict_row) as cur:
                return cur.execute(query, params).fetchall()

        return [JobRecord.from_row(r) for r in self._run("read jobs", fetch)]

    def find_jobs(self, text: str, limit: int = 20) -> list[JobRecord]:
        exact = self._jobs("select * from jobs where id = %s", [text])
        if exact or not text:
            return exact
        like = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return self._jobs(
            "select * from jobs where id like %s escape '\\' or id like %s escape '\\' "
            "order by started_at desc, id desc limit %s",
            [like + "%", "%" + like, limit],
        )

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        return self._jobs("select * from jobs order by started_at desc, id desc limit %s", [limit])

    def unfinished_job(self, job_key: str) -> JobRecord | None:
        rows = self._jobs(
            "select * from jobs where job_key = %s and status != 'complete' order by started_at desc, id desc limit 1",
            [job_key],
        )
        return rows[0] if rows else None

    def last_complete_job(self, job_key: str) -> JobRecord | None:
        rows = self._jobs(
            "select * from jobs where job_key = %s and status = 'complete' order by window_end desc, started_at desc limit 1",
            [job_key],
        )
        return rows[0] if rows else None

    def abandon_unfinished(self, job_key: str) -> int:
        return self._write(
            "abandon the unfinished job",
            "update jobs set status = 'abandoned', finished_at = coalesce(finished_at, %s) "
            "where job_key = %s and status != 'complete' and status != 'abandoned'",
            [now_iso(), job_key],
        )

    def exported_by_earlier_jobs(self, job_key: str, since: str, exclude_job: str) -> dict[str, str]:
        rows = self._rows(
            "read earlier jobs",
            "select r.recording_id, r.job_id from recordings r join jobs j on j.id = r.job_id "
            "where j.job_key = %s and j.id != %s and j.window_end > %s and r.status = 'done'",
            [job_key, exclude_job, since],
        )
        return {rec: job for rec, job in rows}

    def oldest_pending(self, job_key: str) -> str | None:
        rows = self._rows(
            "read pending recordings",
            "select min(p.started_at) from recordings p join jobs j on j.id = p.job_id "
            "where j.job_key = %s and p.status = 'pending' and p.started_at is not null and not exists ("
            "select 1 from recordings d join jobs k on k.id = d.job_id "
            "where k.job_key = j.job_key and d.recording_id = p.recording_id and d.status = 'done')",
            [job_key],
        )
        return rows[0][0] if rows else None

    # --- progress ---------------------------------------------------------------------------
    def done_recordings(self, job_id: str) -> set[str]:
        rows = self._rows(
            "read done recordings", "select recording_id from recordings where job_id = %s and status = 'done'", [job_id]
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
        status = RecordingStatus(status)
        self._write(
            "record a recording",
            "insert into recordings (job_id, recording_id, status, reason, message, updated_at, started_at) "
            "values (%s, %s, %s, %s, %s, %s, %s) on conflict (job_id, recording_id) do update set "
            "status = excluded.status, reason = excluded.reason, message = excluded.message, "
            "updated_at = excluded.updated_at, started_at = coalesce(excluded.started_at, recordings.started_at)",
            [job_id, recording_id, status.value, reason, message[:500], now_iso(), started_at],
        )

    def add_missing(self, job_id: str, recording_id: str, artifact: str, reason: str, message: str) -> None:
        self._write(
            "record a missing artifact",
            "insert into missing_artifacts (job_id, recording_id, artifact, reason, message) values (%s, %s, %s, %s, %s) "
            "on conflict (job_id, recording_id, artifact) do update set reason = excluded.reason, message = excluded.message",
            [job_id, recording_id, artifact, reason, message[:500]],
        )

    def recording_counts(self, job_id: str) -> dict[str, int]:
        rows = self._rows(
            "count recordings", "select status, count(*) from recordings where job_id = %s group by status", [job_id]
        )
        return {r[0]: int(r[1]) for r in rows}

    def problems(self, job_id: str) -> list[Problem]:
        rows = self._rows(
            "read problems",
            "select recording_id, status, reason, message, '' as artifact from recordings "
            "where job_id = %s and status in ('failed', 'skipped', 'pending') "
            "union all select recording_id, 'missing', reason, message, artifact from missing_artifacts where job_id = %s "
            "order by 2, 1, 5",
            [job_id, job_id],
        )
        return [Problem(rec, status, reason or "", message or "", art or "") for rec, status, reason, message, art in rows]

    def outcome_counts(self, job_id: str) -> dict[str, dict[str, int]]:
        rows = self._rows(
            "count outcomes",
            "select status, coalesce(reason, ''), count(*) from recordings where job_id = %s group by 1, 2 "
            "union all select 'missing', coalesce(reason, ''), count(*) from missing_artifacts where job_id = %s group by 2",
            [job_id, job_id],
        )
        out: dict[str, dict[str, int]] = {}
        for status, why, n in rows:
            out.setdefault(status, {})[why] = int(n)
        return out

    def listed_ids(self, job_id: str) -> Iterator[str]:
        """In pages by id (the column is COLLATE "C": bytewise, like SQLite)."""
        after = None
        while True:
            rows = self._rows(
                "read listed ids",
                "select recording_id from recordings where job_id = %s and (%s::text is null or recording_id > %s) "
                "order by recording_id limit %s",
                [job_id, after, after, PAGE],
            )
            for (rid,) in rows:
                yield rid
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def exported_earlier(self, job_id: str) -> list[tuple[str, str]]:
        rows = self._rows(
            "read earlier exports",
            "select recording_id, message from recordings where job_id = %s and status = 'exported_earlier' "
            "order by recording_id",
            [job_id],
        )
        return [(rid, message) for rid, message in rows]

    # --- files ------------------------------------------------------------------------------
    def add_file(self, job_id: str, f: FileRecord) -> None:
        self._write(
            "record a file",
            "insert into files (job_id, key, size, sha256, recording_id, artifact, content_type, "
            "recorded_at, done_at, verified, provider_checksums, kind) values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "on conflict (job_id, key) do update set size = excluded.size, sha256 = excluded.sha256, "
            "recording_id = excluded.recording_id, artifact = excluded.artifact, "
            "content_type = excluded.content_type, recorded_at = excluded.recorded_at, "
            "done_at = excluded.done_at, verified = excluded.verified, "
            "provider_checksums = excluded.provider_checksums, kind = excluded.kind",
            [job_id, f.key, f.size, f.sha256, f.recording_id, f.artifact, f.content_type, f.recorded_at, now_iso(),
             f.verified, json.dumps(f.provider_checksums or {}, sort_keys=True), f.kind],
        )  # fmt: skip

    def remove_files_of(self, job_id: str, recording_id: str) -> None:
        self._write("remove files", "delete from files where job_id = %s and recording_id = %s", [job_id, recording_id])

    def done_artifacts(self, job_id: str, recording_id: str) -> set[str]:
        rows = self._rows(
            "read done artifacts",
            "select artifact from files where job_id = %s and recording_id = %s and kind = 'content'",
            [job_id, recording_id],
        )
        return {r[0] for r in rows}

    def remove_manifest_files(self, job_id: str) -> None:
        self._write("remove manifest files", "delete from files where job_id = %s and kind = 'manifest'", [job_id])

    def files(self, job_id: str, kind: str = "content") -> Iterator[dict[str, Any]]:
        """Done files of a job, sorted by key, read in pages (each page one retried statement)."""
        cols = ("key", "size", "sha256", "recording_id", "artifact", "content_type", "recorded_at", "verified")
        query = f"select {', '.join(cols)} from files where job_id = %s and kind = %s and key > %s order by key limit %s"  # noqa: S608 - fixed column names
        after = ""
        while True:
            rows = self._rows("read files", query, [job_id, kind, after, PAGE])
            for row in rows:
                yield dict(zip(cols, row))
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def last_file_done_at(self, job_id: str) -> str | None:
        rows = self._rows("read files", "select max(done_at) from files where job_id = %s and kind = 'content'", [job_id])
        return rows[0][0] if rows else None

    def totals(self, job_id: str) -> tuple[int, int]:
        rows = self._rows(
            "count files",
            "select count(*), coalesce(sum(size), 0) from files where job_id = %s and kind = 'content'",
            [job_id],
        )
        return int(rows[0][0]), int(rows[0][1])

    # --- the sinks' journal -----------------------------------------------------------------
    def journal_begin(self, job_id: str, key: str, data: dict[str, str]) -> None:
        self._write(
            "record an operation in flight",
            "insert into sink_journal (job_id, key, data, started_at) values (%s, %s, %s, %s) "
            "on conflict (job_id, key) do update set data = excluded.data, started_at = excluded.started_at",
            [job_id, key, json.dumps(data, sort_keys=True), now_iso()],
        )

    def journal_end(self, job_id: str, key: str) -> None:
        self._write("end an operation in flight", "delete from sink_journal where job_id = %s and key = %s", [job_id, key])

    def journal_pending(self, job_id: str) -> list[tuple[str, dict[str, str]]]:
        rows = self._rows(
            "read operations in flight", "select key, data from sink_journal where job_id = %s order by started_at", [job_id]
        )
        return [(key, json.loads(data)) for key, data in rows]
