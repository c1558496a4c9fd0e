"""The core's conformance kit, run against moto over HTTPS with 5 MiB parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from portshift.testing import SinkContract

PART = 5 * 1024 * 1024


class TestS3SinkContract(SinkContract):
    many_size = 2 * PART + 12345  # three parts
    # two parts in flight (max_concurrency = 2 below), one being read and botocore's copies: a few
    # parts, whatever the size (the bound for other max_concurrency values: test_uploads.py)
    memory_budget = 5 * PART
    bounded_size = 12 * PART

    @pytest.fixture
    def sink(self, make_sink: Callable[..., Any]) -> Any:
        return make_sink(prefix="exports/contract", max_concurrency=2)

    @pytest.fixture
    def read_back(self, read_obj: Callable[[str], bytes | None], pending: Callable[[], list[Any]]) -> Any:
        def read(key: str) -> bytes | None:
            assert pending() == [], "a multipart upload was left open"
            return read_obj(f"exports/contract/{key}")

        return read
