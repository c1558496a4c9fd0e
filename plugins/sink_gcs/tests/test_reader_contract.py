"""The core's reader contract, against the GCS reader on gcp-storage-emulator over HTTPS (objects
put by the sink)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from portshift_sink_gcs import GcsReader, GcsSink
from portshift_sink_gcs.reader import READ_CHUNK

from portshift.testing import ReaderContract, put_bytes

from .conftest import Certs, Server, make_options


class TestGcsReaderContract(ReaderContract):
    many_size = READ_CHUNK + 12345  # more than the reader's 4 MiB read

    @pytest.fixture
    def reader(self, emulator: Server, certs: Certs) -> Iterator[GcsReader]:
        reader = GcsReader(make_options(emulator, certs.ca_pem))
        yield reader
        reader.close()

    @pytest.fixture
    def store(self, make_sink: Callable[..., GcsSink]) -> Callable[[str, bytes], None]:
        sink = make_sink()

        def put(key: str, data: bytes) -> None:
            put_bytes(sink, key, data, len(data))

        return put
