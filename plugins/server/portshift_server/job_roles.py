"""A database role per job: what a worker may do in the service's PostgreSQL, and nothing more.

When a job's worker starts, the service creates a login role for it (a random name that says
nothing about the job, a random password handed over only on the worker's credential channel,
``VALID UNTIL`` the job's longest run, a small connection limit) as a member of one group role
per database, ``ps_workers_<hash of the database name>``. The group may read and write the core
state tables (``jobs``, and every table with a ``job_id`` column: ``recordings``, ``files``,
``sink_journal``, ``missing_artifacts``, ``workers``…; and ``rate_slots``, whose key ends with the
state job id) and read ``_portshift_migrations``; nothing in the schema
``portshift_service`` (service jobs, sign-ups, rate counters, these mappings). Row-level security
on each state table (one policy per table, whatever columns a later migration adds) limits the
group to the state jobs of the service job its login role was made for:

- a worker's first ``insert into jobs`` (or ``job_keys``, written first for a job sealed with the
  customer's key) claims that state job id for its service job (``claim_state_job``, in the
  policy's ``WITH CHECK``); an id that exists already is refused;
- every other row is visible and writable only when its job id is one its service job claimed
  (``my_state_jobs()``, evaluated once per statement).

The role is dropped when the job's worker ends, and by :meth:`PgJobStates.sweep` for runs that ended
without it. ``CREATE ROLE`` carries a pre-hashed SCRAM verifier, never the password, so a server
logging every statement logs no password. The service's own role needs ``CREATEROLE`` (docs/serve.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets as _random
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from portshift import PortshiftError
from portshift.errors import ConfigError

from .job_state import progress_of
from .service_pg import SCHEMA, PgServiceDB

log = logging.getLogger("portshift.server.job_roles")

#: the advisory lock held (transaction-level) while the isolation is set up ("portshift_rls")
RLS_LOCK = 0x706F72747372_6C73
ROLE_PREFIX = "ps_job_"
CONNECTION_LIMIT = 12  # the core's pool (8) and its lock connection, with room for one reconnect


def group_name(dbname: str) -> str:
    """The group role of one database's workers (roles are per cluster, policies per database)."""
    return "ps_workers_" + hashlib.sha256(dbname.encode()).hexdigest()[:16]


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802/7677), as PostgreSQL stores it."""
    salt = _random.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def _functions(state_schema: str) -> list[sql.Composed]:
    s, st = sql.Identifier(SCHEMA), sql.Identifier(state_schema)
    # my_state_jobs is volatile so that it sees a claim made earlier in the same statement: an
    # ``insert ... on conflict`` into jobs checks the read policy on the new row after the claim
    return [
        sql.SQL(
            "create or replace function {s}.my_state_jobs() returns text[] language plpgsql volatile security definer "
            "set search_path = pg_catalog, pg_temp as $$ begin return (select coalesce(array_agg(o.state_job_id), '{{}}') "
            "from {s}.state_owners o join {s}.job_roles r on r.service_job = o.service_job "
            "where r.role_name = session_user); end $$"
        ).format(s=s),
        sql.SQL(
            "create or replace function {s}.claim_state_job(job_id text) returns boolean language plpgsql volatile "
            "security definer set search_path = pg_catalog, pg_temp as $$ declare mine text; begin "
            "select service_job into mine from {s}.job_roles where role_name = session_user; "
            "if mine is null then return false; end if; "
            "if not exists (select 1 from {st}.jobs j where j.id = job_id) then "
            "insert into {s}.state_owners (state_job_id, service_job) values (job_id, mine) on conflict do nothing; end if; "
            "return exists (select 1 from {s}.state_owners o where o.state_job_id = job_id and o.service_job = mine); end $$"
        ).format(s=s, st=st),
    ]


#: state tables whose first insert of a job may claim it, as ``insert into jobs`` does: a sealed
#: job's wrapped data key is recorded before the job (portshift/state/sealed.py)
CLAIMING_TABLES = {"job_keys": "job_id"}
#: state tables whose rows name their state job inside a text key, ``<what>:<state job id>``
#: (the request budget a job's workers share: portshift/pipeline/shared_rate.py)
KEYED_TABLES = {"rate_slots": "key"}


def state_tables(conn: psycopg.Connection[Any], state_schema: str) -> dict[str, sql.Composable]:
    """The state tables that hold a job's rows (besides ``jobs``), each with the SQL expression
    of the state job a row belongs to: every table with a ``job_id``, and :data:`KEYED_TABLES`."""
    rows = conn.execute(
        "select table_name, column_name from information_schema.columns where table_schema = %s "
        "and table_name in (select tablename from pg_tables where schemaname = %s) and table_name <> 'jobs' order by 1",
        [state_schema, state_schema],
    ).fetchall()
    out: dict[str, sql.Composable] = {}
    for table, column in rows:
        if column == "job_id":
            out[table] = sql.Identifier("job_id")
        elif KEYED_TABLES.get(table) == column:
            out[table] = sql.SQL("regexp_replace({}, '^.*:', '')").format(sql.Identifier(column))
    return out


def setup_isolation(conn: psycopg.Connection[Any], state_schema: str, dbname: str) -> str:
    """Create (again) the group role, the functions, the grants and the policies; return the group."""
    group = group_name(dbname)
    g, s, st = sql.Identifier(group), sql.Identifier(SCHEMA), sql.Identifier(state_schema)
    mine = sql.SQL("= any ((select {}.my_state_jobs())::text[])").format(s)  # one call per statement
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", [RLS_LOCK])
        if not conn.execute("select 1 from pg_roles where rolname = %s", [group]).fetchone():
            conn.execute(sql.SQL("create role {} nologin").format(g))
        for statement in _functions(state_schema):
            conn.execute(statement)
        for fn in ("my_state_jobs()", "claim_state_job(text)"):
            conn.execute(sql.SQL("revoke all on function {}.{} from public").format(s, sql.SQL(fn)))
            conn.execute(sql.SQL("grant execute on function {}.{} to {}").format(s, sql.SQL(fn), g))
        conn.execute(sql.SQL("grant usage on schema {} to {}").format(s, g))
        conn.execute(sql.SQL("grant usage on schema {} to {}").format(st, g))
        conn.execute(sql.SQL("grant select on {}._portshift_migrations to {}").format(st, g))
        tables = state_tables(conn, state_schema)
        for table in ["jobs", *tables]:
            t = sql.SQL("{}.{}").format(st, sql.Identifier(table))
            conn.execute(sql.SQL("grant select, insert, update, delete on {} to {}").format(t, g))
            conn.execute(sql.SQL("alter table {} enable row level security").format(t))
            for old in conn.execute(
                "select policyname from pg_policies where schemaname = %s and tablename = %s and policyname like 'portshift_%%'",
                [state_schema, table],
            ).fetchall():
                conn.execute(sql.SQL("drop policy {} on {}").format(sql.Identifier(old[0]), t))
            if table == "jobs":
                conn.execute(sql.SQL("create policy portshift_read on {} for select to {} using (id {})").format(t, g, mine))
                claim = sql.SQL("create policy portshift_claim on {} for insert to {} with check ({}.claim_state_job(id))")
                conn.execute(claim.format(t, g, s))
                conn.execute(
                    sql.SQL("create policy portshift_update on {} for update to {} using (id {m}) with check (id {m})").format(
                        t, g, m=mine
                    )
                )
                conn.execute(sql.SQL("create policy portshift_delete on {} for delete to {} using (id {})").format(t, g, mine))
            else:
                own = sql.SQL("create policy portshift_own on {} to {} using ({e} {m}) with check ({e} {m})")
                conn.execute(own.format(t, g, e=tables[table], m=mine))
            if table in CLAIMING_TABLES:
                claim = sql.SQL("create policy portshift_claim on {} for insert to {} with check ({}.claim_state_job({}))")
                conn.execute(claim.format(t, g, s, sql.Identifier(CLAIMING_TABLES[table])))
        for table in shared_tables(conn, state_schema, tables):
            # no job's rows (e.g. source_rates: what a source found at a tenant's address): a job's
            # role sees none of them and can add none (the worker goes on without that memory)
            t = sql.SQL("{}.{}").format(st, sql.Identifier(table))
            conn.execute(sql.SQL("grant select, insert, update on {} to {}").format(t, g))
            conn.execute(sql.SQL("alter table {} enable row level security").format(t))
            conn.execute(sql.SQL("drop policy if exists portshift_none on {}").format(t))
            conn.execute(sql.SQL("create policy portshift_none on {} to {} using (false) with check (false)").format(t, g))
    return group


def shared_tables(conn: psycopg.Connection[Any], state_schema: str, scoped: dict[str, sql.Composable]) -> list[str]:
    """State tables that belong to no job: closed to every job's role."""
    rows = conn.execute("select tablename from pg_tables where schemaname = %s order by 1", [state_schema]).fetchall()
    return [t for (t,) in rows if t not in scoped and t not in ("jobs", "_portshift_migrations")]


