"""Named, ordered migrations of the PostgreSQL job state.

Each runs once, in order, in its own transaction, under a transaction-level advisory lock (two
workers starting at once do not both migrate), and is recorded in ``_portshift_migrations``.
The schema holds exactly what the SQLite one holds. Never edit a released migration: add one.
A database migrated by a newer portshift (a name this code does not know) is refused.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigError

#: the advisory lock key held while migrating ("portshift migrate")
MIGRATE_LOCK = 0x706F7274736D6967

#: every text column compares and sorts bytewise, as in SQLite (manifest order, ids, times)
_T = 'text collate "C"'

MIGRATIONS: list[tuple[str, str]] = [
    (
        "m001_initial",
        f"""
        create table jobs (
            id {_T} primary key, job_key {_T}, fingerprint {_T}, config_path {_T}, source_type {_T},
            source_location {_T}, sink_type {_T}, sink_location {_T}, window_start {_T}, window_end {_T},
            export_root {_T}, started_at {_T}, finished_at {_T}, status {_T}, file_count bigint, byte_count bigint,
            error {_T}, manifest_key {_T}, manifest_sha256 {_T}, skipped_count bigint not null default 0,
            failed_count bigint not null default 0, pending_count bigint not null default 0,
            incremental bigint not null default 0, listed_count bigint not null default 0
        );
        create index jobs_job_key_started_at on jobs (job_key, started_at);
        create table recordings (
            job_id {_T} not null references jobs (id), recording_id {_T} not null, status {_T}, reason {_T},
            message {_T}, updated_at {_T}, started_at {_T}, primary key (job_id, recording_id)
        );
        create index recordings_status_started_at on recordings (status, started_at);
        create table files (
            job_id {_T} not null references jobs (id), key {_T} not null, size bigint, sha256 {_T},
            recording_id {_T}, artifact {_T}, content_type {_T}, recorded_at {_T}, done_at {_T}, verified {_T},
            provider_checksums {_T}, kind {_T} not null default 'content', primary key (job_id, key)
        );
        create index files_job_id_recording_id on files (job_id, recording_id);
        create table sink_journal (
            job_id {_T} not null references jobs (id), key {_T} not null, data {_T}, started_at {_T},
            primary key (job_id, key)
        );
        create table missing_artifacts (
            job_id {_T} not null references jobs (id), recording_id {_T} not null, artifact {_T} not null,
            reason {_T}, message {_T}, primary key (job_id, recording_id, artifact)
        );
        """,
    ),
    (
        "m002_claims",
        f"""
        alter table recordings add column claimed_by {_T}, add column ref {_T};
        create index recordings_to_claim on recordings (job_id, status, claimed_by, started_at, recording_id);
        alter table jobs add column attempt bigint not null default 0, add column listing_attempt bigint not null default 0;
        alter table sink_journal add column worker {_T};
        create table workers (
            job_id {_T} not null references jobs (id), id {_T} not null, label {_T}, attempt bigint, host {_T},
            pid bigint, started_at {_T}, lease_until double precision, ended_at {_T}, primary key (job_id, id)
        );
        create table rate_slots (key {_T} primary key, tat double precision, rate double precision);
        """,
    ),
    (
        "m003_source_rates",
        f"create table source_rates (source_key {_T} primary key, rate double precision not null, updated_at {_T})",
    ),
    (
        "m004_sealing",  # bring your own key (docs/byok.md), the same as SQLite's m008_sealing
        f"""
        create table job_keys (
            job_id {_T} primary key, key_label {_T} not null, wrapped {_T} not null, created_at {_T}, rewrapped_at {_T}
        );
        alter table recordings add column sealed_id {_T};
        alter table missing_artifacts add column sealed_id {_T};
        alter table files add column sealed_key {_T};
        alter table files add column sealed_recording_id {_T};
        """,
    ),
    ("m005_rate_cuts", "alter table rate_slots add column throttled_at double precision"),  # as SQLite's m009_rate_cuts
]


def migrate(conn: Any) -> list[str]:
    """Apply every migration not yet applied (``conn`` in autocommit); return the names applied now."""
    known = [name for name, _ in MIGRATIONS]
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s)", [MIGRATE_LOCK])
        if conn.execute("select to_regclass('_portshift_migrations') is null").fetchone()[0]:  # a worker's role may not create
            conn.execute("create table if not exists _portshift_migrations (name text primary key, applied_at text)")
        done = {r[0] for r in conn.execute("select name from _portshift_migrations")}
    newer = sorted(done - set(known))
    if newer:
        raise ConfigError(
            f"the state database was migrated by a newer portshift (schema {newer[-1]})",
            hint="upgrade portshift to use this database",
        )
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", [MIGRATE_LOCK])
            if conn.execute("select 1 from _portshift_migrations where name = %s", [name]).fetchone():
                continue  # another worker applied it while we waited
            conn.execute(sql)
            conn.execute(
                "insert into _portshift_migrations (name, applied_at) values (%s, %s)",
                [name, datetime.now(timezone.utc).isoformat()],
            )
        applied.append(name)
    return applied
