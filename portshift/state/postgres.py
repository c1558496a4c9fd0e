"""Job state in a PostgreSQL database (psycopg 3), reached only over verified TLS.

Every write is committed when the call returns (a SIGKILL right after loses nothing), exactly
like the SQLite file; every write is an upsert, an update or a delete, so running it again after
a lost connection is the same as running it once. Connections, the run locks and reconnecting
are in :mod:`.pg_connections`; the URL and TLS rules in :mod:`.pg_url`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from ..errors import ConfigError, LockedError
from ..secrets import Secret
from . import JOB_COLUMNS, State
from .pg_connections import Connections, lock_id, reason
from .pg_url import PgTarget, parse_url
from .postgres_migrations import migrate

T = TypeVar("T")


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
        self.seals.forget()
        self.connections.close()

    def _run(self, what: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        return self.connections.run(what, fn)

    @staticmethod
    def _pg(query: str) -> str:
        """The shared statements of :class:`State` mark parameters ``?``; psycopg's are ``%s``."""
        return query.replace("?", "%s")

    def _rows(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._run(what, lambda c: c.execute(self._pg(query), params).fetchall())

    def _write(self, what: str, query: str | sql.Composed, params: list[Any]) -> int:
        statement = self._pg(query) if isinstance(query, str) else query
        return self._run(what, lambda c: c.execute(statement, params).rowcount)

    # --- locking ----------------------------------------------------------------------------
    def lock(self, job_key: str) -> None:
        if not self.try_lock(job_key):
            raise LockedError(
                "another portshift run of this job is in progress",
                hint="wait for it to finish; two runs of the same job never run at once",
            )

    def try_lock(self, name: str, *, shared: bool = False) -> bool:
        """A named session advisory lock on the locks' connection (gone with the session, so with
        the process); False when another session holds it."""
        key = lock_id(name)
        held = self.connections.held_shared if shared else self.connections.held
        if key in held:
            return True
        fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        take = lambda c: c.execute(f"select {fn}(%s)", [key]).fetchone()[0]  # noqa: E731
        if not self.connections.run("take a lock", take, on_main=True):
            return False
        held.append(key)
        return True

    def unlock(self, name: str) -> None:
        key = lock_id(name)
        pairs = ((self.connections.held, "pg_advisory_unlock"), (self.connections.held_shared, "pg_advisory_unlock_shared"))
        for held, fn in pairs:
            if key in held:
                held.remove(key)
                self.connections.run("give a lock back", lambda c, fn=fn: c.execute(f"select {fn}(%s)", [key]), on_main=True)

    def lock_free(self, name: str) -> bool:
        """Nobody holds the lock: taken and given back at once on a pool connection."""
        key = lock_id(name)

        def probe(c: psycopg.Connection[Any]) -> bool:
            if not c.execute("select pg_try_advisory_lock(%s)", [key]).fetchone()[0]:
                return False
            c.execute("select pg_advisory_unlock(%s)", [key])
            return True

        return self._run("check a lock", probe)

    def _write_many(self, what: str, query: str, rows: list[list[Any]]) -> None:
        if not rows:
            return

        def write(c: psycopg.Connection[Any]) -> None:
            with c.transaction(), c.cursor() as cur:
                cur.executemany(self._pg(query), rows)

        self._run(what, write)

    def _write_batch(self, what: str, steps: list[tuple[str, list[list[Any]]]]) -> list[int]:
        def write(c: psycopg.Connection[Any]) -> list[int]:
            counts = []
            with c.transaction(), c.cursor() as cur:
                for query, rows in steps:
                    if len(rows) == 1:
                        counts.append(cur.execute(self._pg(query), rows[0]).rowcount)
                    else:
                        cur.executemany(self._pg(query), rows)
                        counts.append(-1)
            return counts

        return self._run(what, write)

    _GREATEST = "greatest"

    def _write_returning(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._rows(what, query, params)  # autocommit: committed when it returns

    def _claim(self, job_id: str, worker_id: str, limit: int) -> list[tuple[Any, ...]]:
        query = (
            "update recordings r set claimed_by = %s from (select job_id, recording_id from recordings "
            "where job_id = %s and status = 'todo' and claimed_by is null order by started_at, recording_id limit %s "
            "for update skip locked) c where r.job_id = c.job_id and r.recording_id = c.recording_id "
            "returning r.recording_id, r.started_at, r.ref, r.sealed_id"
        )
        return self._run("claim recordings", lambda c: c.execute(query, [worker_id, job_id, limit]).fetchall())

    # --- jobs -------------------------------------------------------------------------------
    def _insert_job(self, row: dict[str, Any]) -> None:
        cols = self._columns(row)
        query = sql.SQL("insert into jobs ({}) values ({}) on conflict (id) do nothing").format(
            sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols))
        )
        self._write("record the job", query, [row[c] for c in cols])

    def _update_job(self, job_id: str, values: dict[str, Any]) -> None:
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

    def _job_rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        def fetch(c: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            with c.cursor(row_factory=dict_row) as cur:
                return cur.execute(self._pg(query), params).fetchall()

        return self._run("read jobs", fetch)
