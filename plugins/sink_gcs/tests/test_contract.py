"""The core's conformance kit, against both local GCS servers over HTTPS.

One deliberate deviation: the kit's ``test_overwrite_same_key`` expects a second put of other
content under the same key to replace the first. The GCS sink never replaces an object: every
upload carries ``ifGenerationMatch=0`` (known bug #2, GCS consequence; see test_existing.py), so
the same content again is accepted (compared, not rewritten) and other content is refused with a
non-retryable error, the first object left as it was. The override below asserts exactly that.
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
    def test_overwrite_same_key(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        key = unique_key("twice")
        first, _ = put_bytes(sink, key, b"first version", 13)
        again, _ = put_bytes(sink, key, b"first version", 13)
        assert again.checksums == first.checksums and again.version == first.version
        with pytest.raises(SinkError, match="already exists under this name with other content") as e:
            put_bytes(sink, key, b"second", 6)
        assert not e.value.retryable
        assert read_back(key) == b"first version"


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
