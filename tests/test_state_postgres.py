"""The PostgreSQL state, where it differs from a file: its schema and migrations, the URL and TLS
rules (verify-full and TLS 1.2+ whatever the URL says, trust from one explicit file, a password
never in the URL), and a database that goes away mid-export.

Everything runs against real servers on 127.0.0.1 started by the tests (tests/pg_server.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from portshift.errors import ConfigError, StateError
from portshift.redact import scrub
from portshift.secrets import Secret
from portshift.state import open_state
from portshift.state.pg_url import parse_url
from portshift.state.postgres import PostgresState
from portshift.state.postgres_migrations import MIGRATIONS

from .conftest import TLSMaterial
from .pg_server import PgServer, start_server
from .test_state import EXPECTED, EXPECTED_PKS


def _open(server: PgServer, db: str, **kw: object) -> PostgresState:
    state = open_state(server.url(db), password=Secret(server.password, "password"), **kw)  # type: ignore[arg-type]
    assert isinstance(state, PostgresState)
    return state


# --- schema and migrations -----------------------------------------------------------------------
def test_a_blank_database_gets_exactly_the_schema_of_the_sqlite_file(pg_server: PgServer) -> None:
    db = pg_server.new_database()
    with _open(pg_server, db) as state:
        assert [r[0] for r in state.conn.execute("select name from _portshift_migrations order by name")] == [
            name for name, _ in MIGRATIONS
        ]
        rows = state.conn.execute(
            "select table_name, column_name, data_type from information_schema.columns where table_schema = 'public'"
        ).fetchall()
        pks = state.conn.execute(
            "select tc.table_name, kcu.column_name from information_schema.table_constraints tc "
            "join information_schema.key_column_usage kcu on kcu.constraint_name = tc.constraint_name "
            "and kcu.table_name = tc.table_name where tc.constraint_type = 'PRIMARY KEY' and tc.table_schema = 'public' "
            "order by tc.table_name, kcu.ordinal_position"
        ).fetchall()
    types = {"text": str, "bigint": int, "double precision": float}
    schema: dict[str, dict[str, type]] = {}
    for table, column, kind in rows:
        schema.setdefault(table, {})[column] = types[kind]
    assert schema == EXPECTED
    got_pks: dict[str, list[str]] = {}
    for table, column in pks:
        got_pks.setdefault(table, []).append(column)
    assert got_pks == EXPECTED_PKS
    with _open(pg_server, db) as again:  # a second open applies nothing
        assert again.conn.execute("select count(*) from _portshift_migrations").fetchone()[0] == len(MIGRATIONS)


def test_a_database_migrated_by_a_newer_portshift_is_refused(pg_server: PgServer) -> None:
    db = pg_server.new_database()
    with _open(pg_server, db) as state:
        state.conn.execute("insert into _portshift_migrations values ('m999_from_the_future', 'x')")
    with pytest.raises(ConfigError, match="migrated by a newer portshift .schema m999_from_the_future.") as e:
        _open(pg_server, db)
    assert e.value.exit_code == 2


def test_a_sqlite_file_migrated_by_a_newer_portshift_is_refused(tmp_path: Path) -> None:
    import sqlite3

    open_state(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as c:
        c.execute("insert into _portshift_migrations values ('m999_from_the_future', 'x')")
    with pytest.raises(ConfigError, match="newer portshift"):
        open_state(tmp_path / "s.db")


# --- the URL -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca"])
def test_a_url_asking_for_weaker_tls_is_refused(mode: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_url(f"postgresql://u@db.example.com/portshift?sslmode={mode}")
    assert str(e.value).count("\n") == 0
    assert f"sslmode={mode}" in str(e.value) and "verify-full" in str(e.value)


def test_verify_full_and_tls12_are_set_whatever_the_url_says(tls_material: TLSMaterial) -> None:
    ca = tls_material.ca_pem
    for url in (
        f"postgresql://u@db.example.com/p?sslrootcert={ca}",
        f"postgresql://u@db.example.com/p?sslmode=verify-full&sslrootcert={ca}&ssl_min_protocol_version=TLSv1",
        f"postgresql://u@db.example.com:6543/p?sslrootcert={ca}&ssl_min_protocol_version=TLSv1.1&channel_binding=require",
    ):
        params = parse_url(url).params
        assert params["sslmode"] == "verify-full" and params["ssl_min_protocol_version"] == "TLSv1.2"
        assert params["gssencmode"] == "disable" and params["sslrootcert"] == str(ca)
    assert (
        parse_url(f"postgresql://u@h/p?sslrootcert={ca}&ssl_min_protocol_version=TLSv1.3").params["ssl_min_protocol_version"]
        == "TLSv1.3"
    )
    assert parse_url("postgresql://u@h/p", ca_bundle=ca).params["sslrootcert"] == str(ca)  # [state] ca_bundle


def test_without_a_ca_the_system_store_is_used_not_ssl_cert_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ssl

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "evil.pem"))
    monkeypatch.setenv("PGSSLROOTCERT", str(tmp_path / "evil.pem"))
    root = parse_url("postgresql://u@db.example.com/p").params["sslrootcert"]
    assert root == ssl.get_default_verify_paths().openssl_cafile
    assert parse_url("postgresql://u@db.example.com/p?sslrootcert=system").params["sslrootcert"] == root


def test_a_password_in_the_url_is_refused_and_masked_at_once() -> None:
    pw = "CANARYurlpw-" + "x9" * 8
    with pytest.raises(ConfigError) as e:
        parse_url(f"postgresql://portshift:{pw}@db.example.com/portshift")
    message = str(e.value)
    assert pw not in message and "PORTSHIFT_STATE_PASSWORD" in message and "password_file" in message
    assert pw not in scrub(f"a log line that mentions {pw}")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("postgresql://u@h/p?passfile=/tmp/x", "passfile"),
        ("postgresql://u@h/p?service=prod", "service"),
        ("postgresql://u@h/", "names no database"),
        ("postgresql:///p", "names no host"),
        ("postgresql://u@h,%2Frun%2Fpostgresql/p", "mixes a Unix socket"),
        ("postgresql://u@h/p?sslrootcert=/nonexistent/ca.pem", "does not exist"),
        ("postgresql://u@h/p?ssl_min_protocol_version=SSLv3", "expected TLSv1.2"),
    ],
)
def test_other_url_mistakes_are_one_line(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        parse_url(url)
    assert "\n" not in str(e.value)


def test_a_unix_socket_on_this_machine_is_the_one_exception() -> None:
    target = parse_url("postgresql://portshift@%2Frun%2Fpostgresql/portshift?sslmode=require")
    assert target.local_socket and target.params["sslmode"] == "disable"
    assert target.redacted == "postgresql://portshift@%2Frun%2Fpostgresql/portshift"


# --- TLS against real servers --------------------------------------------------------------------
def test_every_connection_is_tls_12_or_13(pg_server: PgServer) -> None:
    db = pg_server.new_database()
    with _open(pg_server, db), _open(pg_server, db), pg_server.admin() as admin:
        rows = admin.execute(
            "select s.ssl, s.version from pg_stat_ssl s join pg_stat_activity a using (pid) "
            "where a.datname = %s and a.application_name = 'portshift'",
            [db],
        ).fetchall()
    assert len(rows) == 2 and all(ssl and version in ("TLSv1.2", "TLSv1.3") for ssl, version in rows), rows


def _refused(url: str, password: str, **kw: object) -> str:
    with pytest.raises(ConfigError) as e:
        open_state(url, password=Secret(password, "password"), **kw)  # type: ignore[arg-type]
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message and password not in message
    assert "cannot reach the state database postgresql://" in message
    return message


def test_an_unknown_ca_a_wrong_host_name_and_a_wrong_password_are_one_line(pg_server: PgServer, tmp_path: Path) -> None:
    db = pg_server.new_database()
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    message = _refused(pg_server.url(db).replace(str(pg_server.ca_pem), str(other)), pg_server.password)
    assert "certificate verify failed" in message
    message = _refused(pg_server.url(db).replace("127.0.0.1", "localhost"), pg_server.password)
    assert "does not match host name" in message
    message = _refused(pg_server.url(db), "not-the-password-" + "z" * 10)
    assert "password authentication failed" in message


def test_ssl_cert_file_does_not_add_trust(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    db = pg_server.new_database()
    for name in ("SSL_CERT_FILE", "PGSSLROOTCERT", "REQUESTS_CA_BUNDLE"):
        monkeypatch.setenv(name, str(pg_server.ca_pem))
    monkeypatch.setenv("PGSSLMODE", "disable")
    url = f"postgresql://{pg_server.user}@127.0.0.1:{pg_server.port}/{db}"
    assert "certificate verify failed" in _refused(url, pg_server.password)
    with open_state(url, password=Secret(pg_server.password, "password"), ca_bundle=pg_server.ca_pem):
        pass  # the CA given explicitly, as [state] ca_bundle, is what adds trust


@pytest.fixture(scope="module")
def odd_servers(tls_material: TLSMaterial) -> Iterator[dict[str, PgServer]]:
    servers: dict[str, PgServer] = {}
    try:
        servers["plain"] = start_server(tls_material.ca, tls_material.ca_pem, ssl_on=False)
        servers["tls11"] = start_server(tls_material.ca, tls_material.ca_pem, tls11_only=True)
        servers["socket"] = start_server(tls_material.ca, tls_material.ca_pem, socket=True)
        yield servers
    finally:
        for s in servers.values():
            s.cleanup()


def test_a_unix_socket_on_this_machine_connects_without_tls(odd_servers: dict[str, PgServer]) -> None:
    import urllib.parse

    server = odd_servers["socket"]
    db = server.new_database()
    url = f"postgresql://{server.user}@{urllib.parse.quote(str(server.root), safe='')}:{server.port}/{db}"
    with open_state(url, password=Secret(server.password, "password")) as state:
        state.create_job(id="J", job_key="k")
        assert state.location.startswith(f"postgresql://{server.user}@%2F")
        assert state.conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0] is False
        assert state.conn.info.host == str(server.root)  # the socket, not the network


@pytest.mark.parametrize("kind", ["plain", "tls11"])
def test_a_server_without_tls_or_limited_to_tls_11_is_refused(odd_servers: dict[str, PgServer], kind: str) -> None:
    server = odd_servers[kind]
    message = _refused(server.url("postgres", user="postgres"), server.admin_password)
    if kind == "plain":
        assert "does not support SSL" in message
    else:
        assert "protocol version" in message or "unsupported protocol" in message


# --- a database that goes away -----------------------------------------------------------------
def test_an_unreachable_database_at_start_is_one_line(tmp_path: Path, tls_material: TLSMaterial) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = _refused(f"postgresql://u@127.0.0.1:{port}/p?sslrootcert={tls_material.ca_pem}", "pw-" + "q" * 12)
    assert f"127.0.0.1:{port}" in message and "Connection refused" in message


TERMINATE = "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s and application_name = 'portshift'"


def test_terminated_connections_are_reopened_and_the_run_lock_taken_again(pg_server: PgServer) -> None:
    db = pg_server.new_database()
    with _open(pg_server, db) as state, pg_server.admin() as admin:
        state.connections.lock_check_every = 0  # check the locks' connection before every statement
        state.lock("job-key")
        state.create_job(id="J", job_key="k")  # a writer's connection from the pool
        pid = state.conn.info.backend_pid
        assert len(admin.execute(TERMINATE, [db]).fetchall()) == 2  # the locks' and the writer's
        state.set_recording("J", "r1", "done")  # reconnects both, re-runs
        assert state.conn.info.backend_pid != pid
        assert state.done_recordings("J") == {"r1"}
        with _open(pg_server, db) as other, pytest.raises(Exception, match="in progress"):
            other.lock("job-key")  # the lock came back with the new connection


def test_a_lost_lock_taken_by_another_run_stops_the_job(pg_server: PgServer) -> None:
    from portshift.errors import LockedError

    db = pg_server.new_database()
    with _open(pg_server, db) as state, pg_server.admin() as admin:
        state.connections.lock_check_every = 0
        state.lock("job-key")
        state.create_job(id="J", job_key="k")
        admin.execute(TERMINATE, [db])
        with _open(pg_server, db) as other:
            other.lock("job-key")  # a second run takes the lock while the first is disconnected
            with pytest.raises(LockedError, match="the run lock was lost"):
                state.set_recording("J", "r1", "done")


def test_a_database_away_past_the_budget_stops_with_a_state_error(pg_server: PgServer) -> None:
    from portshift.retry import Backoff

    db = pg_server.new_database()
    with _open(pg_server, db) as state, pg_server.admin() as admin:
        state.connections.reconnect = Backoff(base=0.05, cap=0.1, attempts=2, budget=0.2)
        admin.execute(f"alter database {db} allow_connections false")
        admin.execute(TERMINATE, [db])
        try:
            with pytest.raises(StateError, match="cannot record the job in the state database postgresql://") as e:
                state.create_job(id="J", job_key="k")
            assert e.value.exit_code == 5 and pg_server.password not in str(e.value)
        finally:
            admin.execute(f"alter database {db} allow_connections true")
        state.create_job(id="J", job_key="k")  # and works again once the database is back
        assert state.job("J") is not None


@pytest.mark.parametrize("fault", ["restart", "terminate"])
def test_the_server_restarted_or_the_connections_killed_mid_export_end_in_a_complete_verified_export(
    pg_server: PgServer, tmp_path: Path, fault: str
) -> None:
    from portshift.config import load_job
    from portshift.pipeline import Runner, RunRequest

    from .support import sha256sum_check
    from .test_pipeline import example_doc

    db = pg_server.new_database()
    doc = example_doc(tmp_path / "out", count=40)
    restarted = threading.Event()

    def restart() -> None:
        if fault == "restart":
            pg_server.stop("fast")
            pg_server.start()
        else:  # every connection portshift has to this database, the locks' one included
            with pg_server.admin() as admin:
                assert admin.execute(TERMINATE, [db]).fetchall()
        restarted.set()

    with _open(pg_server, db) as state:
        state.connections.lock_check_every = 0
        first_pid = state.conn.info.backend_pid
        original = state.finish_claim
        calls = {"n": 0}

        def finish_claim(*a: object, **kw: object) -> bool:
            calls["n"] += 1
            if calls["n"] == 10:
                restart()  # the server goes away and comes back between two writes
            return original(*a, **kw)  # type: ignore[arg-type]

        state.finish_claim = finish_claim  # type: ignore[method-assign]
        result = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(RunRequest())
        assert state.conn.info.backend_pid != first_pid  # the connection was really lost and reopened
    assert restarted.is_set()
    assert result.status == "complete", result.message
    assert sha256sum_check(tmp_path / "out" / result.export_root).returncode == 0
    with _open(pg_server, db) as state:
        assert state.recording_counts(result.job_id) == {"done": 40}


def test_a_database_gone_for_good_stops_the_job_cleanly_and_a_rerun_completes(pg_server: PgServer, tmp_path: Path) -> None:
    from portshift.config import load_job
    from portshift.errors import ExitCode
    from portshift.pipeline import Runner, RunRequest
    from portshift.retry import Backoff

    from .support import sha256sum_check
    from .test_pipeline import example_doc

    db = pg_server.new_database()
    doc = example_doc(tmp_path / "out", count=40)
    with _open(pg_server, db) as state, pg_server.admin() as admin:
        state.connections.reconnect = Backoff(base=0.05, cap=0.1, attempts=2, budget=0.3)
        original, calls = state.finish_claim, {"n": 0}

        def finish_claim(*a: object, **kw: object) -> bool:
            calls["n"] += 1
            if calls["n"] == 10:  # the database refuses every connection from here on
                admin.execute(f"alter database {db} allow_connections false")
                admin.execute(TERMINATE, [db])
            return original(*a, **kw)  # type: ignore[arg-type]

        state.finish_claim = finish_claim  # type: ignore[method-assign]
        try:  # the job stops: a failed result, or the StateError itself when the last step meets it (the CLI: exit 5)
            first = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(RunRequest())
            status, code, message = first.status, first.exit_code, first.message
        except StateError as e:
            status, code, message = "failed", e.exit_code, str(e)
        finally:
            admin.execute(f"alter database {db} allow_connections true")
    assert status == "failed" and code == ExitCode.FATAL, message
    assert message.count("state database postgresql://") == 1 and "not currently accepting connections" in message
    assert pg_server.password not in message
    assert not list((tmp_path / "out").glob("*/portshift-manifest.txt"))
    with _open(pg_server, db) as state:
        second = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(RunRequest())
        assert second.status == "complete" and second.resumed, second.message
        assert state.recording_counts(second.job_id) == {"done": 40}
    assert sha256sum_check(tmp_path / "out" / second.export_root).returncode == 0


def test_without_the_postgres_extra_a_url_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if `portshift[postgres]` were not installed
    with pytest.raises(ConfigError, match=r"needs psycopg, which is not installed \(install portshift's postgres extra"):
        open_state("postgresql://portshift@db.example.com/portshift")
