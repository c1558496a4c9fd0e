"""`portshift run`: export, resume, report."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from ..config import parse_when
from ..errors import ConfigError, ExitCode, PortshiftError
from ..hardening import harden_process
from ..pipeline import Runner, RunRequest
from ..progress import Progress, human_bytes
from ..state import State
from . import common_options
from .options import config_option, load, secrets_stdin_option


def _transfers(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 64:
        raise click.BadParameter("must be between 1 and 64", ctx=ctx, param=param)
    return value


@click.command("run")
@config_option
@click.option(
    "--since", "since", metavar="DATE|last", help="start of the window (ISO date), or 'last': after the last completed job"
)
@click.option("--until", "until", metavar="DATE", help="end of the window (ISO date), default now")
@click.option(
    "--transfers", type=int, callback=_transfers, help="artifacts in parallel (1-64, default from the job file, else 4)"
)
@click.option("--state", "state_path", type=click.Path(path_type=Path), help="the state DB (default: the user data folder)")
@click.option("--dry-run", is_flag=True, help="list what would be exported; transfer nothing, change nothing")
@click.option("--new", is_flag=True, help="abandon an unfinished job of this job file and start over")
@click.option("--progress/--no-progress", default=None, help="live progress (default: on a terminal)")
@secrets_stdin_option
@common_options
def command(
    config_path: Path,
    since: str | None,
    until: str | None,
    transfers: int | None,
    state_path: Path | None,
    dry_run: bool,
    new: bool,
    progress: bool | None,
    secrets_from_stdin: bool,
) -> int:
    """Export recordings from the source into the sink, then write the manifest.

    Re-running the same job file resumes an unfinished job."""
    harden_process()
    req = RunRequest(transfers=transfers, dry_run=dry_run, new=new)
    if since == "last":
        req.since_last = True
    elif since:
        req.since = parse_when(since, "--since")
    if until:
        req.until = parse_when(until, "--until")
    if req.since and req.until and req.since >= req.until:
        raise ConfigError("--since must be before --until")
    cfg = load(config_path, secrets_from_stdin)
    cancel = threading.Event()
    bar = Progress(enabled=progress if progress is not None else True)
    if progress is None and not bar.tty:
        bar.enabled = True  # periodic log lines
    previous: dict[int, Any] = {}

    def _stop(signum: int, frame: Any) -> None:
        if cancel.is_set():
            signal.signal(signum, signal.SIG_DFL)
        cancel.set()
        click.echo(f"\nportshift: stopping ({signal.Signals(signum).name}); finishing cleanly, state is kept", err=True)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _stop)
    try:
        state = State.open(state_path)
        try:
            runner = Runner(cfg, state, progress=bar, cancel=cancel, retry_base=_retry_base())
            result = runner.run(req)
        except PortshiftError:
            state.discard_if_unused()
            raise
        finally:
            state.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.status in ("dry-run", "up-to-date"):
        click.echo(result.message)
        return 0
    _report(result)
    return result.exit_code


def _retry_base() -> float:
    from ..settings import read_settings

    try:
        return max(0.0, read_settings().retry_base)
    except ValueError:
        return 1.0


def _report(r: Any) -> None:
    out = click.echo
    verb = {"complete": "complete", "partial": "partial", "failed": "failed", "interrupted": "interrupted"}[r.status]
    if r.resumed:
        out(f"resumed job {r.job_id}: {r.already_done} recordings were already exported")
    out(f"job {r.job_id}: {verb} — {r.files} files, {human_bytes(r.bytes)} under {r.export_root}/")
    if r.manifest_sha256:
        out(f"manifest: {r.manifest_key}")
        out(f"manifest sha256: {r.manifest_sha256}")
    if r.skipped:
        out(f"skipped {len(r.skipped)} recordings:")
        for p in r.skipped[:50]:
            out(f"  {p['recording_id']}  {p['reason']}  {p['message']}")
        if len(r.skipped) > 50:
            out(f"  ... and {len(r.skipped) - 50} more (portshift jobs show {r.job_id})")
    if r.failed:
        out(f"failed {len(r.failed)} recordings (re-run the same command to retry them):", err=True)
        for p in r.failed[:50]:
            out(f"  {p['recording_id']}  {p['message']}", err=True)
    if r.status != "complete" and r.message:
        out(f"portshift: {r.message}", err=True)
    if r.exit_code == ExitCode.INTERRUPTED:
        out("portshift: interrupted; run the same command again to resume", err=True)
