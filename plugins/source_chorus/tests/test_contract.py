"""The conformance kit of portshift, against the Chorus simulator over HTTPS."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from portshift_source_chorus.simulator import ChorusSimulator

from portshift.api import Source, Window
from portshift.testing import SourceContract

from .conftest import WINDOW, make_source


class TestChorusSourceContract(SourceContract):
    @pytest.fixture
    def source(self, sim: ChorusSimulator) -> Iterator[Source]:
        s = make_source(sim)
        yield s
        s.close()

    @pytest.fixture
    def window(self) -> Window:
        return WINDOW
