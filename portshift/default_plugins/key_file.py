"""The built-in ``file`` key provider: a local key file wraps the data keys (docs/byok.md)."""

from __future__ import annotations

from typing import Any

from .. import hookimpl


@hookimpl
def register_key_providers(register: Any) -> None:
    register("file", "portshift.key_providers:LocalKeyFile")
