"""Names a plugin package exports without importing its SDK until one is used (PEP 562)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each exported name to the
    submodule that defines it, imported on first use (``__getattr__ = lazy_attributes(__name__,
    {"AcmeSink": "sink"})``), so that ``from <package> import AcmeSink`` works while loading the
    plugin to register it imports no SDK."""

    def __getattr__(name: str) -> Any:  # noqa: ANN401 - whatever the submodule holds
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
