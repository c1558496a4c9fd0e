"""The read-only ``s3`` reader behind ``portshift verify --store``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from portshift_sink_s3 import S3Reader

from portshift.errors import SinkError
from portshift.hashing import HashingStream
from portshift.testing import chunked, pattern_bytes


def test_reader_lists_and_streams_under_the_prefix(
    make_sink: Callable[..., Any], make_options: Callable[..., Any], admin: Any, bucket: str
) -> None:
    sink = make_sink(prefix="exp")
    data = pattern_bytes(3 * 1024 * 1024 + 5)
    sink.put("job1/a.bin", HashingStream(chunked(data)), len(data))
    sink.put("job1/sub/b.txt", HashingStream(iter([b"b"])), 1)
    sink.put("job2/c.txt", HashingStream(iter([b"c"])), 1)
    admin.put_object(Bucket=bucket, Key="outside/job1/x", Body=b"x")
    reader = S3Reader(make_options(prefix="exp"))
    assert reader.location() == f"s3://{bucket}/exp"
    assert sorted(reader.list("job1/")) == ["job1/a.bin", "job1/sub/b.txt"]
    blocks = list(reader.open("job1/a.bin"))
    assert b"".join(blocks) == data and max(len(b) for b in blocks) <= 1024 * 1024
    with pytest.raises(FileNotFoundError):
        reader.open("job1/missing.bin")
    reader.close()


def test_reader_errors_are_portshift_errors(make_options: Callable[..., Any]) -> None:
    reader = S3Reader(make_options(bucket="no-such-bucket-reader"))
    with pytest.raises(SinkError) as e:
        list(reader.list("x/"))
    assert "NoSuchBucket" in str(e.value) and e.value.__cause__ is None


def test_the_plugin_registers_the_reader() -> None:
    from portshift.plugins import readers

    assert readers().get("s3") is S3Reader
