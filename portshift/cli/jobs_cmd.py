"""`portshift jobs`: list jobs; `portshift jobs show ID`: one job."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from ..progress import human_bytes
from ..state import State, default_state_path, is_postgres_url
from ..state.choose import chosen_target, open_chosen_state, state_options
from . import common_options
from .options import read_stdin_secrets, secrets_stdin_option

state_option = click.option("--state", "state_path", metavar="PATH|URL", help="the state: a file or a postgresql:// URL")


def _open(ctx: click.Context, state_path: str | None, secrets_from_stdin: bool = False) -> State:
    target = state_path or ctx.obj.get("state_path")
    secrets = read_stdin_secrets() if secrets_from_stdin or ctx.obj.get("secrets_from_stdin") else None
    return open_chosen_state(target, state_options(None, secrets), create=False)


@click.group("jobs", invoke_without_command=True)
@state_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--limit", default=50, show_default=True, help="how many jobs, newest first")
@secrets_stdin_option
@common_options
@click.pass_context
def command(ctx: click.Context, state_path: str | None, as_json: bool, limit: int, secrets_from_stdin: bool) -> None:
    """List export jobs, newest first. The state's password (PostgreSQL) comes from
    PORTSHIFT_STATE_PASSWORD or --secrets-from-stdin ({"state": {"password": "..."}})."""
    ctx.ensure_object(dict)
    ctx.obj["state_path"] = state_path
    ctx.obj["secrets_from_stdin"] = secrets_from_stdin
    if ctx.invoked_subcommand:
        return
    target = chosen_target(state_path, None)
    if not is_postgres_url(target) and not Path(target or default_state_path()).exists():
        click.echo("[]" if as_json else f"no jobs yet (no state file at {target or default_state_path()})")
        return
    with _open(ctx, state_path) as state:
        rows = state.jobs(limit)
        where, state_is_file = state.location, state.path is not None
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no jobs yet" if state_is_file else f"no jobs yet in {where}")
        return
    click.echo(f"{'JOB':<24} {'STATUS':<11} {'FILES':>7} {'BYTES':>10}  WINDOW")
    for r in rows:
        click.echo(
            f"{r.id:<24} {r.status.value:<11} {r.file_count:>7} {human_bytes(r.byte_count):>10}  "
            f"{r.window_start} .. {r.window_end}"
        )
        if r.sealed:
            click.echo(f"  {r.sealed}")


@command.command("show")
@click.argument("job_id")
@state_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@secrets_stdin_option
@common_options
@click.pass_context
def show(ctx: click.Context, job_id: str, state_path: str | None, as_json: bool, secrets_from_stdin: bool) -> None:
    """Show one job: its window, counts, manifest digest and problems."""
    with _open(ctx, state_path, secrets_from_stdin) as state:
        matches = state.find_jobs(job_id)
        if not matches:
            where = "file" if state.path else f"database {state.location}"
            raise ConfigError(f"no job {job_id!r} in the state {where}", hint="`portshift jobs` lists them")
        if len(matches) > 1:
            listed = ", ".join(j.id for j in matches[:10]) + (", ..." if len(matches) > 10 else "")
            raise ConfigError(
                f"{job_id!r} matches {len(matches)} jobs: {listed}", hint="give more of the id (a prefix or a suffix)"
            )
        job = matches[0]
        counts = state.recording_counts(job.id)
        problems = state.problems(job.id) if not job.sealed else []
    row = job.as_dict()
    row["recordings"] = counts
    row["problems"] = [p.as_dict() for p in problems]
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for k in (
        "id",
        "status",
        "window_start",
        "window_end",
        "started_at",
        "finished_at",
        "source_type",
        "source_location",
        "sink_type",
        "sink_location",
        "export_root",
        "file_count",
        "byte_count",
        "manifest_key",
        "manifest_sha256",
        "error",
    ):
        if row.get(k) not in (None, ""):
            click.echo(f"{k.replace('_', ' '):<16} {row[k]}")
    if job.sealed:
        click.echo(job.sealed)
    click.echo(f"{'recordings':<16} " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for p in problems:
        what = f"{p.recording_id}/{p.artifact}" if p.artifact else p.recording_id
        click.echo(f"  {p.status:<8} {what}  {p.reason}  {p.message}")
