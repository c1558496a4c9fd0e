"""The PostgreSQL state's connections: a small pool for the writers, one connection for the locks.

- Writers (the transfer threads) each borrow a connection from a pool of at most ``POOL_SIZE``,
  opened on demand, all in autocommit: every statement is committed when it returns. One shared
  connection serialised the threads on its round trips (benchmarks/README.md: 0.42 ms per write
  with 8 threads on one connection, 0.15 ms with one each), so the pool earns its place.
- The run locks are session advisory locks, so they live on one connection of their own (``main``)
  that also runs the migrations. When it is lost the locks go with it: it is checked every
  ``lock_check_every`` seconds while locks are held, reopened, and the locks taken again (a
  :class:`~portshift.errors.LockedError` if another run took one meanwhile).
- A lost connection (restart, failover, ``pg_terminate_backend``) is reopened with backoff and the
  statement run again; past the budget the caller gets a :class:`~portshift.errors.StateError`.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from ..errors import ConfigError, LockedError, StateError
from ..redact import sanitize_message
from ..retry import Backoff, call_with_retries
from ..secrets import Secret
from .pg_url import PgTarget

log = logging.getLogger("portshift.state")
T = TypeVar("T")
#: how long a lost database is retried before the job stops (seconds of waiting)
RECONNECT = Backoff(base=0.5, cap=8.0, attempts=4, budget=60.0)
POOL_SIZE = 8
_WHERE = re.compile(r'^(connection failed: )?(connection to server at "[^"]*"( \([^)]*\))?, port \d+ failed: )?')


def lock_id(job_key: str) -> int:
    """A signed 64-bit advisory lock key derived from the job key."""
    return int.from_bytes(hashlib.sha256(b"portshift-run:" + job_key.encode()).digest()[:8], "big", signed=True)


def reason(e: BaseException) -> str:
    """libpq's reason, its first line without the host it names again, sanitised (it never
    carries the password; the masks apply anyway)."""
    lines = [_WHERE.sub("", ln.strip()).strip() for ln in str(e).splitlines()]
    text = next((ln for ln in lines if ln), type(e).__name__)
    return sanitize_message(text, 300)


def lost(e: BaseException) -> bool:
    return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)) and not isinstance(e, psycopg.errors.QueryCanceled)


def open_connection(target: PgTarget, password: Secret | None) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(**target.conninfo(password), autocommit=True)
    except psycopg.Error as e:
        err = ConfigError(
            f"cannot reach the state database {target.redacted}: {reason(e)}",
            hint="check the host, the port, the role and its password, and that the server's certificate "
            "is signed by the CA given as sslrootcert= or [state] ca_bundle",
        )
        err.why = reason(e)  # type: ignore[attr-defined]
        raise err from None


class Connections:
    def __init__(self, target: PgTarget, password: Secret | None) -> None:
        self.target = target
        self._password = password
        self.main = open_connection(target, password)
        self.main_lock = threading.RLock()
        self.held: list[int] = []
        self.held_shared: list[int] = []
        self.reconnect = RECONNECT
        self.lock_check_every = 2.0
        self.cancel: threading.Event | None = None
        self._checked = time.monotonic()
        self._idle: queue.LifoQueue[psycopg.Connection[Any] | None] = queue.LifoQueue()
        for _ in range(POOL_SIZE):
            self._idle.put(None)  # a free slot: a connection is opened when first needed
        self._all: list[psycopg.Connection[Any]] = []

    # --- the locks' connection -----------------------------------------------------------------
    def _reopen_main(self) -> None:
        self.main.close()
        self.main = open_connection(self.target, self._password)
        for held, fn in ((self.held, "pg_try_advisory_lock"), (self.held_shared, "pg_try_advisory_lock_shared")):
            for key in list(held):
                if not self.main.execute(f"select {fn}(%s)", [key]).fetchone()[0]:
                    held.remove(key)
                    raise LockedError("the run lock was lost while the state database was away, and another run took it")

    def on_main(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self.main_lock:
            if self.main.closed or self.main.broken:
                self._reopen_main()
            try:
                return fn(self.main)
            except psycopg.Error as e:
                if lost(e):
                    self.main.close()
                raise

    def _check_locks(self) -> None:
        if not (self.held or self.held_shared) or time.monotonic() - self._checked < self.lock_check_every:
            return
        self.on_main(lambda c: c.execute("select 1"))
        self._checked = time.monotonic()

    # --- the writers' pool ---------------------------------------------------------------------
    def _attempt(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        self._check_locks()
        conn = self._idle.get()
        try:
            if conn is None or conn.closed or conn.broken:
                if conn is not None:
                    self._all.remove(conn)
                conn = None
                conn = open_connection(self.target, self._password)
                self._all.append(conn)
            try:
                return fn(conn)
            except psycopg.Error as e:
                if lost(e):
                    conn.close()  # the next attempt opens a new one
                raise
        finally:
            self._idle.put(conn)

    def run(self, what: str, fn: Callable[[psycopg.Connection[Any]], T], *, on_main: bool = False) -> T:
        """Run ``fn`` with a connection, again on a new one while the database is away."""

        def on_retry(n: int, e: BaseException, delay: float) -> None:
            log.warning("state database %s: %s; retrying in %.1fs", self.target.redacted, reason(e), delay)

        try:
            return call_with_retries(
                (lambda: self.on_main(fn)) if on_main else (lambda: self._attempt(fn)),
                backoff=self.reconnect,
                should_retry=lambda e: lost(e) or isinstance(e, ConfigError),  # ConfigError: reopening failed
                cancel=self.cancel,
                on_retry=on_retry,
                what=what,
            )
        except (psycopg.Error, ConfigError) as e:
            why = reason(e) if isinstance(e, psycopg.Error) else getattr(e, "why", str(e))
            raise StateError(
                f"cannot {what} in the state database {self.target.redacted}: {why}",
                hint="check the database, then re-run the same command to resume",
            ) from None

    def close(self) -> None:
        with self.main_lock:
            if (self.held or self.held_shared) and not (self.main.closed or self.main.broken):
                try:  # released now, not when the server notices the connection is gone
                    self.main.execute("select pg_advisory_unlock_all()")
                except psycopg.Error:
                    pass
            self.held.clear()
            self.held_shared.clear()
            self.main.close()
        for conn in list(self._all):
            conn.close()
