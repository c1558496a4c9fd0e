"""The service database on PostgreSQL, and a database role per job limited to its own rows.

Against a real PostgreSQL 15 with TLS (verify-full, the test CA) on 127.0.0.1: the service's
rows round-trip; a weak sslmode is refused; job A's worker role (connected as a worker connects,
through the core's state URL and password) reads and writes its own state and cannot read,
change or claim job B's rows, nor read the sign-ups, the rate counters or the role mappings; the
role is gone once the job's run ended, and a sweep drops roles left by runs that never ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from portshift_server.job_roles import PgJobStates, group_name
from portshift_server.job_state import add_state_password
from portshift_server.service_store import DatabaseOptions, open_service_db

from portshift.errors import ConfigError
from portshift.secrets import Secret
from portshift.state import FileRecord, open_state

from . import pg_fixtures
from .conftest import canary_value, find_canary
from .pg_fixtures import ServiceDatabase

pg_server, service_database = pg_fixtures.pg_server, pg_fixtures.service_database  # the fixtures


def worker_connect(target: str, password: str) -> psycopg.Connection[Any]:
    """A plain connection as the worker's role, with the parameters of its state URL."""
    from portshift.state.pg_url import parse_url

    return psycopg.connect(**parse_url(target).conninfo(Secret(password, "password")), autocommit=True)


def open_db(service_database: ServiceDatabase, tmp_path: Path) -> Any:
    return open_service_db(tmp_path, service_database.options(tmp_path))


