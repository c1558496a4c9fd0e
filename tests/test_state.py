"""The job state DB: the exact schema from a blank file and from every earlier schema, rows kept
across migrations, secure_delete on, no credential, content or call metadata in the file (nor in
its -wal/-shm), the per-job run lock (in process and across processes), integrity."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from portshift import hookimpl
from portshift.api import Artifact, Recording
from portshift.config import load_job
from portshift.default_plugins.example_source import ExampleSource
from portshift.errors import ConfigError, LockedError
from portshift.pipeline import Runner, RunRequest
from portshift.plugins import load_plugins, pm
from portshift.state import FileRecord, State
from portshift.state.sqlite_migrations import MIGRATIONS, migrate

from .conftest import StateBackend, make_canary

S, N = str, int
EXPECTED = {
    "_portshift_migrations": {"name": S, "applied_at": S},
    "jobs": {
        "id": S, "job_key": S, "fingerprint": S, "config_path": S, "source_type": S, "source_location": S,
        "sink_type": S, "sink_location": S, "window_start": S, "window_end": S, "export_root": S,
        "started_at": S, "finished_at": S, "status": S, "file_count": N, "byte_count": N, "error": S,
        "manifest_key": S, "manifest_sha256": S, "skipped_count": N, "failed_count": N, "pending_count": N, "listed_count": N,
        "incremental": N, "attempt": N, "listing_attempt": N,
    },
    "recordings": {
        "job_id": S, "recording_id": S, "status": S, "reason": S, "message": S, "updated_at": S, "started_at": S,
        "claimed_by": S, "ref": S, "sealed_id": S,
    },
    "files": {
        "job_id": S, "key": S, "size": N, "sha256": S, "recording_id": S, "artifact": S, "content_type": S,
        "recorded_at": S, "done_at": S, "verified": S, "provider_checksums": S, "kind": S, "sealed_key": S,
        "sealed_recording_id": S,
    },
    "sink_journal": {"job_id": S, "key": S, "data": S, "started_at": S, "worker": S},
    "missing_artifacts": {"job_id": S, "recording_id": S, "artifact": S, "reason": S, "message": S, "sealed_id": S},
    "rate_slots": {"key": S, "tat": float, "rate": float, "throttled_at": float},
    "workers": {
        "job_id": S, "id": S, "label": S, "attempt": N, "host": S, "pid": N, "started_at": S, "lease_until": float,
        "ended_at": S,
    },
    "source_rates": {"source_key": S, "rate": float, "updated_at": S},
    "job_keys": {"job_id": S, "key_label": S, "wrapped": S, "created_at": S, "rewrapped_at": S},
}  # fmt: skip
EXPECTED_PKS = {
    "_portshift_migrations": ["name"],
    "jobs": ["id"],
    "recordings": ["job_id", "recording_id"],
    "files": ["job_id", "key"],
    "sink_journal": ["job_id", "key"],
    "missing_artifacts": ["job_id", "recording_id", "artifact"],
    "workers": ["job_id", "id"],
    "rate_slots": ["key"],
    "source_rates": ["source_key"],
    "job_keys": ["job_id"],
}
#: words a column holding call metadata or a credential would be named after
FORBIDDEN_WORDS = ("title", "participant", "email", "mail", "phone", "attendee", "speaker", "subject", "name",
                   "token", "secret", "password", "credential", "content", "body", "transcript", "url")  # fmt: skip
ALLOWED_NAMES = {"_portshift_migrations.name", "jobs.manifest_key", "files.content_type"}


def _schema(path: Path) -> dict[str, dict[str, type]]:
    db = sqlite_utils.Database(path)
    try:
        return {t: db[t].columns_dict for t in db.table_names()}
    finally:
        db.close()


def test_a_blank_file_gets_exactly_the_expected_schema(tmp_path: Path) -> None:
    with State.open(tmp_path / "s.db") as state:
        names = [r["name"] for r in state.db["_portshift_migrations"].rows]
        assert names == [fn.__name__ for fn in MIGRATIONS]
        assert names == sorted(names)  # named and ordered: m001_..., m002_...
        pks = {t: state.db[t].pks for t in state.db.table_names()}
        assert migrate(state.db) == []  # nothing left to apply
    assert _schema(tmp_path / "s.db") == EXPECTED
    assert pks == EXPECTED_PKS


def test_no_column_could_hold_call_metadata_or_a_credential() -> None:
    for table, cols in EXPECTED.items():
        for col in cols:
            full = f"{table}.{col}"
            if full in ALLOWED_NAMES:
                continue
            assert not any(w in col for w in FORBIDDEN_WORDS), full


def _insert_rows(db: sqlite_utils.Database) -> None:
    db["jobs"].insert({"id": "J1", "job_key": "k", "status": "running", "file_count": 1, "byte_count": 3,
                       "started_at": "2024-01-01T00:00:00+00:00", "export_root": "J1"})  # fmt: skip
    db["recordings"].insert({"job_id": "J1", "recording_id": "r1", "status": "done", "reason": "", "message": ""})
    db["files"].insert({"job_id": "J1", "key": "2024/01/01/r1/media.mp3", "size": 3, "sha256": "a" * 64,
                        "recording_id": "r1", "artifact": "media"})  # fmt: skip


@pytest.mark.parametrize("applied", range(1, len(MIGRATIONS)))
def test_migrating_from_every_earlier_schema_keeps_the_rows(tmp_path: Path, applied: int) -> None:
    path = tmp_path / "old.db"
    db = sqlite_utils.Database(path)
    db["_portshift_migrations"].create({"name": str, "applied_at": str}, pk="name")
    for fn in MIGRATIONS[:applied]:
        fn(db)
        db["_portshift_migrations"].insert({"name": fn.__name__, "applied_at": "2024-01-01T00:00:00+00:00"})
    _insert_rows(db)
    db.close()

    with State.open(path) as state:
        assert [r["name"] for r in state.db["_portshift_migrations"].rows] == [fn.__name__ for fn in MIGRATIONS]
        job = state.job("J1")
        assert job is not None and job.status == "running" and job.file_count == 1
        assert job.skipped_count == 0 and job.failed_count == 0
        assert state.done_recordings("J1") == {"r1"}
        assert list(state.files("J1")) == [
            {"key": "2024/01/01/r1/media.mp3", "size": 3, "sha256": "a" * 64, "recording_id": "r1", "artifact": "media",
             "content_type": None, "recorded_at": None, "verified": None}
        ]  # fmt: skip
        assert state.totals("J1") == (1, 3)  # kind defaulted to 'content'
        assert state.done_artifacts("J1", "r1") == {"media"}
        assert state.conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert state.conn.execute("pragma foreign_key_check").fetchall() == []
    assert _schema(path) == EXPECTED


def test_pragmas(tmp_path: Path) -> None:
    with State.open(tmp_path / "s.db") as state:
        assert state.conn.execute("pragma secure_delete").fetchone()[0] == 1
        assert state.conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert state.conn.execute("pragma foreign_keys").fetchone()[0] == 1


def _marker_lingers(path: Path, secure: bool) -> bool:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"pragma secure_delete={'ON' if secure else 'OFF'}")
    conn.execute("pragma journal_mode=WAL")
    conn.execute("create table t (a text)")
    marker = "MARKER-" + "m" * 60
    conn.execute("insert into t values (?)", [marker])
    conn.execute("insert into t values ('other')")
    conn.execute("update t set a = '' where a = ?", [marker])
    conn.execute("pragma wal_checkpoint(TRUNCATE)")
    conn.close()
    return b"MARKER-" in path.read_bytes()


def test_overwritten_values_do_not_linger_in_the_file(tmp_path: Path) -> None:
    assert _marker_lingers(tmp_path / "control.db", secure=False)  # what secure_delete prevents
    path = tmp_path / "s.db"
    marker = "MARKER-" + "q" * 60
    with State.open(path) as state:
        state.create_job(id="J", job_key="k", export_root="J")
        state.set_recording("J", "r1", "failed", "X", f"error mentioning {marker}")
        state.set_recording("J", "r1", "done")  # overwritten: message now ""
        state.conn.execute("pragma wal_checkpoint(TRUNCATE)")
        for suffix in ("", "-wal"):
            assert marker.encode() not in Path(f"{path}{suffix}").read_bytes()


def test_file_modes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with State.open(path) as state:
        state.lock("k" * 64)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "s.db.locks").stat().st_mode) == 0o700


def test_wal_and_shm_are_private_too(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with State.open(path) as state:
        state.create_job(id="J", job_key="k", export_root="J")
        for suffix in ("-wal", "-shm"):
            assert stat.S_IMODE(Path(f"{path}{suffix}").stat().st_mode) == 0o600, suffix


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no state file"):
        State.open(tmp_path / "none.db", create=False)
    with pytest.raises(ConfigError, match="is a folder"):
        State.open(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        State.open(tmp_path / "no" / "such" / "s.db")
    (tmp_path / "junk.db").write_bytes(b"not a database" * 200)
    with pytest.raises(ConfigError, match="cannot open the state file"):
        State.open(tmp_path / "junk.db")


def test_an_up_to_date_file_opens_without_sqlite_utils_and_a_newer_one_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    State.open(path).close()  # created and migrated
    probe = (
        "import sys; from pathlib import Path; from portshift.state import State\n"
        "s = State.open(Path(sys.argv[1])); rows = s._job_rows('select name from _portshift_migrations', [])\n"
        "print(len(rows), 'sqlite_utils' in sys.modules); s.close()"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(len(MIGRATIONS)), "False"]  # the rows as dicts, read with plain sqlite3
    with sqlite3.connect(path) as conn:
        conn.execute("insert into _portshift_migrations values ('m999_from_the_future', '2030-01-01')")
    conn.close()
    with pytest.raises(ConfigError, match="migrated by a newer portshift"):
        State.open(path)
    with sqlite3.connect(path) as conn:  # one missing (an older file): migrated, not taken as up to date
        conn.execute("delete from _portshift_migrations where name in ('m999_from_the_future', ?)", [MIGRATIONS[-1].__name__])
    conn.close()
    with pytest.raises(ConfigError, match="duplicate column"):  # its column is there: the migration really ran again
        State.open(path)


# --- a full run: nothing but ids, sizes, hashes in the file -----------------------------------
CANARY_TITLE = make_canary("TITLE")
CANARY_PERSON = make_canary("PERSON")
CANARY_CONTENT = make_canary("CONTENT")


class LeakySource(ExampleSource):
    """The example tenant, with call metadata a real tenant has and a canary in the media bytes."""

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        media = f"audio bytes {CANARY_CONTENT} ".encode() * 50
        yield Artifact.from_bytes("media", media, "mp3", "audio/mpeg")
        meta = {
            "id": recording.id,
            "title": f"{CANARY_TITLE} renewal call with Acme",
            "participants": [{"name": f"{CANARY_PERSON} Doe", "email": f"{CANARY_PERSON}@acme.example",
                              "phone": "+1 555 0100"}],
        }  # fmt: skip
        yield Artifact.from_bytes("metadata", json.dumps(meta).encode(), "json", "application/json")


class _LeakyPlugin:
    @hookimpl
    def register_sources(self, register) -> None:  # type: ignore[no-untyped-def]
        register("leaky-example", LeakySource)


@pytest.fixture
def leaky_source() -> Iterator[None]:
    load_plugins()
    obj = _LeakyPlugin()
    pm.register(obj, name="test-state-leaky-example")
    try:
        yield
    finally:
        pm.unregister(obj)


def _scan(path: Path) -> list[str]:
    found = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            data = p.read_bytes()
            for canary in (CANARY_TITLE, CANARY_PERSON, CANARY_CONTENT, "555 0100"):
                for form in (canary.encode(), canary.encode("utf-16-le")):
                    if form in data:
                        found.append(f"{p.name}: {canary}")
    return found


def test_after_a_full_run_the_state_holds_no_content_or_call_metadata(tmp_path: Path, leaky_source: None) -> None:
    doc = {
        "job": {"transfers": 2},
        "source": {"type": "leaky-example", "count": 6},
        "sink": {"type": "local", "path": str(tmp_path / "out"), "fsync": False},
    }
    cfg = load_job(None, doc=doc)
    path = tmp_path / "state.db"
    with State.open(path) as state:
        result = Runner(cfg, state, retry_base=0.0).run(RunRequest())
        assert result.status == "complete" and result.files == 12
        # the canaries really went through: they are in the export
        root = tmp_path / "out" / result.export_root
        exported = b"".join(p.read_bytes() for p in root.rglob("*.json")) + b"".join(p.read_bytes() for p in root.rglob("*.mp3"))
        assert CANARY_TITLE.encode() in exported and CANARY_CONTENT.encode() in exported
        assert Path(f"{path}-wal").stat().st_size > 0
        assert _scan(path) == []  # while open: the WAL holds the recent pages
        assert state.conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert state.conn.execute("pragma foreign_key_check").fetchall() == []
        job = state.job(result.job_id)
        assert job is not None and job.status == "complete" and job.file_count == 12
        assert job.manifest_sha256 == result.manifest_sha256
    assert _scan(path) == []  # and after the checkpoint on close
    assert _schema(path) == EXPECTED


# --- the run lock --------------------------------------------------------------------------------
def test_a_second_state_taking_the_same_job_lock_is_refused(state_backend: StateBackend) -> None:
    first = state_backend.open()
    second = state_backend.open()
    try:
        first.lock("job-key-a")
        with pytest.raises(LockedError, match="another portshift run of this job is in progress") as e:
            second.lock("job-key-a")
        assert e.value.exit_code == 6
        second.lock("job-key-b")  # another job of the same state file is not blocked
        first.close()
        second.lock("job-key-a")  # released with the holder
    finally:
        second.close()
        first.close()


LOCK_CHILD = textwrap.dedent(
    """
    import sys, time
    from portshift.state.choose import open_chosen_state
    s = open_chosen_state(sys.argv[1])  # a path or a URL; the password from PORTSHIFT_STATE_PASSWORD
    s.lock(sys.argv[2])
    print("locked", flush=True)
    sys.stdin.readline()
    """
)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_the_lock_holds_across_processes_and_is_released_when_the_holder_dies(state_backend: StateBackend, how: str) -> None:
    state_backend.open().close()
    child = subprocess.Popen(
        [sys.executable, "-c", LOCK_CHILD, state_backend.target, "job-key-x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **state_backend.env()},
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "locked"
        with state_backend.open() as mine:
            with pytest.raises(LockedError):
                mine.lock("job-key-x")
            mine.lock("job-key-y")
        if how == "exit":
            child.stdin.write("\n")
            child.stdin.flush()
        else:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        deadline = time.monotonic() + 30  # a server notices a dead client's connection a moment later
        while True:
            with state_backend.open() as mine:
                try:
                    mine.lock("job-key-x")
                    break
                except LockedError:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.1)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        for stream in (child.stdin, child.stdout):
            if stream:
                stream.close()


def test_concurrent_writes_from_threads_keep_the_state_consistent(state_backend: StateBackend) -> None:
    import threading

    with state_backend.open() as state:
        state.create_job(id="J", job_key="k", export_root="J")

        def work(n: int) -> None:
            for i in range(50):
                rid = f"r{n}-{i}"
                rec = FileRecord(key=f"{rid}/media.bin", size=i, sha256="b" * 64, recording_id=rid, artifact="media")
                state.add_file("J", rec)
                state.set_recording("J", rid, "done")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert state.totals("J") == (200, 4 * sum(range(50)))
        assert state.recording_counts("J") == {"done": 200}
        if state_backend.kind == "sqlite":
            assert state.conn.execute("pragma integrity_check").fetchone()[0] == "ok"
