"""The conformance kit against each sink of broken_sinks.py (run by tests/test_testing_kit.py in
a pytest subprocess: every class here is expected to fail the kit, except the control)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broken_sinks import (
    BufferingSink,
    CrashingSink,
    FolderSink,
    JournalAssumedSink,
    JournalLeakSink,
    NoChecksumSink,
    SharedSqliteSink,
    WholeObjectReader,
    read_sqlite,
)

from portshift import Reader, Sink
from portshift.testing import ReaderContract, SinkContract, read_back_folder


class FolderContract(SinkContract):
    kind: type[FolderSink] = FolderSink

    @pytest.fixture
    def sink(self, tmp_path: Path) -> Iterator[Sink]:
        sink = self.kind(tmp_path / "dest")
        yield sink
        sink.close()

    @pytest.fixture
    def read_back(self, tmp_path: Path) -> Callable[[str], bytes | None]:
        return read_back_folder(tmp_path / "dest")


class TestFolderSink(FolderContract):
    pass


class TestBufferingSink(FolderContract):
    kind = BufferingSink


class TestNoChecksumSink(FolderContract):
    kind = NoChecksumSink


class TestCrashingSink(FolderContract):
    kind = CrashingSink


class TestJournalAssumedSink(FolderContract):
    kind = JournalAssumedSink


class TestJournalLeakSink(FolderContract):
    kind = JournalLeakSink


class TestSharedSqliteSink(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path: Path) -> Iterator[Sink]:
        sink = SharedSqliteSink(tmp_path / "blobs.db")
        yield sink
        sink.close()

    @pytest.fixture
    def read_back(self, tmp_path: Path) -> Callable[[str], bytes | None]:
        return lambda key: read_sqlite(tmp_path / "blobs.db", key)


class TestWholeObjectReader(ReaderContract):
    @pytest.fixture
    def reader(self, tmp_path: Path) -> Reader:
        return WholeObjectReader(tmp_path / "dest")

    @pytest.fixture
    def store(self, tmp_path: Path) -> Callable[[str, bytes], None]:
        def put(key: str, data: bytes) -> None:
            FolderSink(tmp_path / "dest")._write(key, iter([data]))

        return put
