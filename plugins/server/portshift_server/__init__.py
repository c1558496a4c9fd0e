"""portshift-server: ``portshift serve``, the hosted export service.

An HTTPS-only JSON API and web page; each job runs in a fresh ``portshift run`` worker process
that receives its credentials over a pipe. See ``docs/serve.md``.
"""

from __future__ import annotations

from typing import Any

from portshift import hookimpl

__all__ = ["register_commands"]


@hookimpl
def register_commands(cli: Any) -> None:
    from .serve_cmd import command

    cli.add_command(command)
