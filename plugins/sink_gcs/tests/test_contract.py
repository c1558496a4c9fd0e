"""The core's conformance kit, against both local GCS servers over HTTPS.

The GCS sink never replaces an object: every upload carries ``ifGenerationMatch=0`` (known bug
#2, GCS consequence; see test_existing.py), so it declares ``replaces_objects = False`` and the
kit's ``test_overwrite_same_key`` checks that the same content again is accepted and other content
is refused (non-retryable), the first object left as it was. One GCS detail is checked on top:
the repeat is not rewritten (same checksums and generation).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from portshift_sink_gcs import GcsSink

from portshift.api import Sink
from portshift.errors import SinkError
from portshift.testing import SinkContract, put_bytes, unique_key

from .conftest import CHUNK, Server


class _NeverReplaces(SinkContract):
    replaces_objects = False

    def test_the_same_content_again_is_not_rewritten(self, sink: Sink) -> None:
        key = unique_key("twice")
        first, _ = put_bytes(sink, key, b"first version", 13)
        again, _ = put_bytes(sink, key, b"first version", 13)
        assert again.checksums == first.checksums and again.version == first.version
        with pytest.raises(SinkError, match="already exists under this name with other content"):
            put_bytes(sink, key, b"second", 6)


class TestContractOnGcpStorageEmulator(_NeverReplaces):
    # several 256 KiB chunks plus a partial one: a resumable upload
    many_size = 3 * CHUNK + 12345

    @pytest.fixture
    def sink(self, make_sink: Callable[..., GcsSink]) -> GcsSink:
        return make_sink()

    @pytest.fixture
    def read_back(self, emulator: Server, sink: GcsSink) -> Callable[[str], bytes | None]:
        return lambda key: emulator.admin.download(sink.object_name(key))


class TestContractOnFakeGcsServer(_NeverReplaces):
    many_size = 4 * CHUNK + 1

    @pytest.fixture
    def sink(self, make_sink: Callable[..., GcsSink], fakegcs: Server) -> GcsSink:
        return make_sink(fakegcs)

    @pytest.fixture
    def read_back(self, fakegcs: Server, sink: GcsSink) -> Callable[[str], bytes | None]:
        return lambda key: fakegcs.admin.download(sink.object_name(key))
