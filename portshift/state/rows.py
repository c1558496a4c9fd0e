"""The statements on recordings, files and the sinks' journal, the same on both backends, with
the sealing of a sealed job's values in one place (docs/byok.md).

For a sealed job a value that names the customer's data is stored sealed, and where it must be
found again by equality it is stored as the job's keyed hash:

| table | keyed hash (looked up) | sealed | clear |
|---|---|---|---|
| recordings | recording_id | sealed_id (the id), message | status, reason, times |
| missing_artifacts | recording_id | sealed_id, message | artifact, reason |
| files | key, recording_id | sealed_key, sealed_recording_id, sha256, provider_checksums | size, artifact, kind, times |
| sink_journal | key | data (the key and the sink's data) | started_at |

A clear job (no ``job_keys`` row) is stored exactly as before.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..records import Problem, RecordingStatus

if TYPE_CHECKING:
    from ..sealing import Sealer
    from .journal import StateJournal


def _now() -> str:
    from . import now_iso

    return now_iso()


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


FILE_COLUMNS = ("key", "size", "sha256", "recording_id", "artifact", "content_type", "recorded_at", "verified")


PAGE = 5000  #: rows per statement when a read is streamed

#: record a file (or record it again: a re-exported file replaces its row)
FILE_UPSERT = (
    "insert into files (job_id, key, sealed_key, size, sha256, recording_id, sealed_recording_id, artifact, "
    "content_type, recorded_at, done_at, verified, provider_checksums, kind) values (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "on conflict (job_id, key) do update set size = excluded.size, sha256 = excluded.sha256, "
    "recording_id = excluded.recording_id, sealed_recording_id = excluded.sealed_recording_id, "
    "sealed_key = excluded.sealed_key, artifact = excluded.artifact, "
    "content_type = excluded.content_type, recorded_at = excluded.recorded_at, "
    "done_at = excluded.done_at, verified = excluded.verified, "
    "provider_checksums = excluded.provider_checksums, kind = excluded.kind"
)


class SharedRows:
    """Mixed into :class:`~portshift.state.State`: progress, files and the sinks' journal."""

    @abstractmethod
    def _rows(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _write(self, what: str, query: str, params: list[Any]) -> int: ...

    @abstractmethod
    def _write_many(self, what: str, query: str, rows: list[list[Any]]) -> None: ...

    @abstractmethod
    def _sealer(self, job_id: str) -> Sealer | None: ...

    def _listed_clear(self, job_id: str) -> Iterator[str]:
        """Every recording id the job listed, in code-point order (bytewise: COLLATE "C" on
        PostgreSQL), in pages: the manifest's ``listed ids sha256`` is computed over it."""
        after = ""
        while True:
            rows = self._rows(
                "read listed ids",
                "select recording_id from recordings where job_id = ? and recording_id > ? order by recording_id limit ?",
                [job_id, after, PAGE],
            )
            yield from (rid for (rid,) in rows)
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def _files_clear(self, job_id: str, kind: str) -> Iterator[dict[str, Any]]:
        """Done files of a job, sorted by key, read in pages (each page one statement)."""
        cols = ("key", "size", "sha256", "recording_id", "artifact", "content_type", "recorded_at", "verified")
        query = f"select {', '.join(cols)} from files where job_id = ? and kind = ? and key > ? order by key limit ?"  # noqa: S608 - fixed column names
        after = ""
        while True:
            rows = self._rows("read files", query, [job_id, kind, after, PAGE])
            for row in rows:
                yield dict(zip(cols, row))
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    def _rid(self, s: Sealer | None, recording_id: str) -> str:
        return s.lookup("recording_id", recording_id) if s is not None else recording_id

    def _open_id(self, job_id: str, clear: str, sealed: str | None, table: str = "recordings") -> str:
        if sealed is None:
            return clear
        s = self._sealer(job_id)
        assert s is not None
        return s.open(table, "sealed_id", sealed, clear) or ""

    # --- across the jobs of one job file
    def exported_by_earlier_jobs(self, job_key: str, since: str, exclude_job: str) -> dict[str, str]:
        """Recording id -> the id of the job that exported it, for recordings done by other jobs
        of this job file whose window ends after ``since`` (a window re-listed by ``--since last``)."""
        rows = self._rows(
            "read earlier jobs",
            "select r.recording_id, r.sealed_id, r.job_id from recordings r join jobs j on j.id = r.job_id "
            "where j.job_key = ? and j.id != ? and j.window_end > ? and r.status = 'done'",
            [job_key, exclude_job, since],
        )
        return {self._open_id(job, rec, sealed): job for rec, sealed, job in rows}

    def oldest_pending(self, job_key: str) -> str | None:
        """The start time of the oldest recording left pending by a job of this job file and not
        exported since (``--since last`` lists from there, so it is picked up once ready). The
        keyed hashes of two sealed jobs differ, so with sealed jobs the ids are compared opened."""
        sealed = self._rows(
            "read sealed jobs", "select count(*) from job_keys k join jobs j on j.id = k.job_id where j.job_key = ?", [job_key]
        )
        if not sealed[0][0]:
            rows = self._rows(
                "read pending recordings",
                "select min(p.started_at) from recordings p join jobs j on j.id = p.job_id "
                "where j.job_key = ? and p.status = 'pending' and p.started_at is not null and not exists ("
                "select 1 from recordings d join jobs k on k.id = d.job_id "
                "where k.job_key = j.job_key and d.recording_id = p.recording_id and d.status = 'done')",
                [job_key],
            )
            return rows[0][0] if rows else None
        rows = self._rows(
            "read pending recordings",
            "select r.job_id, r.recording_id, r.sealed_id, r.status, r.started_at from recordings r "
            "join jobs j on j.id = r.job_id where j.job_key = ? and (r.status = 'done' or "
            "(r.status = 'pending' and r.started_at is not null))",
            [job_key],
        )
        done = {self._open_id(job, rec, s) for job, rec, s, status, _ in rows if status == "done"}
        pending = [t for job, rec, s, status, t in rows if status == "pending" and self._open_id(job, rec, s) not in done]
        return min(pending) if pending else None

    # --- progress
    def done_recordings(self, job_id: str) -> Collection[str]:
        """The ids of the recordings the job has done (``in`` and ``len``); for a sealed job the
        keyed hashes, so resume decrypts nothing."""
        s = self._sealer(job_id)
        rows = self._rows(
            "read done recordings", "select recording_id from recordings where job_id = ? and status = 'done'", [job_id]
        )
        return KeyedIds(s, (r[0] for r in rows)) if s is not None else {r[0] for r in rows}

    def set_recording(
        self,
        job_id: str,
        recording_id: str,
        status: RecordingStatus | str,
        reason: str = "",
        message: str = "",
        started_at: str | None = None,
    ) -> None:
        s = self._sealer(job_id)
        rid = self._rid(s, recording_id)
        sealed_id = s.seal("recordings", "sealed_id", recording_id, rid) if s is not None else None
        message = message[:500]
        self._write(
            "record a recording",
            "insert into recordings (job_id, recording_id, sealed_id, status, reason, message, updated_at, started_at) "
            "values (?, ?, ?, ?, ?, ?, ?, ?) on conflict (job_id, recording_id) do update set "
            "status = excluded.status, reason = excluded.reason, message = excluded.message, "
            "updated_at = excluded.updated_at, started_at = coalesce(excluded.started_at, recordings.started_at)",
            [job_id, rid, sealed_id, RecordingStatus(status).value, reason,
             s.seal("recordings", "message", message, rid) if s is not None else message, _now(), started_at],
        )  # fmt: skip

    def add_missing(self, job_id: str, recording_id: str, artifact: str, reason: str, message: str) -> None:
        """One artifact the source said does not exist (the recording is still exported)."""
        s = self._sealer(job_id)
        rid, row, message = self._rid(s, recording_id), f"{self._rid(s, recording_id)}/{artifact}", message[:500]
        self._write(
            "record a missing artifact",
            "insert into missing_artifacts (job_id, recording_id, sealed_id, artifact, reason, message) "
            "values (?, ?, ?, ?, ?, ?) on conflict (job_id, recording_id, artifact) do update set "
            "reason = excluded.reason, message = excluded.message",
            [job_id, rid, s.seal("missing_artifacts", "sealed_id", recording_id, rid) if s else None,
             artifact, reason, s.seal("missing_artifacts", "message", message, row) if s else message],
        )  # fmt: skip

    def recording_counts(self, job_id: str) -> dict[str, int]:
        rows = self._rows(
            "count recordings", "select status, count(*) from recordings where job_id = ? group by status", [job_id]
        )
        return {r[0]: int(r[1]) for r in rows}

    def problems(self, job_id: str) -> list[Problem]:
        """Recordings not exported (failed, skipped, pending) and artifacts missing at the source."""
        s = self._sealer(job_id)
        rows = self._rows(
            "read problems",
            "select recording_id, sealed_id, status, reason, message, '' as artifact, 'recordings' from recordings "
            "where job_id = ? and status in ('failed', 'skipped', 'pending') "
            "union all select recording_id, sealed_id, 'missing', reason, message, artifact, 'missing_artifacts' "
            "from missing_artifacts where job_id = ?",
            [job_id, job_id],
        )
        out = []
        for rec, sealed, status, reason, message, art, table in rows:
            if s is not None:
                row = rec if table == "recordings" else f"{rec}/{art}"
                rec, message = s.open(table, "sealed_id", sealed, rec) or "", s.open(table, "message", message, row)
            out.append(Problem(rec, status, reason or "", message or "", art or ""))
        return sorted(out, key=lambda p: (p.status, p.recording_id, p.artifact))

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

    def listed_ids(self, job_id: str) -> Iterator[str]:
        """Every recording id the job listed, in code-point (bytewise) order (a sealed job's are
        opened and sorted here)."""
        s = self._sealer(job_id)
        if s is None:
            yield from self._listed_clear(job_id)
            return
        rows = self._rows("read listed ids", "select recording_id, sealed_id from recordings where job_id = ?", [job_id])
        yield from sorted(s.open("recordings", "sealed_id", sid, rid) or "" for rid, sid in rows)

    def exported_earlier(self, job_id: str) -> list[tuple[str, str]]:
        """(recording id, message) of the recordings a --since last job found exported by an earlier job."""
        s = self._sealer(job_id)
        rows = self._rows(
            "read earlier exports",
            "select recording_id, sealed_id, message from recordings where job_id = ? and status = 'exported_earlier'",
            [job_id],
        )
        if s is None:
            return sorted((rid, message) for rid, _, message in rows)
        return sorted(
            (s.open("recordings", "sealed_id", sid, rid) or "", s.open("recordings", "message", m, rid) or "")
            for rid, sid, m in rows
        )

    # --- files
    def add_file(self, job_id: str, f: FileRecord) -> None:
        self._write("record a file", FILE_UPSERT, self._file_row(job_id, f))

    def add_files(self, job_id: str, files: list[FileRecord]) -> None:
        """Several files in one transaction."""
        self._write_many("record files", FILE_UPSERT, [self._file_row(job_id, f) for f in files])

    def _file_row(self, job_id: str, f: FileRecord) -> list[Any]:
        """The parameters of :data:`FILE_UPSERT` for one file (a sealed job's values sealed)."""
        s = self._sealer(job_id)
        checksums = json.dumps(f.provider_checksums or {}, sort_keys=True)
        key, sha, rid, sealed_key, sealed_rid = f.key, f.sha256, f.recording_id, None, None
        if s is not None:
            key = s.lookup("file_key", f.key)
            sealed_key, sealed_rid = (
                s.seal("files", "sealed_key", f.key, key),
                s.seal("files", "sealed_recording_id", f.recording_id, key),
            )
            rid, sha = s.lookup("recording_id", f.recording_id), s.seal("files", "sha256", f.sha256, key)
            checksums = s.seal("files", "provider_checksums", checksums, key)  # type: ignore[assignment]
        return [job_id, key, sealed_key, f.size, sha, rid, sealed_rid, f.artifact, f.content_type, f.recorded_at, _now(),
                f.verified, checksums, f.kind]  # fmt: skip

    def remove_files_of(self, job_id: str, recording_id: str) -> None:
        rid = self._rid(self._sealer(job_id), recording_id)
        self._write("remove files", "delete from files where job_id = ? and recording_id = ?", [job_id, rid])

    def done_artifacts(self, job_id: str, recording_id: str) -> set[str]:
        rows = self._rows(
            "read done artifacts",
            "select artifact from files where job_id = ? and recording_id = ? and kind = 'content'",
            [job_id, self._rid(self._sealer(job_id), recording_id)],
        )
        return {r[0] for r in rows}

    def remove_manifest_files(self, job_id: str) -> None:
        self._write("remove manifest files", "delete from files where job_id = ? and kind = 'manifest'", [job_id])

    def files(self, job_id: str, kind: str = "content") -> Iterator[dict[str, Any]]:
        """Done files of a job, sorted by key, streamed (a sealed job's are opened and sorted here)."""
        s = self._sealer(job_id)
        if s is None:
            yield from self._files_clear(job_id, kind)
            return
        rows = self._rows(
            "read files",
            "select key, sealed_key, size, sha256, sealed_recording_id, artifact, content_type, recorded_at, verified "
            "from files where job_id = ? and kind = ?",
            [job_id, kind],
        )
        opened = []
        for tag, key, size, sha, rid, *rest in rows:
            opened.append(
                (s.open("files", "sealed_key", key, tag), size, s.open("files", "sha256", sha, tag),
                 s.open("files", "sealed_recording_id", rid, tag), *rest)
            )  # fmt: skip
        opened.sort(key=lambda r: r[0])
        for row in opened:
            yield dict(zip(FILE_COLUMNS, row))

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

    # --- the sinks' journal of in-flight operations
    # (one per worker: see .claims)
    def journal(self, job_id: str, worker: str | None = None) -> StateJournal:
        from .journal import StateJournal

        return StateJournal(self, job_id, worker)  # type: ignore[arg-type]

    def journal_begin(self, job_id: str, key: str, data: dict[str, str], worker: str | None = None) -> None:
        s = self._sealer(job_id)
        stored = json.dumps(data, sort_keys=True)
        if s is not None:
            tag = s.lookup("journal_key", key)
            key, stored = tag, s.seal("sink_journal", "data", json.dumps({"key": key, "data": data}), tag)  # type: ignore[assignment]
        self._write(
            "record an operation in flight",
            "insert into sink_journal (job_id, key, data, started_at, worker) values (?, ?, ?, ?, ?) "
            "on conflict (job_id, key) do update set data = excluded.data, started_at = excluded.started_at, "
            "worker = excluded.worker",
            [job_id, key, stored, _now(), worker],
        )

    def journal_end(self, job_id: str, key: str) -> None:
        s = self._sealer(job_id)
        key = s.lookup("journal_key", key) if s is not None else key
        self._write("end an operation in flight", "delete from sink_journal where job_id = ? and key = ?", [job_id, key])

    def journal_pending(self, job_id: str, worker: str | None = None) -> list[tuple[str, dict[str, str]]]:
        """The job's operations in flight (``worker``: only that worker's)."""
        rows = self._rows(
            "read operations in flight",
            "select key, data from sink_journal where job_id = ? and (cast(? as text) is null or worker = ?) order by started_at",
            [job_id, worker, worker],
        )
        return self._journal_opened(job_id, rows)

    def _journal_opened(self, job_id: str, rows: list[tuple[Any, ...]]) -> list[tuple[str, dict[str, str]]]:
        s = self._sealer(job_id)
        if s is None:
            return [(key, json.loads(data)) for key, data in rows]
        opened = [json.loads(s.open("sink_journal", "data", data, tag) or "{}") for tag, data in rows]
        return [(o["key"], o["data"]) for o in opened]


from .sealed import KeyedIds  # noqa: E402 - sealed imports nothing from here
