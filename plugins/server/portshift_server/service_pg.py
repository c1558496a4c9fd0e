"""The service database on PostgreSQL: the same rows as :class:`~.db.ServiceDB`, over verified TLS.

``portshift serve --database postgresql://...`` keeps its jobs, sign-ups and rate-limit counters
in the schema ``portshift_service`` of that database, and every job's worker state (the core
state tables, set up by the core's own migrations) in the same database. The URL, TLS and
password rules, the connections and reconnecting are the core's (:mod:`portshift.state.pg_url`,
:mod:`portshift.state.pg_connections`): the service opens a
:class:`~portshift.state.postgres.PostgresState` and runs its own statements on its connections.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from portshift.errors import ConfigError
from portshift.secrets import Secret
from portshift.state.pg_connections import reason

from .db import JOB_COLUMNS, TERMINAL

SCHEMA = "portshift_service"
#: held (transaction-level) while the service sets up its schema ("portshift_svc")
SETUP_LOCK = 0x706F727473737663
_TYPES = {str: "text", int: "bigint"}

SETUP = [
    "create schema if not exists portshift_service",
    "create table if not exists portshift_service.jobs ("
    + ", ".join(f"{name} {_TYPES[kind]}" + (" primary key" if name == "id" else "") for name, kind in JOB_COLUMNS.items())
    + ")",
    "alter table portshift_service.jobs add column if not exists sealed_with text",  # a schema from before customer keys
    "create table if not exists portshift_service.signups (id bigint generated always as identity primary key, created_at text, "
    "name text, email text, company text, email_key text not null unique)",
    "create table if not exists portshift_service.rate_limits (key text, bucket text, window_start double precision, "
    "count bigint, primary key (key, bucket))",
    # which database role a running job's worker logs in with (job_roles.py), and which state
    # jobs (the core's jobs.id) belong to which service job
    "create table if not exists portshift_service.job_roles (role_name text primary key, service_job text not null, "
    "created_at text not null)",
    "create table if not exists portshift_service.state_owners (state_job_id text primary key, service_job text not null)",
    "create index if not exists state_owners_service_job on portshift_service.state_owners (service_job)",
]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_service_state(url: str, password: Secret | None, ca_bundle: Path | None) -> Any:
    """The core state on this database, migrated by the service's own role (one line on error)."""
    from portshift.state.pg_url import require_psycopg

    require_psycopg()
    from portshift.state.postgres import PostgresState

    return PostgresState.connect(url, password=password, ca_bundle=ca_bundle)


