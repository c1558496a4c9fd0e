"""`portshift run`: export, resume, report."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import JobConfig, load_job, parse_when
from ..errors import ConfigError, ExitCode, PortshiftError
from ..hardening import harden_process
from ..logs import json_logging
from ..pipeline import Runner, RunRequest, RunResult
from ..pipeline.result import error_report
from ..progress import Progress, human_bytes
from ..redact import sanitize_message
from ..state import State, default_state_path, import_backend, is_postgres_url
from ..state.choose import chosen_target, open_chosen_state
from ..tls import prepare_trust
from . import common_options
from .local_workers import LocalWorkers, local_worker_transfers, machine_cores
from .options import config_option, read_stdin_secrets, secrets_stdin_option

log = logging.getLogger("portshift.run")


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
    "--transfers",
    type=int,
    callback=_transfers,
    help="artifacts in parallel in each worker (1-64, default from the job file, else 4; with --workers, see docs/scaling.md)",
)
@click.option(
    "--state", "state_path", metavar="PATH|URL", help="the state: a file, or a postgresql:// URL (default: [state], else a file)"
)
@click.option("--dry-run", is_flag=True, help="list what would be exported; transfer nothing, write nothing")
@click.option("--new", is_flag=True, help="abandon an unfinished job of this job file and start over")
@click.option("--allow-empty", is_flag=True, help="write an export root and manifest even when there is nothing new")
@click.option("--report", type=click.Choice(["json"]), default=None, help="print a machine-readable summary on stdout")
@click.option("--progress/--no-progress", default=None, help="live progress (default: on a terminal)")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    help="worker processes on this machine sharing the job (default 1); unless --transfers or [job] transfers "
    "says, each runs 2 to 4 transfers, about two per core in all",
)
@secrets_stdin_option
@common_options
def command(
    config_path: Path,
    since: str | None,
    until: str | None,
    transfers: int | None,
    state_path: str | None,
    dry_run: bool,
    new: bool,
    allow_empty: bool,
    report: str | None,
    progress: bool | None,
    workers: int,
    secrets_from_stdin: bool,
) -> int:
    """Export recordings from the source into the sink, then write the manifest.

    Re-running the same job file resumes an unfinished job."""
    return execute(
        config_path,
        lambda: _request(since, until, transfers, dry_run, new, allow_empty, worker=workers > 1 and not dry_run),
        state_path,
        progress,
        secrets_from_stdin,
        report,
        workers=workers,
    )


def execute(
    config_path: Path,
    request: Callable[[], RunRequest],
    state_path: str | None,
    progress: bool | None,
    secrets_from_stdin: bool,
    report: str | None,
    workers: int = 1,
) -> int:
    """Run (``portshift run``, ``portshift worker``): the summary, and the JSON report if asked
    (an error too: ``{"status": "error", ...}``); the exit code."""
    harden_process()
    try:
        result = _run(config_path, request(), state_path, progress, secrets_from_stdin, workers=workers)
    except PortshiftError as e:
        if report:
            click.echo(json.dumps(error_report(e.exit_code, sanitize_message(str(e), 1000)), indent=2))
        raise
    _summary(result, err=report is not None)
    if report:
        click.echo(json.dumps(result.report(), indent=2))
    return result.exit_code


def _request(
    since: str | None,
    until: str | None,
    transfers: int | None,
    dry_run: bool,
    new: bool,
    allow_empty: bool,
    worker: bool = False,
) -> RunRequest:
    req = RunRequest(transfers=transfers, dry_run=dry_run, new=new, allow_empty=allow_empty, worker=worker)
    if since == "last":
        req.since_last = True
    elif since:
        req.since = parse_when(since, "--since")
    if until:
        req.until = parse_when(until, "--until")
    if req.since and req.until and req.since >= req.until:
        raise ConfigError("--since must be before --until")
    return req


def _run(
    config_path: Path,
    req: RunRequest,
    state_path: str | None,
    progress: bool | None,
    secrets_from_stdin: bool,
    workers: int = 1,
) -> RunResult:
    dry_run = req.dry_run
    secrets = read_stdin_secrets() if secrets_from_stdin else None
    forks = req.worker and workers > 1
    if not forks:
        prepare_trust()  # the system store, on another core while load_job imports the plugins
    cfg = load_job(config_path, secrets=secrets)
    others = None
    if forks:
        if req.transfers is None and "transfers" not in cfg.job.model_fields_set:
            req.transfers = local_worker_transfers(workers, machine_cores())
        others = LocalWorkers(workers, config_path, req, secrets, _log_args(), transfers=req.transfers or cfg.job.transfers)
        import_backend(chosen_target(state_path, cfg.state))  # once, not in every copy
        # before this process starts any thread: the others are copies of it, started at once
        others.fork(lambda since, until: _forked_worker(cfg, state_path, req.transfers, since, until))
        prepare_trust()
    try:
        cancel = threading.Event()
        bar = Progress(enabled=progress if progress is not None else not dry_run)
        with _signals(cancel):
            target = chosen_target(state_path, cfg.state)
            if dry_run and not is_postgres_url(target) and not Path(target or default_state_path()).exists():
                return Runner(cfg, None, progress=bar, cancel=cancel).run(req)  # a dry run writes nothing
            state = open_chosen_state(state_path, cfg.state, create=not dry_run)
            if others is not None:
                others.state_target = str(target) if target else str(state.path or state.location)
            try:
                return _with_state(cfg, state, bar, cancel, req, others)
            finally:
                state.close()
    finally:
        if others is not None:
            others.release()  # forked workers still waiting: the job did not start, they end


def _forked_worker(cfg: JobConfig, state_path: str | None, transfers: int | None, since: str, until: str) -> int:
    """One forked worker of ``run --workers`` (:mod:`.local_workers`): what ``portshift worker
    --since S --until U --no-progress`` does, with the job file and credentials already read."""
    req = _request(since, until, transfers, False, False, False, worker=True)
    cancel = threading.Event()
    prepare_trust()
    with _signals(cancel):
        state = open_chosen_state(state_path, cfg.state, create=True)
        try:
            return int(_with_state(cfg, state, Progress(enabled=False), cancel, req).exit_code)
        finally:
            state.close()


def _log_args() -> list[str]:
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    out = []
    if meta.get("portshift.log_level"):
        out += ["--log-level", meta["portshift.log_level"]]
    if meta.get("portshift.log_format"):
        out += ["--log-format", meta["portshift.log_format"]]
    return out


def _with_state(
    cfg: JobConfig, state: State, bar: Progress, cancel: threading.Event, req: RunRequest, others: LocalWorkers | None = None
) -> RunResult:
    runner = Runner(cfg, state, progress=bar, cancel=cancel, retry_base=_retry_base(), on_started=others and others.start)
    try:
        result = runner.run(req)
    except PortshiftError:
        state.discard_if_unused()
        raise
    finally:
        if others is not None:
            if cancel.is_set():
                others.stop()
            others.wait()
    if not json_logging():  # the summary says it in words; a log shipper gets one record
        return result
    log.info(
        "job finished: %s",
        result.status,
        extra={
            "event": "job finished",
            "job": result.job_id,
            "status": result.status,
            "exit_code": int(result.exit_code),
            "files": result.files,
            "bytes": result.bytes,
            "recordings": result.report()["recordings"],
            "manifest_sha256": result.manifest_sha256,
        },
    )
    return result


class _signals:
    """SIGINT/SIGTERM: the first stops the run cleanly, the second says a third forces exit."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.count = 0
        self.previous: dict[int, Any] = {}

    def _stop(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            self.cancel.set()
            click.echo(f"\nportshift: stopping ({name}): finishing cleanly, state is kept", err=True)
        elif self.count == 2:
            click.echo(
                "portshift: still stopping; a third signal forces exit at once (the next run cleans up after it)", err=True
            )
        else:
            click.echo("portshift: forced exit", err=True)
            os._exit(ExitCode.INTERRUPTED)

    def __enter__(self) -> _signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._stop)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _retry_base() -> float:
    from ..settings import read_settings

    return max(0.0, read_settings().retry_base)  # a bad value is one ConfigError line naming the variable