def create_role(
    conn: psycopg.Connection[Any], group: str, state_schema: str, service_job: str, valid_for: float
) -> tuple[str, str]:
    """A new login role for one run of ``service_job``: (role name, password). The password
    exists only in the value returned; the server sees its SCRAM verifier."""
    role = ROLE_PREFIX + _random.token_hex(12)
    password = _random.token_urlsafe(32)
    until = (datetime.now(timezone.utc) + timedelta(seconds=valid_for)).isoformat(timespec="seconds")
    r = sql.Identifier(role)
    with conn.transaction():
        conn.execute(
            sql.SQL("insert into {}.job_roles (role_name, service_job, created_at) values (%s, %s, %s)").format(
                sql.Identifier(SCHEMA)
            ),
            [role, service_job, datetime.now(timezone.utc).isoformat(timespec="seconds")],
        )
        conn.execute(
            sql.SQL("create role {} login connection limit {} password {} valid until {} in role {}").format(
                r, sql.Literal(CONNECTION_LIMIT), sql.Literal(scram_verifier(password)), sql.Literal(until), sql.Identifier(group)
            )
        )
        conn.execute(sql.SQL("alter role {} set search_path = {}").format(r, sql.Identifier(state_schema)))
    return role, password


def drop_roles(
    conn: psycopg.Connection[Any], service_job: str | None = None, *, keep: set[str] | None = None, before: str | None = None
) -> int:
    """Drop the login roles of ``service_job``, or (None) of every job not in ``keep`` whose role
    was created before ``before`` (an ISO time; None: any time); how many were dropped. A role
    that cannot be dropped now stays listed for the next sweep."""
    if service_job is None:
        rows = conn.execute(
            sql.SQL("select role_name from {}.job_roles where service_job <> all(%s) and created_at < %s").format(
                sql.Identifier(SCHEMA)
            ),
            [sorted(keep or ()), before or "9999"],
        ).fetchall()
    else:
        rows = conn.execute(
            sql.SQL("select role_name from {}.job_roles where service_job = %s").format(sql.Identifier(SCHEMA)), [service_job]
        ).fetchall()
    dropped = 0
    for (role,) in rows:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("delete from {}.job_roles where role_name = %s").format(sql.Identifier(SCHEMA)), [role])
            dropped += 1
        except psycopg.Error as e:
            log.warning("a job's database role could not be dropped yet (%s); the next sweep tries again", type(e).__name__)
    return dropped


