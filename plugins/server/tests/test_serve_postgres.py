"""`portshift serve --database postgresql://...` end to end, as a real subprocess.

Jobs with canary credentials run to completion; their workers keep their state in the service's
PostgreSQL (no state file on disk) under a role made for the job and gone once it ended. Then the
canary sweep reads the PostgreSQL server's log (``log_statement=all``, ``log_connections``) and a
``pg_dump`` of the service database, as well as every file of the service and its output: no
canary credential, no job role's password, no service role's password in any of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from portshift_source_chorus.simulator import ChorusSimulator

from . import pg_fixtures
from .conftest import (
    CHORUS_TOKEN,
    CHORUS_WINDOW,
    Certs,
    canary_job,
    canary_value,
    find_canary,
    start_job,
    start_server,
    wait_status,
)
from .pg_fixtures import ServiceDatabase
from .test_api import verify_export
from .test_jobs import exported

pg_server, service_database = pg_fixtures.pg_server, pg_fixtures.service_database  # the fixtures


def pg_dump(db: ServiceDatabase) -> bytes:
    s = db.server
    conninfo = f"host=127.0.0.1 port={s.port} dbname={db.dbname} user=postgres sslmode=verify-full sslrootcert={s.ca_pem}"
    r = subprocess.run(
        [pg_fixtures.pg.pg_bin("pg_dump"), "--no-owner", "-d", conninfo],
        capture_output=True,
        env={"PATH": os.environ.get("PATH", ""), "PGPASSWORD": s.admin_password},
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def job_roles(db: ServiceDatabase) -> list[str]:
    with db.admin() as c:
        return [r[0] for r in c.execute("select role_name from portshift_service.job_roles")]


def roles_exist(db: ServiceDatabase, roles: list[str]) -> list[str]:
    with db.admin() as c:
        return [r[0] for r in c.execute("select rolname from pg_roles where rolname = any(%s)", [roles])]


def serve_cli(db: ServiceDatabase, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PORTSHIFT_SERVE_DATABASE_PASSWORD"] = db.password
    return subprocess.run(
        [sys.executable, "-m", "portshift", "serve", "--data-dir", str(root / "data"), "--database", db.url, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_jobs_keep_their_state_in_postgres_and_no_secret_reaches_it(
    service_database: ServiceDatabase, certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path: Path
) -> None:
    db = service_database
    pw = db.options(tmp_path).password_file
    log_start = len(db.server.log_text())
    server = start_server(
        certs,
        plugin_path,
        chorus,
        tmp_path / "svc",
        "--database",
        db.url,
        "--database-password-file",
        str(pw),
        "--max-jobs-per-client",
        "4",
        "--rate-jobs",
        "100/60",
    )
    try:
        c = server.client()
        token, key = canary_value("pgtoken"), canary_value("pgkey")
        bodies = [
            {
                "source": {"type": "canary", "token": token, "count": 5, "media_size": 20_000, "delay": 0.3},
                "sink": {"type": "canarylocal", "key": key},
            },
            {"source": {"type": "canary", "token": token, "count": 3, "delay": 0.3}, "sink": {"type": "local"}},
            # the Chorus source reads its shared request budget in the state (rate_slots) before each request
            {"source": {"type": "chorus", "token": CHORUS_TOKEN}, "sink": {"type": "local"}, **CHORUS_WINDOW},
        ]
        jobs = [c.post("/api/jobs", json=b).json() for b in bodies]
        # while they run: each worker logs in with a role of its own, named in its state URL (no job id in it)
        seen_roles: set[str] = set()
        argvs: list[bytes] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen_roles) < 3:
            seen_roles |= set(job_roles(db))
            for pid in server.workers():
                try:
                    argvs.append(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    pass
            time.sleep(0.05)
        assert len(seen_roles) == 3, seen_roles
        done = [wait_status(c, j["id"], ("complete", "failed", "partial")) for j in jobs]
        assert [d["status"] for d in done] == ["complete", "complete", "complete"], done
        assert [d["recordings"]["done"] for d in done][:2] == [5, 3] and done[2]["recordings"]["done"] >= 5
        assert all(d["files"] > 0 for d in done)
        state_args = [a.split(b"\0")[a.split(b"\0").index(b"--state") + 1] for a in argvs if b"--state" in a]
        assert state_args and all(s.startswith(b"postgresql://ps_job_") for s in state_args)
        assert not any(j["id"].encode() in s for s in state_args for j in jobs)

        # the state is in the database, none on disk; the roles are gone
        assert not list(server.data_dir.rglob("state.db*"))
        with db.admin() as a:
            owned = dict(a.execute("select service_job, count(*) from portshift_service.state_owners group by 1").fetchall())
            assert owned == {j["id"]: 1 for j in jobs}
            assert a.execute("select count(*) from public.files").fetchone()[0] >= sum(d["files"] for d in done)
        time.sleep(0.5)
        assert job_roles(db) == [] and roles_exist(db, sorted(seen_roles)) == []

        # a sign-up goes to the same database, and the operator's commands find it there
        assert c.post("/api/signups", json={"name": "Ada", "email": "ada@example.com", "company": "Engines"}).status_code == 201
        exported = serve_cli(db, tmp_path / "svc", "signups", "export")
        assert exported.returncode == 0 and "ada@example.com" in exported.stdout, exported.stderr
    finally:
        server.stop()

    # the sweep: the PostgreSQL server log since this test began, a pg_dump, the service's files and output
    canaries = [token, key, db.password, CHORUS_TOKEN]
    log = db.server.log_text()[log_start:].encode()
    dump = pg_dump(db)
    assert jobs[0]["id"].encode() in dump and b"ada@example.com" in dump  # the control: real rows were dumped
    assert b"create role" in log.lower() and b"ps_job_" in log  # the control: the log has the role statements
    assert b"SCRAM-SHA-256$" in log  # CREATE ROLE carried a verifier, not a password
    # every connection of the service and of the workers' roles was TLS 1.2+ (the server logs each)
    authorized = [ln for ln in log.splitlines() if b"connection authorized: user=" in ln]
    for role in [*seen_roles, db.role]:
        mine = [ln for ln in authorized if f"user={role} ".encode() in ln]
        assert mine and all(b"SSL enabled (protocol=TLSv1.3" in ln or b"SSL enabled (protocol=TLSv1.2" in ln for ln in mine), role
    hits = {"server log": find_canary(log, canaries), "pg_dump": find_canary(dump, canaries)}
    files = [p for p in (tmp_path / "svc").rglob("*") if p.is_file() and p != pw]
    hits |= {str(p): h for p in files if (h := find_canary(p.read_bytes(), canaries))}
    assert not any(hits.values()), hits
    # every password of a job role is a 43-character token: none is in the log in clear after "password"
    assert b"password '" not in log.lower().replace(b"password 'scram-sha-256$", b"")


def test_signups_delete_on_postgres(service_database: ServiceDatabase, tmp_path: Path) -> None:
    from portshift_server.service_store import open_service_db

    store: Any = open_service_db(tmp_path, service_database.options(tmp_path))
    try:
        store.add_signup("Ada", "ada@example.com", "Engines")
        store.add_signup("Bob", "bob@example.com", "Bobs")
    finally:
        store.close()
    gone = serve_cli(service_database, tmp_path, "signups", "delete", "ADA@example.com")
    assert gone.returncode == 0 and gone.stdout.strip() == "deleted 1 sign-up", gone.stderr
    again = serve_cli(service_database, tmp_path, "signups", "delete", "ada@example.com")
    assert again.returncode != 0 and "no sign-up with that e-mail address" in again.stderr and "Traceback" not in again.stderr
    left = serve_cli(service_database, tmp_path, "signups", "export")
    assert "bob@example.com" in left.stdout and "ada@" not in left.stdout
    status = serve_cli(service_database, tmp_path, "status")
    assert status.returncode == 0 and "complete: 0" in status.stdout, status.stderr


def test_a_killed_job_resumes_from_its_state_in_postgres(
    service_database: ServiceDatabase, certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path: Path
) -> None:
    """The resumed run logs in with a new role that sees the job's earlier state, so files done
    before the kill are kept (same inode and mtime), not exported again."""
    db = service_database
    server = start_server(
        certs,
        plugin_path,
        chorus,
        tmp_path / "svc",
        "--database",
        db.url,
        env_extra={"PORTSHIFT_SERVE_DATABASE_PASSWORD": db.password},  # the password from the environment this time
    )
    try:
        c = server.client()
        token = canary_value("pgresume")
        job = start_job(c, canary_job(token, count=12, delay=0.25))
        pid = server.worker_of(job["id"])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"PORTSHIFT_SERVE_DATABASE" not in environ and db.password.encode() not in environ  # not the service's
        deadline = time.monotonic() + 30
        while (snap := c.get(f"/api/jobs/{job['id']}").json())["files"] < 6:
            assert snap["status"] == "running" and time.monotonic() < deadline, snap
            time.sleep(0.05)
        first_roles = job_roles(db)
        assert len(first_roles) == 1
        os.kill(pid, signal.SIGKILL)
        failed = wait_status(c, job["id"], ("failed", "complete", "cancelled"))
        assert failed["status"] == "failed", failed
        root = server.local_root / server.work_dir(job["id"]).name / failed["export_root"]
        # the files the killed run recorded as done (a file renamed into place just before the
        # kill but not yet recorded is exported again, on either backend)
        with db.admin() as a:
            keys = [r[0] for r in a.execute("select key from public.files where kind = 'content'")]
        before = {rel: ident for rel, ident in exported(root).items() if any(k.endswith("/" + rel) or k == rel for k in keys)}
        assert 6 <= len(before) < 24, (len(before), keys[:3])
        time.sleep(0.3)
        assert job_roles(db) == [] and roles_exist(db, first_roles) == []  # the killed run's role is gone

        assert c.post(f"/api/jobs/{job['id']}/resume", json={"source": {"token": token}}).status_code == 202
        done = wait_status(c, job["id"], ("complete", "failed"))
        assert done["status"] == "complete" and done["files"] == 24 and done["attempts"] == 2, done
        after = exported(root)
        assert all(after[rel] == ident for rel, ident in before.items()), "files were exported again instead of kept"
        assert verify_export(root) == 25
        with db.admin() as a:  # one state job, continued by the second run
            assert a.execute("select count(*) from portshift_service.state_owners").fetchone()[0] == 1
    finally:
        server.stop()


def test_a_job_role_that_cannot_be_made_is_a_503_not_a_crash(
    service_database: ServiceDatabase, certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path: Path
) -> None:
    db = service_database
    pw = db.options(tmp_path).password_file
    server = start_server(certs, plugin_path, chorus, tmp_path / "svc", "--database", db.url, "--database-password-file", str(pw))
    try:
        c = server.client()
        with db.server.admin() as a:
            a.execute(f"alter role {db.role} nocreaterole")
        resp = c.post("/api/jobs", json=canary_job(canary_value("norole"), count=1))
        assert resp.status_code == 503 and "database is not available for new jobs" in resp.text and resp.headers["retry-after"]
        with db.admin() as a:  # the refused job is recorded failed, not left starting
            rows = a.execute("select status, error from portshift_service.jobs").fetchall()
            assert rows == [("failed", "the service database was not available; resume the job to try again")]
        with db.server.admin() as a:
            a.execute(f"alter role {db.role} createrole")
        job = start_job(c, canary_job(canary_value("role-again"), count=1))
        assert wait_status(c, job["id"], ("complete", "failed"))["status"] == "complete"
        assert b"permission denied to create role" in server.stderr.read_bytes()
    finally:
        server.stop()


def test_a_bad_database_option_is_one_clear_line(tmp_path: Path) -> None:
    cases = {
        "mysql://x@127.0.0.1/z": "--database must be a postgresql:// URL",
        "postgresql://x@127.0.0.1:1/z?sslmode=require": "only with sslmode=verify-full",
        "postgresql://x:CANARY-pw-in-url@127.0.0.1:1/z": "carries a password",
    }
    for url, message in cases.items():
        r = subprocess.run(
            [sys.executable, "-m", "portshift", "serve", "--data-dir", str(tmp_path), "--database", url, "status"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")},
        )
        assert r.returncode == 2 and message in r.stderr, (url, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and "CANARY-pw" not in r.stderr


def test_a_sandboxed_job_keeps_its_state_in_postgres(
    service_database: ServiceDatabase, certs: Certs, plugin_path: Path, chorus: ChorusSimulator, worker_python: Path
) -> None:
    """The default launcher and the service database together: the worker, inside bubblewrap under
    a uid of its own, reaches the database over verified TLS with its run's role (the database's
    CA shown to it read-only, nothing else of the host), and its progress is read from there."""
    import shutil
    import tempfile

    db = service_database
    root = Path(tempfile.mkdtemp(prefix="portshift-sandbox-pg-"))
    try:
        os.chmod(root, 0o755)
        plugins = root / "plugins"
        shutil.copytree(plugin_path, plugins)
        ca = root / "db-ca.pem"  # public: the job's uid reads it to trust the database
        shutil.copyfile(db.server.ca_pem, ca)
        subprocess.run(["chmod", "-R", "a+rX", str(plugins), str(ca)], check=True)
        server = start_server(
            certs,
            plugins,
            chorus,
            root / "service",
            "--database",
            db.url,
            "--database-ca",
            str(ca),
            env_extra={"PORTSHIFT_SERVE_DATABASE_PASSWORD": db.password},
            launcher=("--launcher", "sandbox", "--worker-python", str(worker_python)),
        )
        try:
            c = server.client()
            token = canary_value("pgsandbox")
            job = start_job(c, canary_job(token, count=4))
            done = wait_status(c, job["id"], ("complete", "failed"))
            assert done["status"] == "complete" and done["files"] == 8, done
            with db.admin() as a:  # the worker's state is in the database, under the run's role
                assert a.execute("select count(*) from public.files where kind = 'content'").fetchone()[0] == 8
            assert not list((root / "service").rglob("state.db"))  # no state file anywhere
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
