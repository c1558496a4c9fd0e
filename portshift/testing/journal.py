"""An in-memory :class:`~portshift.api.Journal` that remembers what a sink did with it, for tests."""

from __future__ import annotations

import json
import threading

from ..api import Journal


class RecordingJournal(Journal):
    """A journal kept in memory, as the core's state DB keeps it (``begin`` again on a pending
    key replaces its data), that also notes every misuse instead of failing inside the sink.

    ``pending()`` is what a crash at this moment would leave for ``recover()``; ``misuse`` lists
    what broke the contract (data that is not ``dict[str, str]`` or not JSON, a secret in it)."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, str]] = {}
        self.begun: list[str] = []  #: keys, in the order ``begin`` was called
        self.ended: list[str] = []
        self.misuse: list[str] = []
        self._secrets = [s for s in (secrets or []) if s]

    def begin(self, key: str, data: dict[str, str]) -> None:
        problems = []
        if not isinstance(key, str):
            problems.append(f"begin({key!r}): the key is not a str")
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            problems.append(f"begin({key!r}, {data!r}): data must be a dict[str, str]")
        else:
            text = json.dumps(data)
            if any(secret in text for secret in self._secrets):
                problems.append(f"begin({key!r}): a credential of the sink's options is in the journal data")
        with self._lock:
            self.misuse += problems
            self.begun.append(key)
            self._pending[key] = dict(data) if isinstance(data, dict) else {}

    def end(self, key: str) -> None:
        with self._lock:
            self.ended.append(key)
            self._pending.pop(key, None)

    def pending(self) -> list[tuple[str, dict[str, str]]]:
        """``(key, data)`` of every operation begun and not ended, oldest first."""
        with self._lock:
            return [(k, dict(v)) for k, v in self._pending.items()]
