"""portshift source plugin for Chorus by ZoomInfo (``[source] type = "chorus"``).

Lists a tenant's recorded calls with ``GET /v3/engagements`` and exports, per call, the media,
the conversation document (transcript), WebVTT captions and the engagement metadata. Ships a
Chorus API simulator (``portshift chorus simulate``) for tests and demos.
"""

from __future__ import annotations

from typing import Any

from portshift import hookimpl, lazy_attributes

__all__ = ["ChorusOptions", "ChorusSource"]


#: the SDK is imported only when a job uses this plugin (registered by reference below);
#: ``from <package> import <Class>`` still works and imports it then
__getattr__ = lazy_attributes(__name__, {"ChorusOptions": "options", "ChorusSource": "source"})


@hookimpl
def register_sources(register: Any) -> None:
    register("chorus", "portshift_source_chorus.source:ChorusSource")


@hookimpl
def register_commands(cli: Any) -> None:
    from .cli import chorus

    cli.add_command(chorus)
