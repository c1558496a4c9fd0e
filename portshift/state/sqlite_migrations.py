"""Named, ordered migrations of the SQLite job state (the simonw/llm pattern).

Each migration runs once, in order, and is recorded in ``_portshift_migrations``. Never edit a
released migration: add a new one. A file migrated by a newer portshift (a name this code does not
know) is refused rather than written to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # imported by the state when a migration is to apply (~15 ms a process otherwise)
    import sqlite_utils

MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []
migration = MIGRATIONS.append


def up_to_date(conn: sqlite3.Connection) -> bool:
    """Whether the file has exactly the migrations this code knows (plain SQL, no sqlite_utils)."""
    try:
        done = {row[0] for row in conn.execute("select name from _portshift_migrations")}
    except sqlite3.OperationalError:  # no such table: a new file
        return False
    return done == {fn.__name__ for fn in MIGRATIONS}


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    db["_portshift_migrations"].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
    done = {row["name"] for row in db["_portshift_migrations"].rows}
    newer = sorted(done - {fn.__name__ for fn in MIGRATIONS})
    if newer:
        raise ConfigError(
            f"the state was migrated by a newer portshift (schema {newer[-1]})", hint="upgrade portshift to use this state"
        )
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with db.conn:
            fn(db)
            db["_portshift_migrations"].insert({"name": fn.__name__, "applied_at": datetime.now(timezone.utc).isoformat()})
        applied.append(fn.__name__)
    return applied


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    db["jobs"].create(
        {
            "id": str,
            "job_key": str,  # what the job exports from/to (no window); same job file => same key
            "fingerprint": str,  # job_key + window
            "config_path": str,
            "source_type": str,
            "source_location": str,
            "sink_type": str,
            "sink_location": str,
            "window_start": str,
            "window_end": str,
            "export_root": str,
            "started_at": str,
            "finished_at": str,
            "status": str,
            "file_count": int,
            "byte_count": int,
            "error": str,
        },
        pk="id",
    )
    db["jobs"].create_index(["job_key", "started_at"])
    db["recordings"].create(
        {"job_id": str, "recording_id": str, "status": str, "reason": str, "message": str, "updated_at": str},
        pk=("job_id", "recording_id"),
        foreign_keys=[("job_id", "jobs", "id")],
    )
    db["files"].create(
        {
            "job_id": str,
            "key": str,
            "size": int,
            "sha256": str,
            "recording_id": str,
            "artifact": str,
            "content_type": str,
            "recorded_at": str,
            "done_at": str,
        },
        pk=("job_id", "key"),
        foreign_keys=[("job_id", "jobs", "id")],
    )


@migration
def m002_verification_and_manifest(db: sqlite_utils.Database) -> None:
    """What the provider verified per file; the manifest's digest per job."""
    db["files"].add_column("verified", str)
    db["files"].add_column("provider_checksums", str)
    db["files"].add_column("kind", str, not_null_default="content")
    db["jobs"].add_column("manifest_key", str)
    db["jobs"].add_column("manifest_sha256", str)
    db["jobs"].add_column("skipped_count", int, not_null_default=0)
    db["jobs"].add_column("failed_count", int, not_null_default=0)


@migration
def m003_files_by_recording(db: sqlite_utils.Database) -> None:
    """Resume skips artifacts already done within a recording."""
    db["files"].create_index(["job_id", "recording_id"], if_not_exists=True)


@migration
def m004_sink_journal(db: sqlite_utils.Database) -> None:
    """In-flight sink operations (e.g. multipart upload ids) that a crashed run must clean up."""
    db["sink_journal"].create(
        {"job_id": str, "key": str, "data": str, "started_at": str},
        pk=("job_id", "key"),
        foreign_keys=[("job_id", "jobs", "id")],
    )


@migration
def m005_outcomes(db: sqlite_utils.Database) -> None:
    """Pending recordings (with their start time, so a later run lists their time again), the
    artifacts a source reported missing, a pending count per job, and whether a job is an
    incremental (``--since last``) one."""
    db["recordings"].add_column("started_at", str)
    db["recordings"].create_index(["status", "started_at"], if_not_exists=True)
    db["jobs"].add_column("pending_count", int, not_null_default=0)
    db["jobs"].add_column("incremental", int, not_null_default=0)  # a --since last job
    db["jobs"].add_column("listed_count", int, not_null_default=0)  # recordings the last whole listing found
    db["missing_artifacts"].create(
        {"job_id": str, "recording_id": str, "artifact": str, "reason": str, "message": str},
        pk=("job_id", "recording_id", "artifact"),
        foreign_keys=[("job_id", "jobs", "id")],
    )


@migration
def m006_claims(db: sqlite_utils.Database) -> None:
    """Many workers on one job: the listing recorded as ``todo`` recordings that workers claim
    (``claimed_by``; ``ref`` is what rebuilds the recording for a worker that did not list it:
    its key-template fields and size, never call metadata), the workers and their leases, the
    attempts of a job, and whose in-flight operations a journal entry is."""
    db["recordings"].add_column("claimed_by", str)
    db["recordings"].add_column("ref", str)
    db["recordings"].create_index(["job_id", "status", "claimed_by", "started_at", "recording_id"], if_not_exists=True)
    db["jobs"].add_column("attempt", int, not_null_default=0)
    db["jobs"].add_column("listing_attempt", int, not_null_default=0)
    db["sink_journal"].add_column("worker", str)
    db["rate_slots"].create({"key": str, "tat": float, "rate": float}, pk="key")  # a request budget the workers share (GCRA)
    db["workers"].create(
        {"job_id": str, "id": str, "label": str, "attempt": int, "host": str, "pid": int, "started_at": str,
         "lease_until": float, "ended_at": str},
        pk=("job_id", "id"),
        foreign_keys=[("job_id", "jobs", "id")],
    )  # fmt: skip


@migration
def m007_source_rates(db: sqlite_utils.Database) -> None:
    """The request rate a source found at a location (``requests_per_second = "auto"``), for the
    next run against it: keyed by the source's type and location, never by a credential."""
    db["source_rates"].create({"source_key": str, "rate": float, "updated_at": str}, pk="source_key", if_not_exists=True)


@migration
def m008_sealing(db: sqlite_utils.Database) -> None:
    """Bring your own key (docs/byok.md): each sealed job's data key, wrapped by the customer's
    key, and the columns that hold a sealed job's values sealed (the keyed hash stays in the
    column looked up: ``recordings.recording_id``, ``files.key``, ...)."""
    db["job_keys"].create(
        {"job_id": str, "key_label": str, "wrapped": str, "created_at": str, "rewrapped_at": str},
        pk="job_id",
    )
    db["recordings"].add_column("sealed_id", str)
    db["missing_artifacts"].add_column("sealed_id", str)
    db["files"].add_column("sealed_key", str)
    db["files"].add_column("sealed_recording_id", str)


@migration
def m009_rate_cuts(db: sqlite_utils.Database) -> None:
    """When a worker last cut a shared request budget after a 429 (``requests_per_second =
    "auto"`` with several workers: the others' 429s of the same burst cut no further, and the
    worker that leads the search learns of it)."""
    db["rate_slots"].add_column("throttled_at", float)