def worker_url(params: dict[str, Any], role: str) -> str:
    """The state URL of a worker: the service's host, port, database and CA, the job's role."""
    query = {k: str(params[k]) for k in ("host", "port", "sslrootcert", "ssl_min_protocol_version") if params.get(k)}
    return f"postgresql://{urllib.parse.quote(role, safe='')}@/{urllib.parse.quote(str(params['dbname']), safe='')}?" + (
        urllib.parse.urlencode(query, safe="/,")
    )


class PgJobStates:
    """The jobs' state in the service's PostgreSQL, each run with a role of its own."""

    def __init__(self, db: PgServiceDB) -> None:
        self.db = db
        self.schema = db.state_schema
        params = db.state.target.params
        try:
            self.group = db.state.connections.run(
                "set up the per-job roles", lambda c: setup_isolation(c, self.schema, str(params["dbname"]))
            )
        except PortshiftError as e:
            raise ConfigError(
                str(e), hint="the service's role needs CREATEROLE and must own the state tables (docs/serve.md)"
            ) from None
        db.state.seals.unwrap = False  # a sealed job's key is for its worker only: the service reads its clear fields
        self.tables: dict[str, sql.Composable] = db.state.connections.run(
            "list the state tables", lambda c: state_tables(c, self.schema)
        )

    def start(self, job_id: str, work: Path, valid_for: float) -> tuple[str | Path, str | None]:
        role, password = self.db.state.connections.run(
            "create the job's database role", lambda c: create_role(c, self.group, self.schema, job_id, valid_for)
        )
        return worker_url(self.db.state.target.params, role), password

    def _state_jobs(self, job_id: str) -> list[str]:
        rows = self.db._query(
            "read the job's state",
            sql.SQL(
                "select o.state_job_id from {}.state_owners o join {}.jobs j on j.id = o.state_job_id "
                "where o.service_job = %s order by j.started_at desc, j.id desc"
            ).format(sql.Identifier(SCHEMA), sql.Identifier(self.schema)),
            [job_id],
        )
        return [r["state_job_id"] for r in rows]

    def read(self, job_id: str, target: str | Path) -> dict[str, Any] | None:
        try:
            ids = self._state_jobs(job_id)
            return progress_of(self.db.state, ids[0]) if ids else None
        except PortshiftError:
            return None  # the database is away: the next tick reads again

    def end(self, job_id: str) -> None:
        self.db.state.connections.run("drop the job's database role", lambda c: drop_roles(c, job_id))

    def remove(self, job_id: str) -> None:
        self.end(job_id)
        ids = self._state_jobs(job_id)
        st = sql.Identifier(self.schema)

        def delete(conn: Any) -> None:
            with conn.transaction():
                for table, column in [*self.tables.items(), ("jobs", sql.Identifier("id"))]:
                    conn.execute(sql.SQL("delete from {}.{} where {} = any(%s)").format(st, sql.Identifier(table), column), [ids])
                owners = sql.SQL("delete from {}.state_owners where service_job = %s").format(sql.Identifier(SCHEMA))
                conn.execute(owners, [job_id])

        self.db.state.connections.run("delete the job's state", delete)

    def sweep(self, running: set[str] | None = None) -> None:
        """Drop the roles of runs that are over. With ``running`` (a sweep while the service
        serves), only roles older than a minute: a run starting now is not in ``running`` yet."""
        before = None
        if running is not None:
            before = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat(timespec="seconds")
        self.db.state.connections.run("drop leftover job roles", lambda c: drop_roles(c, None, keep=running, before=before))
