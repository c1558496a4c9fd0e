"""The service database: SQLite through sqlite-utils (a one-machine trial), or PostgreSQL
(:mod:`.service_pg`, the same rows and methods).

It holds only what the service promises: job metadata (id, times, status, types, counts, the
manifest digest and a sanitised error), early-access sign-ups (name, e-mail, company: the only
personal data), and rate-limit counters keyed by HMAC-SHA-256(server secret, client IP). Never a
credential, a bucket listing or a client address. ``secure_delete`` is on, so deleted or
overwritten rows are zeroed on disk.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

TERMINAL = ("complete", "partial", "failed", "cancelled")

JOB_COLUMNS = {
    "id": str,
    "created_at": str,
    "started_at": str,
    "finished_at": str,
    "status": str,
    "source_type": str,
    "sink_type": str,
    "attempts": int,
    "file_count": int,
    "byte_count": int,
    "recordings_done": int,
    "recordings_failed": int,
    "recordings_skipped": int,
    "recordings_total": int,
    "portshift_job_id": str,
    "export_root": str,
    "manifest_sha256": str,
    "exit_code": int,
    "error": str,
    #: the name of the customer's key sealing the job's state (a KMS key ARN; never a secret), or None
    "sealed_with": str,
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ServiceDB:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        self.conn.execute("PRAGMA secure_delete=ON")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(self.conn)
        self._migrate()
        path.chmod(0o600)

    def _migrate(self) -> None:
        with self._lock:
            if "jobs" not in self.db.table_names():
                self.db["jobs"].create(JOB_COLUMNS, pk="id", not_null={"status"})
            if "recordings_total" not in self.db["jobs"].columns_dict:  # a service.db from before the total
                self.db["jobs"].add_column("recordings_total", int)
            if "sealed_with" not in self.db["jobs"].columns_dict:  # a service.db from before customer keys
                self.db["jobs"].add_column("sealed_with", str)
            if "signups" not in self.db.table_names():
                self.db["signups"].create({"id": int, "created_at": str, "name": str, "email": str, "company": str}, pk="id")
            if "email_key" not in self.db["signups"].columns_dict:
                # one row per e-mail address (case-insensitive); older duplicates keep the newest
                self.db["signups"].add_column("email_key", str)
                self.conn.execute("update signups set email_key = lower(email)")
                self.conn.execute("delete from signups where id not in (select max(id) from signups group by email_key)")
                self.conn.execute("create unique index signups_email_key on signups (email_key)")
            if "rate_limits" not in self.db.table_names():
                self.db["rate_limits"].create(
                    {"key": str, "bucket": str, "window_start": float, "count": int}, pk=("key", "bucket")
                )

    def close(self) -> None:
        with self._lock:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.conn.close()

    # --- jobs ---------------------------------------------------------------------------------
    def insert_job(self, **row: Any) -> None:
        base = {
            "created_at": now_iso(),
            "attempts": 0,
            "file_count": 0,
            "byte_count": 0,
            "recordings_done": 0,
            "recordings_failed": 0,
            "recordings_skipped": 0,
        }
        base.update(row)
        with self._lock:
            self.db["jobs"].insert(base)

    def update_job(self, job_id: str, **values: Any) -> None:
        with self._lock:
            self.db["jobs"].update(job_id, values)

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = list(self.db.query("select * from jobs where id = ?", [job_id]))
        return rows[0] if rows else None

    def jobs(self, job_ids: list[str]) -> list[dict[str, Any]]:
        if not job_ids:
            return []
        marks = ", ".join("?" * len(job_ids))
        with self._lock:
            return list(self.db.query(f"select * from jobs where id in ({marks})", job_ids))  # noqa: S608 - placeholders only

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status (for the operator, never the API)."""
        with self._lock:
            return dict(self.conn.execute("select status, count(*) from jobs group by status").fetchall())

    def unfinished_jobs(self) -> list[str]:
        with self._lock:
            return [
                r["id"]
                for r in self.db.query("select id from jobs where status not in ('complete', 'partial', 'failed', 'cancelled')")
            ]

    def finished_before(self, cutoff: str) -> list[str]:
        """Ids of jobs that ended before ``cutoff`` (an ISO time, UTC): retention.py."""
        marks = ", ".join("?" * len(TERMINAL))
        with self._lock:
            rows = self.conn.execute(
                f"select id from jobs where status in ({marks}) and finished_at < ?",  # noqa: S608 - placeholders only
                [*TERMINAL, cutoff],
            ).fetchall()
        return [r[0] for r in rows]

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            self.conn.execute("delete from jobs where id = ?", [job_id])

    # --- sign-ups -----------------------------------------------------------------------------
    def add_signup(self, name: str, email: str, company: str) -> None:
        """One row per e-mail address: signing up again updates the name and company."""
        with self._lock:
            self.conn.execute(
                "insert into signups (created_at, name, email, company, email_key) values (?, ?, ?, ?, ?) "
                "on conflict(email_key) do update set name = excluded.name, company = excluded.company, email = excluded.email",
                [now_iso(), name, email, company, email.lower()],
            )

    def signups(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query("select created_at, name, email, company from signups order by id"))

    def delete_signup(self, email: str) -> int:
        """Erase one person's sign-up (secure_delete zeroes it on disk). Returns rows deleted."""
        with self._lock:
            cur = self.conn.execute("delete from signups where email_key = ?", [email.strip().lower()])
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return cur.rowcount

    # --- rate limits --------------------------------------------------------------------------
    def hit(self, key: str, bucket: str, limit: int, window: float) -> float:
        """Count one request; return 0 if allowed, else the seconds until the window ends."""
        now = time.time()
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                row = self.conn.execute(
                    "select window_start, count from rate_limits where key = ? and bucket = ?", [key, bucket]
                ).fetchone()
                if row is None or now - row[0] >= window:
                    self.conn.execute(
                        "insert into rate_limits (key, bucket, window_start, count) values (?, ?, ?, 1) "
                        "on conflict(key, bucket) do update set window_start = excluded.window_start, count = 1",
                        [key, bucket, now],
                    )
                    wait = 0.0
                elif row[1] >= limit:
                    wait = max(0.001, row[0] + window - now)
                else:
                    self.conn.execute("update rate_limits set count = count + 1 where key = ? and bucket = ?", [key, bucket])
                    wait = 0.0
                # forget expired counters (the hashes of addresses that came by once)
                self.conn.execute("delete from rate_limits where bucket = ? and window_start < ?", [bucket, now - window])
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return wait
