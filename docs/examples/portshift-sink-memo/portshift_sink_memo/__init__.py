"""portshift-sink-memo: a folder, plus a memo line for every stored file.

portshift imports this module through the entry point in pyproject.toml and calls the
hooks below when it builds its tables of sinks and readers.
"""

from __future__ import annotations

from portshift import hookimpl

from .reader import MemoReader
from .sink import MemoSink

__all__ = ["MemoReader", "MemoSink"]


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("memo", MemoSink)


@hookimpl
def register_readers(register):  # type: ignore[no-untyped-def]
    register("memo", MemoReader)
