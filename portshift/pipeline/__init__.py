"""The export pipeline: which job and window (``planning``), this worker's seat in the job
(``seat``), the listing into the state (``listing``), claims and transfers (``transfer``, with
``artifacts`` and ``readahead``), the manifests (``manifests``), and ``run``, which reads top
to bottom.

    one worker lists:  source.recordings(window) -> state: todo rows (or the listing's outcome)
    every worker:      claim a few todo rows -> source.artifacts(rec) -> HashingStream
                       -> sink.put(key, stream) -> check size/hash -> state: file done
                       -> recording done -> ... the one that sees the job complete: manifests
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
