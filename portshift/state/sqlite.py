"""Job state in one SQLite file (sqlite-utils): the embedded default.

``secure_delete`` is on so overwritten values do not linger. Writes come from worker threads
through one connection guarded by a lock; each is committed when it returns (WAL).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LockedError, StateError
from . import JOB_COLUMNS, State, default_state_path
from .sqlite_migrations import migrate, up_to_date


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


def _columns(values: dict[str, Any]) -> list[str]:
    unknown = set(values) - JOB_COLUMNS
    if unknown:
        raise ValueError(f"unknown job columns: {sorted(unknown)}")
    return sorted(values)


class SqliteState(State):
    """The state file. Open with :meth:`open`; use as a context manager."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn
        self._db: Any = None
        self._lock = threading.RLock()
        self._lock_files: list[int] = []
        self._named: dict[str, int] = {}  #: named locks held (try_lock), by name
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
            if not up_to_date(conn):
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

    @property
    def db(self) -> Any:
        """The connection as a ``sqlite_utils.Database`` (migrations, tests); imported when first
        used, so a run on an up-to-date file never imports sqlite_utils."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def close(self) -> None:
        self.seals.forget()
        for fd in [*self._lock_files, *self._named.values()]:
            os.close(fd)
        self._lock_files.clear()
        self._named.clear()
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
        if not self.try_lock(job_key):
            raise LockedError(
                "another portshift run of this job is in progress",
                hint="wait for it to finish; two runs of the same job never run at once",
            )

    def _lock_path(self, name: str) -> Path:
        lock_dir = self.path.parent / (self.path.name + ".locks")
        lock_dir.mkdir(exist_ok=True, mode=0o700)
        stem = name[:32] if re.fullmatch(r"[0-9a-f]{64}", name) else hashlib.sha256(name.encode()).hexdigest()[:32]
        return lock_dir / f"{stem}.lock"

    def try_lock(self, name: str, *, shared: bool = False) -> bool:
        """A named lock (``flock``: held until :meth:`unlock` or the process ends, even on
        SIGKILL); False when another process, or another holder in this one, has it."""
        if name in self._named:
            return True
        fd = os.open(self._lock_path(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._named[name] = fd
        return True

    def unlock(self, name: str) -> None:
        fd = self._named.pop(name, None)
        if fd is not None:
            os.close(fd)

    def lock_free(self, name: str) -> bool:
        """Nobody holds the lock (checked with a lock of our own, given back at once)."""
        path = self._lock_path(name)
        if not path.exists():
            return True
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    # --- jobs -------------------------------------------------------------------------------
    @_guard
    def _insert_job(self, row: dict[str, Any]) -> None:
        cols = _columns(row)
        self._write(
            "record the job",
            f"insert into jobs ({', '.join(cols)}) values ({', '.join('?' * len(cols))})",  # noqa: S608 - known columns
            [row[c] for c in cols],
        )

    @_guard
    def _update_job(self, job_id: str, values: dict[str, Any]) -> None:
        cols = _columns(values)
        if cols:
            sets = ", ".join(f"{c} = ?" for c in cols)
            self._write("update the job", f"update jobs set {sets} where id = ?", [*(values[c] for c in cols), job_id])  # noqa: S608

    def _job_rows(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.conn.execute(query, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur]

    def _rows(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        # reads take the lock too: a statement of another thread must never run inside (and, by
        # failing, end) the write transaction one thread has open on the shared connection
        with self._lock:
            return list(self.conn.execute(query, params))

    @_guard
    def _write(self, what: str, query: str, params: list[Any]) -> int:
        with self._lock, self._immediate():
            return self.conn.execute(query, params).rowcount

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """A write transaction that takes the write lock first: a statement that reads then writes
        in its own transaction gets SQLITE_BUSY at once, without waiting, when another process
        wrote in between (WAL snapshot); ``BEGIN IMMEDIATE`` waits its turn instead."""
        self.conn.execute("begin immediate")
        try:
            yield
            self.conn.execute("commit")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("rollback")
            raise

    @_guard
    def _write_many(self, what: str, query: str, rows: list[list[Any]]) -> None:
        if not rows:
            return
        with self._lock, self._immediate():
            self.conn.executemany(query, rows)

    @_guard
    def _write_returning(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        with self._lock, self._immediate():
            return self.conn.execute(query, params).fetchall()

    @_guard
    def _write_batch(self, what: str, steps: list[tuple[str, list[list[Any]]]]) -> list[int]:
        counts = []
        with self._lock, self._immediate():
            for query, rows in steps:
                if len(rows) == 1:
                    counts.append(self.conn.execute(query, rows[0]).rowcount)
                else:
                    self.conn.executemany(query, rows)
                    counts.append(-1)
        return counts

    def _claim(self, job_id: str, worker_id: str, limit: int) -> list[tuple[Any, ...]]:
        # one statement under SQLite's single writer: no two workers can take the same row
        return self._write_returning(
            "claim recordings",
            "update recordings set claimed_by = ? where rowid in (select rowid from recordings "
            "where job_id = ? and status = 'todo' and claimed_by is null order by started_at, recording_id limit ?) "
            "returning recording_id, started_at, ref, sealed_id",
            [worker_id, job_id, limit],
        )