class PgServiceDB:
    """The service's rows in ``portshift_service``; the same methods as :class:`~.db.ServiceDB`."""

    path = None

    def __init__(self, state: Any) -> None:
        self.state = state  #: the core PostgresState of this database (its connections, its schema)
        self.location = state.location
        try:
            self._run("set up the service schema", self._setup)
            self.state_schema: str = self._run("read the schema", lambda c: c.execute("select current_schema()").fetchone()[0])
        except BaseException:
            state.close()
            raise

    @staticmethod
    def _setup(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", [SETUP_LOCK])
            for statement in SETUP:
                conn.execute(statement)  # type: ignore[arg-type] - fixed text, no input

    def _run(self, what: str, fn: Any) -> Any:
        try:
            return self.state.connections.run(what, fn)
        except psycopg.Error as e:
            raise ConfigError(f"cannot {what} in the service database {self.location}: {reason(e)}") from None

    def _query(self, what: str, query: str | sql.Composed, params: list[Any]) -> list[dict[str, Any]]:
        def fetch(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(query, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []

        return self._run(what, fetch)

    def _write(self, what: str, query: str | sql.Composed, params: list[Any]) -> int:
        return self._run(what, lambda c: c.execute(query, params).rowcount)  # type: ignore[arg-type]

    def close(self) -> None:
        self.state.close()

    # --- jobs ---------------------------------------------------------------------------------
    def insert_job(self, **row: Any) -> None:
        base = {"created_at": now_iso(), "attempts": 0, "file_count": 0, "byte_count": 0}
        base.update({"recordings_done": 0, "recordings_failed": 0, "recordings_skipped": 0}, **row)
        cols = self._columns(base)
        query = sql.SQL("insert into {}.jobs ({}) values ({})").format(
            sql.Identifier(SCHEMA),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        )
        self._write("record the job", query, [base[c] for c in cols])

    def update_job(self, job_id: str, **values: Any) -> None:
        cols = self._columns(values)
        if not cols:
            return
        query = sql.SQL("update {}.jobs set {} where id = %s").format(
            sql.Identifier(SCHEMA), sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in cols)
        )
        self._write("update the job", query, [*(values[c] for c in cols), job_id])

    @staticmethod
    def _columns(values: dict[str, Any]) -> list[str]:
        unknown = set(values) - set(JOB_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job columns: {sorted(unknown)}")
        return sorted(values)

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._query("read the job", "select * from portshift_service.jobs where id = %s", [job_id])
        return rows[0] if rows else None

    def jobs(self, job_ids: list[str]) -> list[dict[str, Any]]:
        if not job_ids:
            return []
        return self._query("read jobs", "select * from portshift_service.jobs where id = any(%s)", [list(job_ids)])

    def job_counts(self) -> dict[str, int]:
        rows = self._query("count jobs", "select status, count(*) as n from portshift_service.jobs group by status", [])
        return {r["status"]: int(r["n"]) for r in rows}

    def unfinished_jobs(self) -> list[str]:
        rows = self._query(
            "read unfinished jobs", "select id from portshift_service.jobs where status <> all(%s)", [list(TERMINAL)]
        )
        return [r["id"] for r in rows]

    def finished_before(self, cutoff: str) -> list[str]:
        """Ids of jobs that ended before ``cutoff`` (an ISO time, UTC): retention.py."""
        rows = self._query(
            "read old jobs",
            "select id from portshift_service.jobs where status = any(%s) and finished_at < %s",
            [list(TERMINAL), cutoff],
        )
        return [r["id"] for r in rows]

    def delete_job(self, job_id: str) -> None:
        self._write("delete the job", "delete from portshift_service.jobs where id = %s", [job_id])

    # --- sign-ups -----------------------------------------------------------------------------
    def add_signup(self, name: str, email: str, company: str) -> None:
        self._write(
            "record the sign-up",
            "insert into portshift_service.signups (created_at, name, email, company, email_key) values (%s, %s, %s, %s, %s) "
            "on conflict (email_key) do update set name = excluded.name, company = excluded.company, email = excluded.email",
            [now_iso(), name, email, company, email.lower()],
        )

    def signups(self) -> list[dict[str, Any]]:
        return self._query(
            "read sign-ups", "select created_at, name, email, company from portshift_service.signups order by id", []
        )

    def delete_signup(self, email: str) -> int:
        """Erase one person's sign-up. ``vacuum full`` rewrites the (small) table into a new file,
        so the row's bytes leave the table's files at once; PostgreSQL's write-ahead log keeps
        them until it is recycled (docs/serve.md)."""
        deleted = self._write(
            "delete the sign-up", "delete from portshift_service.signups where email_key = %s", [email.strip().lower()]
        )
        if deleted:
            self._write("compact the sign-ups", "vacuum full portshift_service.signups", [])
        return deleted

    # --- rate limits --------------------------------------------------------------------------
    def hit(self, key: str, bucket: str, limit: int, window: float) -> float:
        """Count one request; return 0 if allowed, else the seconds until the window ends."""

        def count(conn: psycopg.Connection[Any]) -> float:
            now = time.time()
            with conn.transaction():
                row = conn.execute(
                    "select window_start, count from portshift_service.rate_limits where key = %s and bucket = %s for update",
                    [key, bucket],
                ).fetchone()
                if row is None or now - row[0] >= window:
                    conn.execute(
                        "insert into portshift_service.rate_limits (key, bucket, window_start, count) values (%s, %s, %s, 1) "
                        "on conflict (key, bucket) do update set window_start = excluded.window_start, count = 1",
                        [key, bucket, now],
                    )
                    wait = 0.0
                elif row[1] >= limit:
                    wait = max(0.001, row[0] + window - now)
                else:
                    conn.execute(
                        "update portshift_service.rate_limits set count = count + 1 where key = %s and bucket = %s", [key, bucket]
                    )
                    wait = 0.0
                conn.execute(
                    "delete from portshift_service.rate_limits where bucket = %s and window_start < %s", [bucket, now - window]
                )
            return wait

        return self._run("count the request", count)
