"""portshift source plugin for Chorus by ZoomInfo (``[source] type = "chorus"``).

Lists a tenant's recorded calls with ``GET /v3/engagements`` and exports, per call, the media,
the conversation document (transcript), WebVTT captions and the engagement metadata. Ships a
Chorus API simulator (``portshift chorus simulate``) for tests and demos.
"""

from __future__ import annotations

from typing import Any

from portshift import hookimpl

from .client import pin_loggers
from .options import ChorusOptions
from .source import ChorusSource

pin_loggers()

__all__ = ["ChorusOptions", "ChorusSource"]


@hookimpl
def register_sources(register: Any) -> None:
    register("chorus", ChorusSource)


@hookimpl
def register_commands(cli: Any) -> None:
    from .cli import chorus

    cli.add_command(chorus)
