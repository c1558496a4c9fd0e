"""`portshift check`: validate a job file and reach source and sink without transferring."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PortshiftError
from . import common_options
from .options import config_option, load, secrets_stdin_option


@click.command("check")
@config_option
@secrets_stdin_option
@common_options
def command(config_path: Path, secrets_from_stdin: bool) -> int:
    """Validate the job file and reach the source and the sink; transfer nothing."""
    cfg = load(config_path, secrets_from_stdin)
    click.echo(f"job file {config_path}: ok")
    failed = False
    for role, cls, options, type_ in (
        ("source", cfg.source_cls, cfg.source_options, cfg.source_type),
        ("sink", cfg.sink_cls, cfg.sink_options, cfg.sink_type),
    ):
        obj = cls(options)
        try:
            obj.check()
            click.echo(f"{role} {type_} {obj.location()}: ok")
        except PortshiftError as e:
            failed = True
            click.echo(f"{role} {type_} {obj.location()}: FAILED: {e}", err=True)
        finally:
            obj.close()
    return 5 if failed else 0
