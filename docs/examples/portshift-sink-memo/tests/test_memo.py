"""What the memo sink adds to a plain folder: the memo lines, their HMAC, the memo key's sources."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from portshift import ConfigError, SinkError, build_options
from portshift.testing import failing_chunks, pattern_bytes, put_bytes

from portshift_sink_memo import MemoSink
from portshift_sink_memo.memo import check_line
from portshift_sink_memo.options import MemoOptions

KEY = "a memo key that is long enough to be masked"


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTSHIFT_MEMO_KEY", raising=False)


def make_sink(tmp_path: Path, **options: object) -> MemoSink:
    # build_options is what portshift itself calls on the [sink] section of a job file
    return MemoSink(build_options(MemoOptions, {"path": str(tmp_path / "dest"), **options}, "sink"))


def memo_lines(tmp_path: Path) -> list[str]:
    memo = tmp_path / "dest" / "deliveries.jsonl"
    return memo.read_text().splitlines() if memo.exists() else []


def test_one_memo_line_per_stored_file(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    data = pattern_bytes(5000)
    result, _ = put_bytes(sink, "job1/a/media.mp3", data, len(data))
    put_bytes(sink, "job1/a/metadata.json", b"{}", 2)
    docs = [json.loads(line) for line in memo_lines(tmp_path)]
    assert [d["key"] for d in docs] == ["job1/a/media.mp3", "job1/a/metadata.json"]
    assert docs[0]["size"] == 5000 and docs[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert "hmac" not in docs[0]
    assert result.checksums == {"sha256": hashlib.sha256(data).hexdigest()}


def test_memo_lines_are_signed_with_the_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTSHIFT_MEMO_KEY", KEY)
    sink = make_sink(tmp_path)
    put_bytes(sink, "job1/x.bin", b"hello", 5)
    [line] = memo_lines(tmp_path)
    assert check_line(line, KEY)["sha256"] == hashlib.sha256(b"hello").hexdigest()
    with pytest.raises(ValueError, match="not written with this key"):
        check_line(line, "another key")
    forged = json.loads(line) | {"sha256": "0" * 64}
    with pytest.raises(ValueError):
        check_line(json.dumps(forged), KEY)
    assert KEY not in (tmp_path / "dest" / "deliveries.jsonl").read_text()


def test_memo_key_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "memo.key"
    key_file.write_text(KEY + "\n")
    sink = make_sink(tmp_path, memo_key_file=str(key_file))
    assert KEY not in repr(sink.options) and KEY not in sink.options.model_dump_json()
    put_bytes(sink, "job1/x.bin", b"hello", 5)
    check_line(memo_lines(tmp_path)[0], KEY)


def test_a_key_written_in_the_job_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never read from the job file") as caught:
        make_sink(tmp_path, memo_key=KEY)
    assert KEY not in str(caught.value)


def test_a_failed_put_writes_no_memo_line(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    put_bytes(sink, "job1/ok.bin", b"fine", 4)
    data = pattern_bytes(10_000)
    with pytest.raises(Exception, match="connection dropped"):
        put_bytes(sink, "job1/broken.bin", failing_chunks(data, 5000), len(data))
    assert [json.loads(line)["key"] for line in memo_lines(tmp_path)] == ["job1/ok.bin"]
    assert sorted(p.name for p in (tmp_path / "dest" / "job1").iterdir()) == ["ok.bin"]


def test_keys_cannot_escape_the_folder_or_hit_the_memo(tmp_path: Path) -> None:
    sink = make_sink(tmp_path)
    for key in ("../outside.bin", "deliveries.jsonl"):
        with pytest.raises(SinkError):
            put_bytes(sink, key, b"x", 1)
    assert not (tmp_path / "outside.bin").exists()
    assert memo_lines(tmp_path) == []


@pytest.mark.parametrize("name", ["../memo.jsonl", "sub/memo.jsonl", ".hidden", ""])
def test_memo_must_be_a_plain_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        make_sink(tmp_path, memo=name)
