"""Many workers on one job: the listing as ``todo`` rows, claims, workers and their leases.

The statements are the same on both backends (``?`` marks a parameter) except the claim itself,
which each backend words for its own locking (:meth:`Claims._claim`): ``FOR UPDATE SKIP LOCKED``
on PostgreSQL, one ``UPDATE ... RETURNING`` under SQLite's single writer.

A worker is alive while it holds its worker lock (a session advisory lock on PostgreSQL, a
``flock`` next to the SQLite file: both vanish with the process, even on SIGKILL) *and* renews its
lease in time (a machine that vanished holds no socket the database notices soon). A dead
worker's claims go back to the pool and its journal entries are cleaned up by whoever notices.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..records import RecordingStatus
from .rows import FILE_UPSERT, FileRecord


def worker_lock(job_id: str, worker_id: str) -> str:
    return f"worker:{job_id}:{worker_id}"


def listing_lock(job_id: str) -> str:
    return f"listing:{job_id}"


def finishing_lock(job_id: str) -> str:
    return f"finishing:{job_id}"


def planning_lock(job_key: str) -> str:
    return f"planning:{job_key}"


@dataclass
class Claimed:
    """A recording a worker claimed: what rebuilds it (see :meth:`portshift.Recording`)."""

    id: str
    started_at: str | None
    fields: dict[str, str] = field(default_factory=dict)
    size: int | None = None

    @staticmethod
    def ref(fields: dict[str, str], size: int | None) -> str:
        return json.dumps({"fields": fields, "size": size}, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_row(cls, rid: str, started_at: str | None, ref: str | None) -> Claimed:
        doc: dict[str, Any] = json.loads(ref) if ref else {}
        return cls(rid, started_at, {str(k): str(v) for k, v in (doc.get("fields") or {}).items()}, doc.get("size"))


class Claims:
    """Mixed into :class:`~portshift.state.State`; relies on its ``_rows``/``_write`` and the
    backend's locks (``try_lock``/``unlock``/``lock_free``) and ``_write_many``/``_claim``."""

    # what each backend provides (``_rows``/``_write`` come from State)
    def _rows(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self, what: str, query: str, params: list[Any]) -> int:
        raise NotImplementedError

    def _write_many(self, what: str, query: str, rows: list[list[Any]]) -> None:
        raise NotImplementedError

    def _claim(self, job_id: str, worker_id: str, limit: int) -> list[tuple[Any, ...]]:
        """Claim up to ``limit`` rows: ``(recording_id, started_at, ref, sealed_id)`` of each."""
        raise NotImplementedError

    def _sealer(self, job_id: str) -> Any:
        raise NotImplementedError

    def _journal_opened(self, job_id: str, rows: list[tuple[Any, ...]]) -> list[tuple[str, dict[str, str]]]:
        raise NotImplementedError

    def _write_returning(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        """One write that returns rows (``RETURNING``), committed when it returns."""
        raise NotImplementedError

    def _write_batch(self, what: str, steps: list[tuple[str, list[list[Any]]]]) -> list[int]:
        """Several statements, each with its rows of parameters, in one transaction committed when
        it returns: the rows each changed (a statement with one row of parameters; else -1)."""
        raise NotImplementedError

    def _file_row(self, job_id: str, f: FileRecord) -> list[Any]:
        raise NotImplementedError

    def try_lock(self, name: str, *, shared: bool = False) -> bool:
        """Take a named lock without waiting (held until :meth:`unlock` or the process ends)."""
        raise NotImplementedError

    def unlock(self, name: str) -> None:
        raise NotImplementedError

    def lock_free(self, name: str) -> bool:
        """Nobody holds this named lock."""
        raise NotImplementedError

    # --- workers ------------------------------------------------------------------------------
    def register_worker(self, job_id: str, worker_id: str, label: str, attempt: int, lease: float) -> None:
        """Record this process as a worker of the job (its worker lock must be held already)."""
        from . import now_iso

        self._write(
            "register the worker",
            "insert into workers (job_id, id, label, attempt, host, pid, started_at, lease_until, ended_at) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, null)",
            [job_id, worker_id, label, attempt, socket.gethostname()[:100], os.getpid(), now_iso(), time.time() + lease],
        )

    def renew_worker(self, job_id: str, worker_id: str, lease: float) -> bool:
        """Extend the lease; False when the worker was found dead meanwhile (its claims are gone)."""
        return bool(
            self._write(
                "renew the worker's lease",
                "update workers set lease_until = ? where job_id = ? and id = ? and ended_at is null",
                [time.time() + lease, job_id, worker_id],
            )
        )

    def end_worker(self, job_id: str, worker_id: str) -> None:
        """This worker stops: what it still holds goes back to the pool at once."""
        from . import now_iso

        self._write(
            "end the worker",
            "update workers set ended_at = ? where job_id = ? and id = ? and ended_at is null",
            [now_iso(), job_id, worker_id],
        )
        self._release(job_id, worker_id)

    def _release(self, job_id: str, worker_id: str) -> int:
        return self._write(
            "release claims",
            "update recordings set claimed_by = null where job_id = ? and claimed_by = ? and status = 'todo'",
            [job_id, worker_id],
        )

    def live_workers(self, job_id: str, exclude: str = "") -> list[str]:
        """Workers of the job that hold their lock and their lease (``exclude``: this one)."""
        rows = self._rows(
            "read workers",
            "select id, lease_until from workers where job_id = ? and ended_at is null and id != ?",
            [job_id, exclude],
        )
        now = time.time()
        return [w for w, until in rows if (until or 0) >= now and not self.lock_free(worker_lock(job_id, w))]

    def reap(self, job_id: str, me: str = "") -> list[str]:
        """Find the job's dead workers, mark them ended and put their claims back; their ids."""
        from . import now_iso

        rows = self._rows(
            "read workers", "select id from workers where job_id = ? and ended_at is null and id != ?", [job_id, me]
        )
        live = set(self.live_workers(job_id, me))
        dead = [w for (w,) in rows if w not in live]
        for w in dead:
            self._write(
                "end a dead worker",
                "update workers set ended_at = ? where job_id = ? and id = ? and ended_at is null",
                [now_iso(), job_id, w],
            )
            self._release(job_id, w)
        # claims of workers no row knows of (cannot happen unless rows were edited by hand)
        self._write(
            "release stray claims",
            "update recordings set claimed_by = null where job_id = ? and status = 'todo' and claimed_by is not null "
            "and claimed_by != ? and claimed_by not in (select id from workers where job_id = ? and ended_at is null)",
            [job_id, me, job_id],
        )
        return dead

    # --- the listing and the claims ------------------------------------------------------------
    def add_todo(self, job_id: str, rows: list[tuple[str, str | None, str]]) -> None:
        """Listed recordings, ``(id, started_at, ref)``, to be claimed; one transaction. A
        recording already done (or exported by an earlier job) is left as it is; one that failed
        or was pending in an earlier attempt is to do again. A sealed job's id and ref are sealed."""
        from . import now_iso

        now = now_iso()
        s = self._sealer(job_id)
        values = [[job_id, rid, now, started, ref, None] for rid, started, ref in rows]
        if s is not None:
            for v, (rid, _, ref) in zip(values, rows):
                v[1] = tag = s.lookup("recording_id", rid)
                v[4], v[5] = s.seal("recordings", "ref", ref, tag), s.seal("recordings", "sealed_id", rid, tag)
        self._write_many(
            "record listed recordings",
            "insert into recordings (job_id, recording_id, status, reason, message, updated_at, started_at, ref, sealed_id) "
            "values (?, ?, 'todo', '', '', ?, ?, ?, ?) on conflict (job_id, recording_id) do update set "
            "status = 'todo', reason = '', message = '', updated_at = excluded.updated_at, "
            "started_at = coalesce(excluded.started_at, recordings.started_at), ref = excluded.ref, "
            "claimed_by = case when recordings.status = 'todo' then recordings.claimed_by else null end "
            "where recordings.status not in ('done', 'exported_earlier')",
            values,
        )

    def claim(self, job_id: str, worker_id: str, limit: int) -> list[Claimed]:
        """Up to ``limit`` unclaimed ``todo`` recordings, now this worker's."""
        if limit <= 0:
            return []
        s = self._sealer(job_id)
        rows = self._claim(job_id, worker_id, limit)  # (recording_id, started_at, ref, sealed_id)
        if s is None:
            return [Claimed.from_row(rid, started, ref) for rid, started, ref, _ in rows]
        return [
            Claimed.from_row(s.open("recordings", "sealed_id", sid, tag) or "", started, s.open("recordings", "ref", ref, tag))
            for tag, started, ref, sid in rows
        ]

    def finish_claim(
        self,
        job_id: str,
        recording_id: str,
        worker_id: str,
        status: RecordingStatus,
        reason: str = "",
        message: str = "",
        files: Sequence[FileRecord] = (),
    ) -> bool:
        """Record a claimed recording's outcome, only while this worker still holds it: False when
        it was given to another worker meanwhile (nothing recorded twice). ``files``: files of the
        recording the sink confirmed, recorded in the same transaction (whatever the outcome)."""
        from . import now_iso

        s, message = self._sealer(job_id), message[:500]
        if s is not None:
            recording_id = s.lookup("recording_id", recording_id)
            message = s.seal("recordings", "message", message, recording_id) or ""
        finish = (
            "update recordings set status = ?, reason = ?, message = ?, updated_at = ?, claimed_by = null "
            "where job_id = ? and recording_id = ? and claimed_by = ? and status = 'todo'"
        )
        params = [RecordingStatus(status).value, reason, message, now_iso(), job_id, recording_id, worker_id]
        if not files:
            return bool(self._write("record a recording", finish, params))
        rows = [self._file_row(job_id, f) for f in files]
        return bool(self._write_batch("record a recording", [(FILE_UPSERT, rows), (finish, [params])])[-1])

    def todo_counts(self, job_id: str) -> tuple[int, int]:
        """(unclaimed, claimed) ``todo`` recordings of the job."""
        rows = self._rows(
            "count recordings to do",
            "select count(*) - count(claimed_by), count(claimed_by) from recordings where job_id = ? and status = 'todo'",
            [job_id],
        )
        return (int(rows[0][0] or 0), int(rows[0][1] or 0)) if rows else (0, 0)

    # --- a request budget every worker of a job shares (GCRA: one atomic update per request) ----
    #: the SQL function of the larger of two numbers (``greatest`` on PostgreSQL)
    _GREATEST = "max"

    def reserve_request(
        self, key: str, rate: float, burst: float, ahead: float | None = None
    ) -> tuple[float, float, float] | tuple[None, float, float]:
        """Take the next request slot of budget ``key``: (seconds to wait, the budget's rate, the
        time of its last cut by :meth:`throttle_requests`, 0 if none). The slots are spaced by the
        budget's own rate (:meth:`set_request_rate`, the last any worker set), else ``rate``: one
        pace for every worker, so one that slowed down after a 429 slows all of them alike, and
        each of them sees it.

        With ``ahead``, no slot further than ``ahead`` seconds out is taken, so that a change of
        pace reaches every waiting request within ``ahead`` seconds: when the queue is longer,
        nothing is taken and the answer is (None, the budget's rate, seconds until the queue is
        short enough to ask again)."""
        now = time.time()
        if rate <= 0:  # no ceiling: only a pause holds
            rows = self._rows("read the request budget", "select tat, throttled_at from rate_slots where key = ?", [key])
            if not rows:
                return 0.0, rate, 0.0
            return (max(0.0, float(rows[0][0]) - now) if rows[0][0] is not None else 0.0), rate, float(rows[0][1] or 0.0)
        g = self._GREATEST
        bound, params = "", [key, now, rate, rate, now, rate]
        if ahead is not None:
            bound = "where rate_slots.tat is null or rate_slots.tat - ? <= ? "
            params += [now, ahead]
        rows = self._write_returning(
            "reserve a request",
            f"insert into rate_slots (key, tat, rate) values (?, ? + 1.0 / ?, ?) on conflict (key) do update "  # noqa: S608
            f"set tat = {g}(rate_slots.tat, ?) + 1.0 / coalesce(rate_slots.rate, ?) {bound}"
            "returning tat, coalesce(rate, ?), throttled_at",
            [*params, rate],
        )
        if not rows:  # the queue is longer than ``ahead``: no slot taken
            query = "select tat, coalesce(rate, ?) from rate_slots where key = ?"
            rows = self._rows("read the request budget", query, [rate, key])
            return None, float(rows[0][1]), max(0.0, float(rows[0][0]) - (ahead or 0.0) - now)
        tat, shared = float(rows[0][0]), float(rows[0][1])
        interval = 1.0 / shared
        tolerance = (max(1.0, burst) - 1.0) * interval
        return max(0.0, tat - interval - tolerance - now), shared, float(rows[0][2] or 0.0)

    def request_budget(self, key: str) -> tuple[float, float]:
        """Budget ``key`` as it stands: (its rate, 0 if none set; the time of its last cut, 0 if none)."""
        rows = self._rows("read the request budget", "select rate, throttled_at from rate_slots where key = ?", [key])
        return (float(rows[0][0] or 0.0), float(rows[0][1] or 0.0)) if rows else (0.0, 0.0)

    def throttle_requests(self, key: str, sent_at: float, factor: float) -> float | None:
        """A 429 to a request of budget ``key`` sent at ``sent_at`` (wall clock): the budget's rate
        times ``factor`` (its queue of reserved slots re-spaced to match), and this cut's time
        recorded; unless a cut was made after that request went out (the 429s of one burst are
        one signal). The time of this cut, or None."""
        now = time.time()
        rows = self._write_returning(
            "cut the request rate",
            "update rate_slots set tat = case when tat > ? and ? > 0 then ? + (tat - ?) / ? else tat end, "
            "rate = rate * ?, throttled_at = ? where key = ? and coalesce(throttled_at, 0) <= ? returning throttled_at",
            [now, factor, now, now, factor, factor, now, key, sent_at],
        )
        return float(rows[0][0]) if rows else None

    def set_request_rate(self, key: str, rate: float) -> None:
        """The pace of budget ``key`` from now on (an adaptive limiter after a 429, or recovering):
        when slower, the slots already reserved at the old pace are re-spaced at the new one (when
        faster they are left as they are: moved earlier they could meet the slots of a process
        that has not seen the change yet)."""
        now = time.time()
        self._write(
            "set the request rate",
            "insert into rate_slots (key, tat, rate) values (?, 0, ?) on conflict (key) do update set "
            "tat = case when rate_slots.tat > ? and excluded.rate < rate_slots.rate "
            "then ? + (rate_slots.tat - ?) * rate_slots.rate / excluded.rate else rate_slots.tat end, rate = excluded.rate",
            [key, rate, now, now, now],
        )

    def pause_requests(self, key: str, seconds: float) -> None:
        """Nobody on budget ``key`` sends a request for ``seconds`` (a 429's Retry-After)."""
        until = time.time() + seconds
        g = self._GREATEST
        self._write(
            "pause requests",
            f"insert into rate_slots (key, tat) values (?, ?) on conflict (key) do update "  # noqa: S608 - fixed names
            f"set tat = {g}(rate_slots.tat, ?)",
            [key, until, until],
        )

    # --- the journal of in-flight sink operations, per worker -----------------------------------
    def journal_orphans(self, job_id: str) -> list[tuple[str, dict[str, str]]]:
        """Entries of workers that are gone (or of runs before workers were recorded)."""
        rows = self._rows(
            "read operations in flight",
            "select key, data from sink_journal where job_id = ? and (worker is null or worker in "
            "(select id from workers where job_id = ? and ended_at is not null)) order by started_at",
            [job_id, job_id],
        )
        return self._journal_opened(job_id, rows)

    def journal_take(self, job_id: str, key: str, worker: str | None) -> dict[str, str] | None:
        """Make a gone worker's entry for ``key`` this worker's (to continue its upload): the
        entry's data, or ``None`` when no gone worker has one (another worker took it first). An
        entry this worker took already is given again (a retry of the continuation)."""
        s = self._sealer(job_id)
        tag = s.lookup("journal_key", key) if s is not None else key
        rows = self._write_returning(
            "take over an operation in flight",
            "update sink_journal set worker = ? where job_id = ? and key = ? and (worker is null or worker = ? or worker in "
            "(select id from workers where job_id = ? and ended_at is not null)) returning key, data",
            [worker, job_id, tag, worker, job_id],
        )
        opened = self._journal_opened(job_id, rows)
        return opened[0][1] if opened else None
