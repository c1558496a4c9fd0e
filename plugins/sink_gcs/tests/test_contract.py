"""The core's conformance kit, against both local GCS servers over HTTPS."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from portshift_sink_gcs import GcsSink

from portshift.testing import SinkContract

from .conftest import CHUNK, Server


class TestContractOnGcpStorageEmulator(SinkContract):
    # several 256 KiB chunks plus a partial one: a resumable upload
    many_size = 3 * CHUNK + 12345

    @pytest.fixture
    def sink(self, make_sink: Callable[..., GcsSink]) -> GcsSink:
        return make_sink()

    @pytest.fixture
    def read_back(self, emulator: Server, sink: GcsSink) -> Callable[[str], bytes | None]:
        return lambda key: emulator.admin.download(sink.object_name(key))


class TestContractOnFakeGcsServer(SinkContract):
    many_size = 4 * CHUNK + 1

    @pytest.fixture
    def sink(self, make_sink: Callable[..., GcsSink], fakegcs: Server) -> GcsSink:
        return make_sink(fakegcs)

    @pytest.fixture
    def read_back(self, fakegcs: Server, sink: GcsSink) -> Callable[[str], bytes | None]:
        return lambda key: fakegcs.admin.download(sink.object_name(key))
