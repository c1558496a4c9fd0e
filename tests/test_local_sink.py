"""The built-in local sink passes the conformance kit, and never leaves partial files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from portshift.default_plugins.local_sink import LocalOptions, LocalSink
from portshift.errors import ConfigError, SinkError
from portshift.hashing import HashingStream
from portshift.testing import SinkContract, failing_chunks, pattern_bytes, read_back_folder


class TestLocalSinkContract(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path: Path) -> LocalSink:
        return LocalSink(LocalOptions(path=tmp_path / "dest"))

    @pytest.fixture
    def read_back(self, tmp_path: Path) -> Callable[[str], bytes | None]:
        return read_back_folder(tmp_path / "dest")


def test_a_failed_put_leaves_no_temporary_file(tmp_path: Path) -> None:
    sink = LocalSink(LocalOptions(path=tmp_path))
    data = pattern_bytes(100_000)
    with pytest.raises(Exception, match="dropped"):
        sink.put("a/b.bin", HashingStream(failing_chunks(data, 50_000)), len(data))
    assert [p.name for p in (tmp_path / "a").iterdir()] == []


def test_keys_cannot_escape_the_destination(tmp_path: Path) -> None:
    sink = LocalSink(LocalOptions(path=tmp_path / "dest"))
    with pytest.raises(SinkError, match="escapes"):
        sink.put("../outside.bin", HashingStream(iter([b"x"])), 1)
    assert not (tmp_path / "outside.bin").exists()


def test_a_destination_that_is_a_file_is_refused_by_the_options(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"path: .*file is a file, not a folder") as e:
        LocalOptions(path=blocker)
    assert "\n" not in str(e.value)
    # a file further up is refused by check(), before anything is written
    sink = LocalSink(LocalOptions(path=blocker / "sub"))
    with pytest.raises(ConfigError, match="is not a folder"):
        sink.check()
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("fsync", [True, False])
def test_a_file_past_the_write_behind_interval_is_stored_byte_for_byte(tmp_path: Path, fsync: bool) -> None:
    """Past ``WRITE_BEHIND`` bytes the sink asks the kernel to write the file out early (a hint,
    not an fsync): the file on disk is still exactly what was streamed."""
    import hashlib

    from portshift.default_plugins.local_sink import WRITE_BEHIND

    data = pattern_bytes(WRITE_BEHIND * 2 + 12345)
    sink = LocalSink(LocalOptions(path=tmp_path, fsync=fsync))
    stream = HashingStream(data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20))
    result = sink.put("big/file.bin", stream, len(data))
    assert result.size == len(data) == stream.bytes_read
    on_disk = (tmp_path / "big" / "file.bin").read_bytes()
    assert hashlib.sha256(on_disk).hexdigest() == hashlib.sha256(data).hexdigest() == stream.sha256_hex()
