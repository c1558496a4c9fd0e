"""The memo sink against portshift's conformance kit: every test_* of SinkContract runs here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from portshift import build_options
from portshift.testing import SinkContract, read_back_folder

from portshift_sink_memo import MemoSink
from portshift_sink_memo.options import MemoOptions


class TestMemoSink(SinkContract):
    # more than the sink's 1 MiB write chunk, so "many chunks" means several writes
    many_size = 3 * 1024 * 1024 + 12345

    @pytest.fixture
    def sink(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MemoSink]:
        monkeypatch.delenv("PORTSHIFT_MEMO_KEY", raising=False)
        sink = MemoSink(build_options(MemoOptions, {"path": str(tmp_path / "dest")}, "sink"))
        yield sink
        sink.close()

    @pytest.fixture
    def read_back(self, tmp_path: Path) -> Callable[[str], bytes | None]:
        # the bytes of the file under a key, or None when there is none
        return read_back_folder(tmp_path / "dest")
