"""The core's reader contract, against the S3 reader on moto over HTTPS (objects put by the sink)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from portshift_sink_s3 import S3Reader

from portshift.testing import ReaderContract, put_bytes


class TestS3ReaderContract(ReaderContract):
    @pytest.fixture
    def reader(self, make_options: Callable[..., Any]) -> Iterator[S3Reader]:
        reader = S3Reader(make_options(prefix="exports/reader"))
        yield reader
        reader.close()

    @pytest.fixture
    def store(self, make_sink: Callable[..., Any]) -> Callable[[str, bytes], None]:
        sink = make_sink(prefix="exports/reader")

        def put(key: str, data: bytes) -> None:
            put_bytes(sink, key, data, len(data))

        return put
