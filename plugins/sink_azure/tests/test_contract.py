"""The core's conformance kit, against Azurite over HTTPS (block size 1 MiB, so many_size is 4 blocks)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from azure.storage.blob import BlobServiceClient
from portshift_sink_azure import AzureSink

from portshift.testing import SinkContract

from .conftest import MiB, download


class TestAzureSinkContract(SinkContract):
    many_size = 3 * MiB + 12345  # four blocks at block_size 1 MiB

    @pytest.fixture
    def sink(self, make_sink: Callable[..., AzureSink]) -> AzureSink:
        return make_sink(block_size=MiB)

    @pytest.fixture
    def read_back(self, admin: BlobServiceClient, sink: AzureSink) -> Callable[[str], bytes | None]:
        return lambda key: download(admin, sink.blob_name(key))
