"""The memo reader returns what the memo sink stored, and lists a job's files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from portshift import build_options
from portshift.testing import ReaderContract, pattern_bytes, put_bytes

from portshift_sink_memo import MemoReader, MemoSink
from portshift_sink_memo.options import MemoOptions


@pytest.fixture
def options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MemoOptions:
    monkeypatch.delenv("PORTSHIFT_MEMO_KEY", raising=False)
    return build_options(MemoOptions, {"path": str(tmp_path / "dest")}, "sink")


def test_reads_back_what_the_sink_stored(options: MemoOptions) -> None:
    data = pattern_bytes(3 * 1024 * 1024 + 1)
    put_bytes(MemoSink(options), "job1/a/media.mp3", data, len(data))
    put_bytes(MemoSink(options), "job1/b/metadata.json", b"{}", 2)
    reader = MemoReader(options)
    assert b"".join(reader.open("job1/a/media.mp3")) == data
    assert list(reader.list("job1/")) == ["job1/a/media.mp3", "job1/b/metadata.json"]


def test_a_missing_file_is_file_not_found(options: MemoOptions) -> None:
    reader = MemoReader(options)
    with pytest.raises(FileNotFoundError):
        b"".join(reader.open("job1/nothing.bin"))
    with pytest.raises(FileNotFoundError):
        b"".join(reader.open("../outside.bin"))


class TestMemoReaderContract(ReaderContract):
    """portshift's reader contract: streaming, FileNotFoundError, listing a prefix and nothing else."""

    @pytest.fixture
    def reader(self, options: MemoOptions) -> MemoReader:
        return MemoReader(options)

    @pytest.fixture
    def store(self, options: MemoOptions) -> Callable[[str, bytes], None]:
        sink = MemoSink(options)

        def store(key: str, data: bytes) -> None:
            put_bytes(sink, key, data, len(data))

        return store
