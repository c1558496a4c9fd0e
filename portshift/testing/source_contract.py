"""``SourceContract``: the tests every source must pass, run against the plugin's own fixtures."""

from __future__ import annotations

import hashlib

import pytest

from ..api import Artifact, Source, Window
from .data import read_artifact


class SourceContract:
    """Contract tests every source must pass. Provide ``source`` and ``window`` fixtures."""

    @pytest.fixture
    def source(self) -> Source:  # pragma: no cover
        raise NotImplementedError("provide a `source` fixture")

    @pytest.fixture
    def window(self) -> Window:  # pragma: no cover
        raise NotImplementedError("provide a `window` fixture")

    def _read(self, artifact: Artifact) -> bytes:
        data, opened = read_artifact(artifact)
        if opened.size is not None:
            assert len(data) == opened.size, f"{artifact.name}: declared {opened.size}, got {len(data)}"
        if artifact.size is not None:
            assert len(data) == artifact.size
        if artifact.sha256 is not None:
            assert hashlib.sha256(data).hexdigest() == artifact.sha256
        return data

    def test_recordings_are_listed_once(self, source: Source, window: Window) -> None:
        ids = [r.id for r in source.recordings(window)]
        assert ids, "the test window should hold at least one recording"
        assert len(ids) == len(set(ids)), "a recording was listed twice"

    def test_recordings_are_in_window(self, source: Source, window: Window) -> None:
        for rec in source.recordings(window):
            if rec.started_at is not None:
                assert window.start <= rec.started_at < window.end

    def test_artifacts_reopen_identically(self, source: Source, window: Window) -> None:
        rec = next(iter(source.recordings(window)))
        artifacts = list(source.artifacts(rec))
        assert artifacts, "a recording should have at least one artifact"
        names = [a.name for a in artifacts]
        assert len(names) == len(set(names)), "artifact names must be unique within a recording"
        for artifact in artifacts:
            first = self._read(artifact)
            again = self._read(artifact)
            assert first == again, f"{artifact.name}: re-opening gave different bytes"
