"""Choosing the state from the command line: `--state`, `PORTSHIFT_STATE`, `[state]` in the job
file; the database password from `PORTSHIFT_STATE_PASSWORD`, `password_file` or
`--secrets-from-stdin`, and nowhere in argv, output or errors; `portshift jobs` shows the URL
without it. Real `portshift` processes against the test PostgreSQL server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import StateBackend
from .pg_server import PgServer
from .support import PORTSHIFT, sha256sum_check


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTSHIFT_", "PG"))}
    return {**env, **extra}


def _job(tmp_path: Path, state: str = "") -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 2\n\n[source]\ntype = "example"\ncount = 3\n\n'
        f'[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\nfsync = false\n' + state
    )
    return job


def _run(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PORTSHIFT, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture
def pg(pg_server: PgServer) -> StateBackend:
    db = pg_server.new_database()
    return StateBackend("postgres", pg_server.url(db), pg_server.password, pg_server, db)


def _no_password(pg: StateBackend, *texts: str) -> None:
    assert pg.password
    for text in texts:
        assert pg.password not in text


def test_state_option_and_password_from_the_environment(tmp_path: Path, pg: StateBackend) -> None:
    dry = _run(["run", "--config", str(_job(tmp_path)), "--state", pg.target, "--dry-run"], _env(**pg.env()))
    assert dry.returncode == 0, dry.stderr
    with pg.open() as state:
        assert state.jobs() == []  # a dry run records nothing
    r = _run(["run", "--config", str(_job(tmp_path)), "--state", pg.target, "--no-progress"], _env(**pg.env()))
    assert r.returncode == 0, r.stderr
    root = next((tmp_path / "out").iterdir())
    assert sha256sum_check(root).returncode == 0
    jobs = _run(["jobs", "--state", pg.target], _env(**pg.env()))
    assert jobs.returncode == 0 and root.name in jobs.stdout and "complete" in jobs.stdout
    listed = _run(["jobs", "--state", pg.target, "--json"], _env(**pg.env()))
    assert [j["id"] for j in json.loads(listed.stdout)] == [root.name]
    show = _run(["jobs", "show", root.name[-6:], "--state", pg.target], _env(**pg.env()))
    assert show.returncode == 0 and "complete" in show.stdout
    missing = _run(["jobs", "show", "nope", "--state", pg.target], _env(**pg.env()))
    assert missing.returncode == 2
    assert f"no job 'nope' in the state database postgresql://{pg.server.user}@127.0.0.1:{pg.server.port}/{pg.dbname}" in (
        missing.stderr
    )
    assert not (tmp_path / "state.db").exists()
    _no_password(pg, dry.stdout, dry.stderr, r.stdout, r.stderr, jobs.stdout, jobs.stderr, listed.stdout, show.stdout)
    _no_password(pg, missing.stderr)


def test_state_section_with_a_password_file_and_portshift_state(tmp_path: Path, pg: StateBackend) -> None:
    assert pg.password and pg.server
    secret = tmp_path / "db-password"
    secret.write_text(pg.password + "\n")
    url = pg.target.split("?")[0]  # the CA goes in as ca_bundle instead of sslrootcert=
    section = f'\n[state]\nurl = "{url}"\npassword_file = "{secret}"\nca_bundle = "{pg.server.ca_pem}"\n'
    r = _run(["run", "--config", str(_job(tmp_path, section)), "--no-progress"], _env(HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    jobs = _run(["jobs", "--json"], _env(PORTSHIFT_STATE=pg.target, **pg.env()))
    assert len(json.loads(jobs.stdout)) == 1
    _no_password(pg, r.stdout, r.stderr, jobs.stdout, jobs.stderr)


def test_password_from_stdin(tmp_path: Path, pg: StateBackend) -> None:
    assert pg.password
    args = ["run", "--config", str(_job(tmp_path)), "--state", pg.target, "--no-progress", "--secrets-from-stdin"]
    r = _run(args, _env(), stdin=json.dumps({"state": {"password": pg.password}}))
    assert r.returncode == 0, r.stderr
    stdin = json.dumps({"state": {"password": pg.password}})
    jobs = _run(["jobs", "--state", pg.target, "--secrets-from-stdin"], _env(), stdin=stdin)
    assert jobs.returncode == 0 and "complete" in jobs.stdout
    job_id = jobs.stdout.splitlines()[1].split()[0]
    show = _run(["jobs", "show", job_id, "--state", pg.target, "--secrets-from-stdin"], _env(), stdin=stdin)
    assert show.returncode == 0 and "complete" in show.stdout, show.stderr
    _no_password(pg, r.stdout, r.stderr, jobs.stdout, show.stdout, show.stderr)


def test_a_password_in_the_url_or_the_job_file_is_refused(tmp_path: Path, pg: StateBackend) -> None:
    assert pg.password and pg.server
    with_pw = pg.target.replace(f"{pg.server.user}@", f"{pg.server.user}:{pg.password}@")
    r = _run(["run", "--config", str(_job(tmp_path)), "--state", with_pw, "--no-progress"], _env())
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "carries a password" in r.stderr and "PORTSHIFT_STATE_PASSWORD" in r.stderr
    section = f'\n[state]\nurl = "{pg.target}"\npassword = "{pg.password}"\n'
    r2 = _run(["run", "--config", str(_job(tmp_path, section)), "--no-progress"], _env())
    assert r2.returncode == 2 and "[state] password: credentials are never read from the job file" in r2.stderr
    _no_password(pg, r.stdout, r.stderr, r2.stdout, r2.stderr)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_weak_sslmode_or_a_wrong_password_is_one_line_exit_2(tmp_path: Path, pg: StateBackend) -> None:
    assert pg.password
    r = _run(["jobs", "--state", pg.target + "&sslmode=require"], _env(**pg.env()))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "sslmode=require" in r.stderr
    wrong = "wrong-" + "k" * 12
    r2 = _run(["run", "--config", str(_job(tmp_path)), "--state", pg.target], _env(PORTSHIFT_STATE_PASSWORD=wrong))
    assert r2.returncode == 2 and r2.stderr.count("\n") == 1, r2.stderr
    assert "password authentication failed" in r2.stderr and wrong not in r2.stderr
    assert "Traceback" not in r.stderr + r2.stderr
