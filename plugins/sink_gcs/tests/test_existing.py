"""An object already under the name (known bug #2, GCS consequence): every upload carries
``ifGenerationMatch=0``; GCS answers 412 when the name is taken, and the sink compares the
stored object with the file it has just read instead of replacing it.

Which server honours the precondition (checked here, see also ``emulator_tls.py``):

- fake-gcs-server honours it natively for single-request (multipart) uploads, not for resumable
  sessions (it lets a session replace the object): tested for the single-request path only.
- gcp-storage-emulator ignores it; the test launcher ``emulator_tls.py`` adds it (a multipart
  upload, a session's initiation and its finalizing request are refused with 412 when the name
  is taken), as it adds TLS and the ``X-Goog-Hash`` check. Tested for every path there.

Real GCS without ``storage.objects.get`` (the documented ``roles/storage.objectCreator``) cannot
be reproduced by the emulators (no IAM): that answer (403 on the comparison's GET) comes from a
scripted TLS server.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from portshift_sink_gcs import GcsSink

from portshift.errors import SinkError
from portshift.hashing import HashingStream
from portshift.testing import pattern_bytes, put_bytes

from .conftest import (
    BUCKET,
    CHUNK,
    Certs,
    KiB,
    Recorder,
    Server,
    TLSServer,
    crc32c_b64,
    make_options,
    md5_b64,
    server_context,
    unique,
)

SINGLE = CHUNK // 2 + 7  # one multipart request
RESUMABLE = 2 * CHUNK + 11  # initiate, 2 chunks, then the final request (11 bytes)


def store_directly(server: Server, name: str, data: bytes) -> str:
    """Put ``data`` under ``name`` with the independent admin client; its generation."""
    server.admin.client.bucket(BUCKET).blob(name).upload_from_string(data)
    meta = server.admin.meta(name)
    assert meta is not None
    return str(meta["generation"])


def unchanged(server: Server, name: str, data: bytes, generation: str) -> None:
    assert server.admin.download(name) == data, f"{name} was replaced"
    meta = server.admin.meta(name)
    assert meta is not None and str(meta["generation"]) == generation, f"{name} was rewritten"


@pytest.fixture(params=["fakegcs", "emulator"])
def single_server(request: pytest.FixtureRequest) -> Server:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def test_every_upload_carries_if_generation_match_0(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    sink = make_sink()
    rec = Recorder(sink)
    put_bytes(sink, unique("small.bin"), pattern_bytes(SINGLE), SINGLE)
    put_bytes(sink, unique("large.bin"), pattern_bytes(RESUMABLE), RESUMABLE)
    assert rec.kinds() == ["multipart", "initiate", "chunk", "chunk", "final"], rec.kinds()
    for sent in rec.sent[:2]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(sent.url).query)
        assert query.get("ifGenerationMatch") == ["0"], sent.url


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
def test_single_request_onto_the_same_content_is_accepted_without_rewriting(
    single_server: Server, make_sink: Callable[..., GcsSink], declare: bool
) -> None:
    sink = make_sink(single_server)
    key = unique("same.bin")
    data = pattern_bytes(SINGLE, seed=3)
    generation = store_directly(single_server, sink.object_name(key), data)
    result, stream = put_bytes(sink, key, data, SINGLE if declare else None)
    assert stream.finished and stream.bytes_read == SINGLE
    assert result.key == sink.object_name(key) and result.size == SINGLE
    assert result.checksums == {"crc32c": crc32c_b64(data), "md5": md5_b64(data)}
    assert result.version == generation
    assert "already existed" in result.verified and "ifGenerationMatch=0" in result.verified
    unchanged(single_server, sink.object_name(key), data, generation)


@pytest.mark.parametrize("other", ["same-size", "longer"])
def test_single_request_onto_other_content_is_refused_and_leaves_it(
    single_server: Server, make_sink: Callable[..., GcsSink], other: str
) -> None:
    sink = make_sink(single_server, request_retries=3)
    rec = Recorder(sink)
    key = unique("other.bin")
    stored = pattern_bytes(SINGLE, seed=4)
    generation = store_directly(single_server, sink.object_name(key), stored)
    data = pattern_bytes(SINGLE if other == "same-size" else SINGLE + 1, seed=5)
    with pytest.raises(SinkError) as e:
        put_bytes(sink, key, data, len(data))
    assert not e.value.retryable
    message = str(e.value)
    assert f"gs://{BUCKET}/{sink.object_name(key)}" in message
    assert "already exists" in message and "other content" in message
    assert "upload_id" not in message and "Bearer" not in message
    assert rec.kinds() == ["multipart", "GET"], "refused once, compared once, never retried"
    unchanged(single_server, sink.object_name(key), stored, generation)


def test_resumable_onto_the_same_content_is_refused_at_initiation_and_accepted(
    emulator: Server, make_sink: Callable[..., GcsSink]
) -> None:
    sink = make_sink()
    rec = Recorder(sink)
    key = unique("same-large.bin")
    data = pattern_bytes(RESUMABLE, seed=6)
    generation = store_directly(emulator, sink.object_name(key), data)
    before = emulator.admin.resumable()
    result, stream = put_bytes(sink, key, data, RESUMABLE)
    assert stream.finished and stream.bytes_read == RESUMABLE, "the rest of the file was read and hashed"
    assert result.checksums == {"crc32c": crc32c_b64(data), "md5": md5_b64(data)}
    assert result.version == generation and "already existed" in result.verified
    assert rec.kinds() == ["initiate", "GET"]
    assert rec.sent[0].status == 412
    assert emulator.admin.resumable() == before, "no session was opened"
    unchanged(emulator, sink.object_name(key), data, generation)


def test_resumable_onto_other_content_is_refused(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    sink = make_sink()
    key = unique("other-large.bin")
    stored = pattern_bytes(RESUMABLE, seed=7)
    generation = store_directly(emulator, sink.object_name(key), stored)
    data = pattern_bytes(RESUMABLE, seed=8)
    stream = HashingStream(iter([data[i : i + 16 * KiB] for i in range(0, len(data), 16 * KiB)]))
    with pytest.raises(SinkError, match="other content") as e:
        sink.put(key, stream, RESUMABLE)
    assert not e.value.retryable and f"gs://{BUCKET}/{sink.object_name(key)}" in str(e.value)
    assert stream.finished, "the file is read to its end before it is compared"
    unchanged(emulator, sink.object_name(key), stored, generation)


def arriving_meanwhile(server: Server, name: str, other: bytes, data: bytes, at: int) -> Iterator[bytes]:
    """``data`` in 16 KiB pieces; once ``at`` bytes have gone, ``other`` is stored under
    ``name`` by another writer (the session was opened before: only its finalize can see it)."""
    step = 16 * KiB
    for pos in range(0, len(data), step):
        if pos == at:
            store_directly(server, name, other)
        yield data[pos : pos + step]


@pytest.mark.parametrize("same", [True, False], ids=["same-content", "other-content"])
def test_an_object_stored_during_a_resumable_upload_is_caught_at_finalize(
    emulator: Server, make_sink: Callable[..., GcsSink], same: bool
) -> None:
    sink = make_sink()
    rec = Recorder(sink)
    key = unique("meanwhile.bin")
    name = sink.object_name(key)
    data = pattern_bytes(RESUMABLE, seed=9)
    other = data if same else pattern_bytes(RESUMABLE, seed=10)
    before = emulator.admin.resumable()
    stream = HashingStream(arriving_meanwhile(emulator, name, other, data, CHUNK + 32 * KiB))
    if same:
        result = sink.put(key, stream, RESUMABLE)
        assert result.checksums == {"crc32c": crc32c_b64(data), "md5": md5_b64(data)}
        assert "already existed" in result.verified
    else:
        with pytest.raises(SinkError, match="other content") as e:
            sink.put(key, stream, RESUMABLE)
        assert not e.value.retryable
    assert stream.finished
    kinds = rec.kinds()
    assert kinds[:4] == ["initiate", "chunk", "chunk", "final"] and rec.sent[3].status == 412, kinds
    assert "GET" in kinds
    assert emulator.admin.resumable()["open"] == before["open"], "the refused session was left open"
    meta = emulator.admin.meta(name)
    assert meta is not None
    unchanged(emulator, name, other, str(meta["generation"]))


# --- no storage.objects.get (objectCreator only): a scripted server --------------------------------


@pytest.fixture
def creator_only(certs: Certs) -> Iterator[TLSServer]:
    """Answers an upload with 412 (the name is taken) and the comparison's GET with 403, as GCS
    does for an identity with roles/storage.objectCreator only."""

    def respond(method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method == "POST" and path.startswith("/upload/"):
            doc: dict[str, Any] = {
                "error": {
                    "code": 412,
                    "message": "At least one of the pre-conditions you specified did not hold.",
                    "errors": [{"reason": "conditionNotMet"}],
                }
            }
            return 412, {"Content-Type": "application/json"}, json.dumps(doc).encode()
        doc = {
            "error": {
                "code": 403,
                "message": "anonymous caller does not have storage.objects.get access to the Google Cloud Storage object.",
                "errors": [{"reason": "forbidden"}],
            }
        }
        return 403, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    server = TLSServer(server_context(certs.ca), respond)
    yield server
    server.close()


@pytest.mark.parametrize("size", [SINGLE, RESUMABLE], ids=["single", "resumable"])
def test_without_read_permission_the_existing_object_is_reported_not_retried(
    emulator: Server, certs: Certs, creator_only: TLSServer, size: int
) -> None:
    sink = GcsSink(make_options(emulator, certs.ca_pem, api_endpoint=creator_only.url, request_retries=3))
    try:
        stream = HashingStream(iter([pattern_bytes(size)]))
        with pytest.raises(SinkError) as e:
            sink.put("k/exists.bin", stream, size)
    finally:
        sink.close()
    assert not e.value.retryable and e.value.status == 403
    assert "already exists" in str(e.value) and "storage.objects.get" in str(e.value)
    assert f"gs://{BUCKET}/tests/k/exists.bin" in str(e.value)
    assert stream.finished
    methods = [r.method for r in creator_only.requests]
    assert methods == ["POST", "GET"], methods
    assert "ifGenerationMatch=0" in creator_only.requests[0].target
