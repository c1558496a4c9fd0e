"""The export pipeline: which job and window (``planning``), the data path (``transfer``, with
``readahead``), the manifests (``manifests``), and ``run``, which reads top to bottom.

    source.recordings(window) -> skip if done -> source.artifacts(rec) -> HashingStream
    -> sink.put(key, stream) -> check size/hash -> state: file done -> ... -> manifest writers
"""

from __future__ import annotations

from .readahead import READ_AHEAD_BYTES, READ_AHEAD_CHUNKS, READ_AHEAD_FROM, ReadAhead
from .result import RunRequest, RunResult
from .run import Runner, job_key

__all__ = [
    "READ_AHEAD_BYTES",
    "READ_AHEAD_CHUNKS",
    "READ_AHEAD_FROM",
    "ReadAhead",
    "RunRequest",
    "RunResult",
    "Runner",
    "job_key",
]