def _summary(r: RunResult, err: bool) -> None:
    """The human summary: on stdout, or on stderr when stdout carries the JSON report."""

    def out(text: str, to_err: bool = False) -> None:
        click.echo(text, err=err or to_err)

    if r.status in ("dry-run", "up-to-date", "nothing-new"):
        for item in r.listed:
            size = f"  {human_bytes(item['size'])}" if item.get("size") is not None else ""
            outcome = f"  ({item['outcome']}: {item['reason']})" if item.get("outcome") else ""
            out(f"  {item['recording_id']}  {item['started_at'] or '-'}{size}{outcome}")
        out(r.message)
        _problems(r, out)
        return
    if r.resumed:
        out(f"resumed job {r.job_id}: {r.already_done} recordings were already exported")
    elif r.already_done:
        out(f"{r.already_done} recordings in the window were exported by earlier jobs")
    status = "stopped" if r.status == "interrupted" else r.status  # the last line says "interrupted", once
    out(f"job {r.job_id}: {status} — {r.files} files, {human_bytes(r.bytes)} under {r.export_root}/")
    if r.manifest_sha256:
        out(f"manifest: {r.manifest_key}")
        out(f"manifest sha256: {r.manifest_sha256}")
    _problems(r, out)
    if r.source_status:
        out(f"source: {r.source_status}")
    if r.status != "complete" and r.message:
        out(f"portshift: {r.message}", True)


def _problems(r: RunResult, out: Any) -> None:
    for title, items, to_err in (
        ("skipped {n} recordings:", r.skipped, False),
        ("pending {n} recordings (not ready yet; a later run, --since last included, exports them):", r.pending, False),
        ("missing at the source: {n} files (the rest of those recordings was exported):", r.missing, False),
        ("failed {n} recordings (re-run the same command to retry them):", r.failed, True),
    ):
        if not items:
            continue
        out(title.format(n=len(items)), to_err)
        for p in items[:50]:
            what = f"{p['recording_id']}/{p['artifact']}" if p.get("artifact") else p["recording_id"]
            out(f"  {what}  {p['reason']}  {p['message']}", to_err)
        if len(items) > 50:
            out(f"  ... and {len(items) - 50} more (portshift jobs show {r.job_id})", to_err)
