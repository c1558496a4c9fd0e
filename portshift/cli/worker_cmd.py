"""`portshift worker`: one worker of a job that several processes, on one machine or many, share
through the state database (docs/scaling.md)."""

from __future__ import annotations

from pathlib import Path

import click

from . import common_options
from .options import config_option, secrets_stdin_option
from .run_cmd import _request, execute


@click.command("worker")
@config_option
@click.option("--since", "since", metavar="DATE|last", help="as for `portshift run` (give every worker the same)")
@click.option("--until", "until", metavar="DATE", help="as for `portshift run` (give every worker the same)")
@click.option("--transfers", type=click.IntRange(1, 64), help="artifacts in parallel in this worker (default from the job file)")
@click.option("--state", "state_path", metavar="PATH|URL", help="the state every worker shares: a postgresql:// URL, or a file")
@click.option("--report", type=click.Choice(["json"]), default=None, help="print a machine-readable summary on stdout")
@click.option("--progress/--no-progress", default=None, help="live progress (default: on a terminal)")
@secrets_stdin_option
@common_options
def command(
    config_path: Path,
    since: str | None,
    until: str | None,
    transfers: int | None,
    state_path: str | None,
    report: str | None,
    progress: bool | None,
    secrets_from_stdin: bool,
) -> int:
    """Work on a job with the other workers of it: the first plans and lists it, every worker
    claims recordings, the one that sees it complete writes the manifest. Exits when no
    recording of the job is left to do."""
    return execute(
        config_path,
        lambda: _request(since, until, transfers, False, False, False, worker=True),
        state_path,
        progress,
        secrets_from_stdin,
        report,
    )
