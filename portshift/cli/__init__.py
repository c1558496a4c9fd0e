"""The ``portshift`` command line. One error policy: a user error is one clean line on stderr
and a documented exit code; a traceback only with ``PORTSHIFT_DEBUG=1``."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import click

from .. import __version__
from ..errors import ExitCode, PortshiftError
from ..logs import configure_logging, json_logging
from ..plugins import load_plugins, pm
from ..redact import sanitize_message
from ..settings import read_settings
from .process_end import end_process


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--log-level and --log-format, on every command."""

    def _level(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            ctx.meta["portshift.log_level"] = value
            _configure(ctx)
        return value

    def _format(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            ctx.meta["portshift.log_format"] = value
            _configure(ctx)
        return value

    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        expose_value=False,
        callback=_format,
        is_eager=True,
        help="log lines as text (default) or JSON",
    )(fn)
    fn = click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default=None,
        expose_value=False,
        callback=_level,
        is_eager=True,
        help="default: info",
    )(fn)
    return fn


def _configure(ctx: click.Context) -> None:
    configure_logging(ctx.meta.get("portshift.log_level", "info"), ctx.meta.get("portshift.log_format", "text"))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="portshift")
@common_options
@click.pass_context
def cli(ctx: click.Context) -> None:
    """portshift: export call recordings, transcripts and metadata into your own bucket,
    hashed on the way, with a manifest anyone can check with `sha256sum -c`."""
    if "portshift.log_level" not in ctx.meta and "portshift.log_format" not in ctx.meta:
        configure_logging("info", "text")


def _register_commands() -> None:
    from . import check_cmd, jobs_cmd, plugins_cmd, run_cmd, state_cmd, verify_cmd, worker_cmd

    for mod in (run_cmd, worker_cmd, check_cmd, jobs_cmd, plugins_cmd, verify_cmd, state_cmd):
        cli.add_command(mod.command)
    load_plugins()
    pm.hook.register_commands(cli=cli)


_registered = False


def get_cli() -> click.Group:
    global _registered
    if not _registered:
        _registered = True
        try:
            _register_commands()
        except PortshiftError as e:
            click.echo(f"portshift: error: {e}", err=True)
            raise SystemExit(e.exit_code) from None
    return cli


def _debug() -> bool:
    try:
        return read_settings().debug
    except PortshiftError:
        return False  # a bad variable is reported, in one line, by the first command that reads the settings


def _fatal(text: str, exit_code: int) -> NoReturn:
    """The one line that ends a failed command: plain text, or a JSON record with --log-format json."""
    if json_logging():
        logging.getLogger("portshift").error(text, extra={"event": "fatal", "exit_code": int(exit_code)})
    else:
        click.echo(f"portshift: {text}", err=True)
    sys.exit(exit_code)


def main(argv: list[str] | None = None) -> None:
    """The ``portshift`` command. Without ``argv`` (the console script, ``python -m portshift``)
    the process ends without the interpreter's teardown (see :mod:`.process_end`)."""
    if argv is not None:
        _main(argv)
        return
    try:
        _main(None)
    except SystemExit as e:
        end_process(e.code)
    end_process(0)


def _main(argv: list[str] | None) -> None:
    group = get_cli()
    rv = guarded(lambda: group.main(args=argv, prog_name="portshift", standalone_mode=False))
    sys.exit(rv if isinstance(rv, int) else 0)


def guarded(fn: Callable[[], Any]) -> Any:
    """``fn()`` under the command line's error policy: what it returns, or ``SystemExit`` with
    the documented exit code after one line on stderr (a traceback only with ``PORTSHIFT_DEBUG``)."""
    debug = _debug()
    try:
        return fn()
    except PortshiftError as e:
        if debug:
            traceback.print_exc()
        word = "stopped" if e.exit_code == ExitCode.INTERRUPTED else "error"
        _fatal(f"{word}: {sanitize_message(str(e), 1000)}", e.exit_code)
    except click.exceptions.Abort:
        click.echo("portshift: aborted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "portshift"
        _fatal(f"error: {e.format_message()} (see `{where} --help`)", ExitCode.USAGE)
    except click.ClickException as e:
        _fatal(f"error: {e.format_message()}", ExitCode.USAGE if e.exit_code == 2 else e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("portshift: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if debug:
            traceback.print_exc()
        _fatal(
            f"internal error: {sanitize_message(f'{type(e).__name__}: {e}')} "
            "(set PORTSHIFT_DEBUG=1 for the traceback, and please report it)",
            ExitCode.INTERNAL,
        )
