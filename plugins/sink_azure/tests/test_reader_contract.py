"""The core's reader contract, against the Azure reader on Azurite over HTTPS (blobs put by the sink)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from portshift_sink_azure import AzureReader, AzureSink
from portshift_sink_azure.reader import READ_CHUNK

from portshift.testing import ReaderContract, put_bytes

from .conftest import Azurite
from .test_reader import store as store_options


class TestAzureReaderContract(ReaderContract):
    many_size = READ_CHUNK + 12345  # more than the reader's 4 MiB range

    @pytest.fixture
    def reader(self, azurite: Azurite) -> Iterator[AzureReader]:
        reader = AzureReader(store_options(azurite))
        yield reader
        reader.close()

    @pytest.fixture
    def store(self, make_sink: Callable[..., AzureSink]) -> Callable[[str, bytes], None]:
        sink = make_sink(prefix="readback")  # the prefix of test_reader.store()

        def put(key: str, data: bytes) -> None:
            put_bytes(sink, key, data, len(data))

        return put
