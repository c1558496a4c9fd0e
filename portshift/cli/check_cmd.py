"""`portshift check`: validate a job file and reach source and sink without transferring."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from ..config import DEFAULT_SINCE, JobConfig, parse_when
from ..errors import ConfigError, ExitCode, PortshiftError
from . import common_options
from .options import config_option, load, secrets_stdin_option


def _check_window(cfg: JobConfig) -> None:
    """The job file's own window must not be empty (a run would refuse it)."""
    since = parse_when(cfg.job.since, "[job] since") if cfg.job.since is not None else DEFAULT_SINCE
    until = parse_when(cfg.job.until, "[job] until") if cfg.job.until is not None else datetime.now(timezone.utc)
    if since >= until:
        raise ConfigError(
            f"[job] since ({since.date().isoformat()}) is not before until ({until.date().isoformat()})",
            hint="swap them, or remove until to export up to now",
        )


@click.command("check")
@config_option
@secrets_stdin_option
@common_options
def command(config_path: Path, secrets_from_stdin: bool) -> int:
    """Validate the job file and reach the source and the sink; transfer nothing."""
    cfg = load(config_path, secrets_from_stdin)
    _check_window(cfg)
    plugins = []
    for role, cls, options, type_ in (
        ("source", cfg.source_cls, cfg.source_options, cfg.source_type),
        ("sink", cfg.sink_cls, cfg.sink_options, cfg.sink_type),
    ):
        plugins.append((role, type_, cls(options)))
    click.echo(f"job file {config_path}: ok")
    codes: list[int] = []
    for role, type_, obj in plugins:
        try:
            obj.check()
            click.echo(f"{role} {type_} {obj.location()}: ok")
        except PortshiftError as e:
            codes.append(e.exit_code)  # a configuration problem (2) or an unreachable/refusing service (5)
            click.echo(f"{role} {type_} {obj.location()}: FAILED: {e}", err=True)
        finally:
            obj.close()
    return codes[0] if codes else ExitCode.OK
