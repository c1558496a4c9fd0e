"""A sink's journal of in-flight operations, kept in the job state (:meth:`State.journal`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import State


class StateJournal:
    """A sink's journal of in-flight operations, kept in the job state."""

    def __init__(self, state: State, job_id: str, worker: str | None = None) -> None:
        self.state = state
        self.job_id = job_id
        self.worker = worker  #: whose entries these are (a worker cleans up only its own or a dead one's)

    @property
    def path(self) -> Path | None:
        return self.state.path

    def begin(self, key: str, data: dict[str, str]) -> None:
        self.state.journal_begin(self.job_id, key, data, self.worker)

    def end(self, key: str) -> None:
        self.state.journal_end(self.job_id, key)

    def pending(self) -> list[tuple[str, dict[str, str]]]:
        return self.state.journal_pending(self.job_id, self.worker)