def test_the_service_rows_live_in_postgres_over_verified_tls(service_database: ServiceDatabase, tmp_path: Path) -> None:
    db = open_db(service_database, tmp_path)
    try:
        assert db.path is None and db.location.startswith(f"postgresql://{service_database.role}@127.0.0.1:")
        db.insert_job(id="job-one-aaaaaaaaaaaaaaa", status="starting", source_type="canary", sink_type="local")
        db.update_job("job-one-aaaaaaaaaaaaaaa", status="complete", finished_at="2026-01-01T00:00:00+00:00", file_count=3)
        assert db.job("job-one-aaaaaaaaaaaaaaa")["file_count"] == 3
        assert db.job("nope") is None
        assert [r["id"] for r in db.jobs(["job-one-aaaaaaaaaaaaaaa", "x"])] == ["job-one-aaaaaaaaaaaaaaa"]
        assert db.job_counts() == {"complete": 1} and db.unfinished_jobs() == []
        db.add_signup("Ada", "Ada@Example.com", "Engines")
        db.add_signup("Ada L.", "ada@example.com", "Engines Ltd")  # the same address: updated
        assert [(s["name"], s["email"]) for s in db.signups()] == [("Ada L.", "ada@example.com")]
        assert [db.hit("k", "jobs", 2, 60) for _ in range(2)] == [0.0, 0.0]
        assert db.hit("k", "jobs", 2, 60) > 50  # the third in the window waits for its end
        assert db.delete_signup(" ADA@example.com ") == 1 and db.signups() == []
        ssl = db.state.connections.run(
            "read", lambda c: c.execute("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        )
        assert ssl[0] is True and ssl[1] in ("TLSv1.2", "TLSv1.3")
    finally:
        db.close()
    # the service's own tables are in their own schema, next to the core's state tables
    with service_database.admin() as c:
        tables = {
            tuple(r)
            for r in c.execute("select schemaname, tablename from pg_tables where schemaname in ('public', 'portshift_service')")
        }
    assert {("portshift_service", t) for t in ("jobs", "signups", "rate_limits", "job_roles", "state_owners")} <= tables
    assert {("public", t) for t in ("jobs", "recordings", "files", "sink_journal", "missing_artifacts")} <= tables


@pytest.mark.parametrize("query", ["sslmode=require", "sslmode=disable", "sslmode=verify-ca"])
def test_a_weak_tls_mode_is_refused(service_database: ServiceDatabase, tmp_path: Path, query: str) -> None:
    options = service_database.options(tmp_path)
    weak = DatabaseOptions(f"{options.url}&{query}", options.password_file, None)
    with pytest.raises(ConfigError, match="verify-full"):
        open_service_db(tmp_path, weak)


def test_a_password_in_the_url_is_refused_and_not_repeated(service_database: ServiceDatabase, tmp_path: Path) -> None:
    url = service_database.url.replace(f"{service_database.role}@", f"{service_database.role}:CANARY-in-url-123@")
    with pytest.raises(ConfigError) as err:
        open_service_db(tmp_path, DatabaseOptions(url))
    assert "carries a password" in str(err.value) and "CANARY-in-url-123" not in str(err.value)


def run_worker(states: PgJobStates, service_job: str, tmp_path: Path, recordings: int) -> tuple[str, str, str]:
    """What a worker of ``service_job`` does, through the core state: (state URL, password, state job id)."""
    target, password = states.start(service_job, tmp_path, 600)
    assert isinstance(target, str) and password
    assert service_job not in target and password not in target
    with open_state(target, password=Secret(password, "password")) as state:
        job_id = state.create_job(job_key="key-" + service_job, source_type="canary", sink_type="local")
        for n in range(recordings):
            state.set_recording(job_id, f"rec-{n}", "done")
            state.add_file(job_id, FileRecord(f"{service_job}/rec-{n}.json", 10 + n, "0" * 64, f"rec-{n}", "metadata"))
        state.add_missing(job_id, "rec-0", "media", "media_not_found", "gone")
        state.journal_begin(job_id, "k", {"upload": "x"})
        assert [j.id for j in state.jobs()] == [job_id]  # its own state job, nothing else
        state.reserve_request(f"source:{job_id}", 100.0, 1.0)  # the request budget its workers share (rate_slots)
    with worker_connect(target, password) as conn:  # a table a later migration added (m002_claims)
        conn.execute("insert into workers (job_id, id, label) values (%s, 'w1', 'worker')", [job_id])
    return target, password, job_id


def test_a_job_role_reads_and_writes_only_its_own_rows(service_database: ServiceDatabase, tmp_path: Path) -> None:
    db = open_db(service_database, tmp_path)
    try:
        db.add_signup("Ada", "ada@example.com", "Engines")
        db.hit("client-hash", "jobs", 5, 600)
        states = PgJobStates(db)
        a_url, a_pw, a_job = run_worker(states, "service-job-a", tmp_path, 2)
        b_url, b_pw, b_job = run_worker(states, "service-job-b", tmp_path, 3)
        # the service reads each job's progress with its own role
        assert states.read("service-job-a", a_url)["recordings_done"] == 2
        assert states.read("service-job-b", b_url)["file_count"] == 3

        with worker_connect(a_url, a_pw) as a:
            assert a.execute("select session_user").fetchone()[0] != service_database.role
            for table in ("jobs", "recordings", "files", "sink_journal", "missing_artifacts", "workers"):
                column = "id" if table == "jobs" else "job_id"
                seen = {r[0] for r in a.execute(f"select {column} from {table}")}  # noqa: S608 - fixed names
                assert seen == {a_job}, table
                assert a.execute(f"select count(*) from {table} where {column} = %s", [b_job]).fetchone()[0] == 0  # noqa: S608
                assert a.execute(f"update {table} set {column} = {column} where {column} = %s", [b_job]).rowcount == 0  # noqa: S608
                assert a.execute(f"delete from {table} where {column} = %s", [b_job]).rowcount == 0  # noqa: S608
            # the request budget: its own only
            assert [r[0] for r in a.execute("select key from rate_slots")] == [f"source:{a_job}"]
            assert a.execute("update rate_slots set tat = 0 where key = %s", [f"source:{b_job}"]).rowcount == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                a.execute("insert into rate_slots (key, tat) values (%s, 1e12)", [f"source:{b_job}"])
            # writing a row into job B, or taking over B's state job id, is refused
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                a.execute("insert into recordings (job_id, recording_id, status) values (%s, 'evil', 'done')", [b_job])
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                a.execute("insert into jobs (id, status) values (%s, 'running') on conflict (id) do nothing", [b_job])
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                a.execute("update recordings set job_id = %s where job_id = %s", [b_job, a_job])
            assert a.execute("select portshift_service.claim_state_job(%s)", [b_job]).fetchone()[0] is False
            # nothing of the service's own tables
            for table in ("jobs", "signups", "rate_limits", "job_roles", "state_owners"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    a.execute(f"select * from portshift_service.{table}")  # noqa: S608 - fixed names
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute("update portshift_service.rate_limits set count = 0")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute("create table public.mine (x int)")
        # B's rows are untouched, and B still sees exactly its own
        with open_state(b_url, password=Secret(b_pw, "password")) as b_state:
            assert b_state.recording_counts(b_job) == {"done": 3}
            assert [j.id for j in b_state.jobs()] == [b_job]
        assert db.signups()[0]["email"] == "ada@example.com"

        # the end of A's run drops A's role: it can no longer log in; B's still can
        a_role = a_url.split("://", 1)[1].split("@", 1)[0]
        states.end("service-job-a")
        with service_database.admin() as c:
            assert c.execute("select count(*) from pg_roles where rolname = %s", [a_role]).fetchone()[0] == 0
        with pytest.raises(psycopg.OperationalError):
            worker_connect(a_url, a_pw).close()
        worker_connect(b_url, b_pw).close()
        # a new run of job A (a resume) has a new role that sees A's earlier state, not B's
        a2_url, a2_pw = states.start("service-job-a", tmp_path, 600)
        assert a2_url != a_url
        with open_state(a2_url, password=Secret(a2_pw, "password")) as again:
            assert [j.id for j in again.jobs()] == [a_job] and again.unfinished_job("key-service-job-a") is not None
        # a sweep while serving keeps the roles of running jobs and of runs that just started;
        # older roles of jobs not running go (their run ended without dropping them)
        b_role = b_url.split("://", 1)[1].split("@", 1)[0]
        a2_role = a2_url.split("://", 1)[1].split("@", 1)[0]
        states.sweep(running=set())
        with service_database.admin() as c:
            assert len(c.execute("select 1 from pg_roles where rolname = any(%s)", [[b_role, a2_role]]).fetchall()) == 2
            c.execute("update portshift_service.job_roles set created_at = '2000-01-01T00:00:00+00:00'")
        states.sweep(running={"service-job-a"})
        with service_database.admin() as c:
            assert [r[0] for r in c.execute("select rolname from pg_roles where rolname = any(%s)", [[b_role, a2_role]])] == [
                a2_role
            ]
        # the sweep at start drops every role left behind
        states.sweep()
        with service_database.admin() as c:
            left = c.execute("select count(*) from pg_roles where rolname like 'ps\\_job\\_%%'").fetchone()[0]
            assert left == 0
            group = group_name(service_database.dbname)
            assert c.execute("select count(*) from pg_roles where rolname = %s", [group]).fetchone()[0] == 1
    finally:
        db.close()
    # CREATE ROLE went to the server's statement log with a SCRAM verifier: no password there
    log = service_database.server.log_text()
    assert a_role in log and "SCRAM-SHA-256$" in log  # the control: the role statements were logged
    assert not find_canary(log.encode(), [a_pw, b_pw, a2_pw, service_database.password])


def test_the_service_needs_createrole(pg_server: Any, service_database: ServiceDatabase, tmp_path: Path) -> None:
    with pg_server.admin() as c:
        c.execute(f"alter role {service_database.role} nocreaterole")
    db = open_db(service_database, tmp_path)
    try:
        with pytest.raises(ConfigError) as err:
            PgJobStates(db)
        assert "permission denied to create role" in str(err.value) and "CREATEROLE" in (err.value.hint or "")
    finally:
        db.close()


def test_the_password_joins_the_credential_document_in_place() -> None:
    import json

    doc = bytearray(json.dumps({"source": {"token": "t"}}).encode())
    add_state_password(doc, 'p"w')
    assert json.loads(doc) == {"source": {"token": "t"}, "state": {"password": 'p"w'}}
    empty = bytearray(b"{}")
    add_state_password(empty, "x")
    assert json.loads(empty) == {"state": {"password": "x"}}


def test_a_deleted_signup_leaves_the_tables_files(service_database: ServiceDatabase, tmp_path: Path) -> None:
    """With a control: before the delete, the e-mail address is in the table's file on disk."""
    marker = "erase-me-" + canary_value("signup")[7:23] + "@example.com"
    db = open_db(service_database, tmp_path)

    def table_file() -> bytes:
        with service_database.admin() as c:
            c.execute("checkpoint")
            rel = c.execute("select pg_relation_filepath('portshift_service.signups')").fetchone()[0]
        return (service_database.server.data / rel).read_bytes()

    try:
        db.add_signup("Erase Me", marker, "Co")
        db.add_signup("Stay", "stay@example.com", "Co")
        assert marker.encode() in table_file()
        assert db.delete_signup(marker) == 1
        data = table_file()
        assert marker.encode() not in data and b"stay@example.com" in data
    finally:
        db.close()


def test_every_state_table_is_under_row_level_security(service_database: ServiceDatabase, tmp_path: Path) -> None:
    """A state table a later migration adds must name its job (a ``job_id``, or a key in
    job_roles.KEYED_TABLES): otherwise the workers' roles could not use it, and this fails first."""
    db = open_db(service_database, tmp_path)
    try:
        PgJobStates(db)
    finally:
        db.close()
    with service_database.admin() as c:
        rows = c.execute("select tablename, rowsecurity from pg_tables where schemaname = 'public' order by 1").fetchall()
        policies = {r[0] for r in c.execute("select distinct tablename from pg_policies where schemaname = 'public'")}
    uncovered = [t for t, rls in rows if t != "_portshift_migrations" and not (rls and t in policies)]
    assert uncovered == [], f"state tables without row-level security for the job roles: {uncovered}"
    assert {"jobs", "recordings", "files", "workers", "rate_slots"} <= {t for t, _ in rows}
