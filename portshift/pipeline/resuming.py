"""Uploads that a gone worker left mid-file, kept for the worker that exports the recording next.

:func:`~portshift.pipeline.recovery.recover_orphans` holds back the journal entries that carry a
resume point (when the sink can :meth:`~portshift.Sink.resume`) instead of having them aborted;
they wait here, by recording and artifact, until a worker of this job exports that artifact: it
takes the entry over in the state (one worker only) and continues the upload. Entries nobody took
by the end of the job's transfers are aborted as before (:func:`abort_left`).
"""

from __future__ import annotations

import logging
import threading

from ..api import Sink
from ..resume import RESUME_FIELD, ResumePoint
from ..state import State

log = logging.getLogger("portshift.run")


def can_resume(sink: Sink) -> bool:
    """The sink implements :meth:`Sink.resume` (the default refuses)."""
    return type(sink).resume is not Sink.resume


def resume_point_of(data: dict[str, str]) -> ResumePoint | None:
    text = data.get(RESUME_FIELD)
    return ResumePoint.decode(text) if text else None


class Resumables:
    """Journal entries of gone workers that can be continued, by (recording id, artifact)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: dict[tuple[str, str], tuple[str, ResumePoint]] = {}

    def add(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        with self._lock:
            for key, data in entries:
                point = resume_point_of(data)
                if point is not None:
                    self._by[(point.recording_id, point.artifact)] = (key, point)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by)

    def take(
        self, state: State, job_id: str, worker: str | None, recording_id: str, artifact: str
    ) -> tuple[str, dict[str, str], ResumePoint] | None:
        """The entry left for this artifact, now this worker's; ``None`` when there is none (or
        another worker took it first)."""
        with self._lock:
            if not self._by:
                return None
            found = self._by.pop((recording_id, artifact), None)
        if found is None:
            return None
        key, _ = found
        data = state.journal_take(job_id, key, worker)
        if data is None:
            return None
        point = resume_point_of(data)  # as it is now in the state (the journal may have moved on)
        return (key, data, point) if point is not None else None
