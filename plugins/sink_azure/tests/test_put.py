"""Storing files: block layout, MD5 checked by Azure, nothing visible after a failure."""

from __future__ import annotations

import base64
import hashlib
import threading
import urllib.parse
from collections.abc import Callable

import portshift_sink_azure.sink as sink_module
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient
from portshift_sink_azure import AzureSink

from portshift.errors import IntegrityError, SinkError
from portshift.hashing import HashingStream
from portshift.testing import chunked, failing_chunks, pattern_bytes, put_bytes

from .conftest import CONTAINER, Azurite, MiB, Recorder, Sent, download, md5, unique


def stored_checks(admin: BlobServiceClient, sink: AzureSink, key: str, data: bytes) -> None:
    """The independent check: download, re-hash, compare with the stored Content-MD5 and metadata."""
    name = sink.blob_name(key)
    blob = admin.get_blob_client(CONTAINER, name)
    got = blob.download_blob().readall()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    props = blob.get_blob_properties()
    assert props.size == len(data)
    assert bytes(props.content_settings.content_md5) == md5(data), "stored Content-MD5 is not the whole-blob MD5"
    assert props.metadata.get("sha256") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("size", "blocks"),
    [
        (0, 0),
        (1, 0),
        (MiB - 1, 0),
        (MiB, 0),  # exactly one block: still a single Put Blob
        (MiB + 1, 2),
        (3 * MiB + 7, 4),
        (5 * MiB, 5),
    ],
)
@pytest.mark.parametrize("declare", [True, False])
def test_sizes_from_zero_to_many_blocks(
    make_sink: Callable[..., AzureSink], admin: BlobServiceClient, size: int, blocks: int, declare: bool
) -> None:
    sink = make_sink(block_size=MiB)
    rec = Recorder(sink)
    data = pattern_bytes(size, seed=size)
    key = unique(f"s{size}.bin")
    result, stream = put_bytes(sink, key, data, size if declare else None)

    assert stream.finished and stream.bytes_read == size
    assert result.size == size and result.key == sink.blob_name(key)
    assert result.checksums == {"md5": base64.b64encode(md5(data)).decode()}
    assert result.version
    put_blobs, put_blocks, commits = rec.ops(None), rec.ops("block"), rec.ops("blocklist")
    if blocks == 0:
        assert (len(put_blobs), len(put_blocks), len(commits)) == (1, 0, 0)
        assert result.verified == "Azure checked MD5 of the single Put Blob; Content-MD5 set"
        (req,) = put_blobs
        assert req.body == data
        assert base64.b64decode(req.headers["content-md5"]) == md5(data)
    else:
        assert (len(put_blobs), len(put_blocks), len(commits)) == (0, blocks, 1)
        assert result.verified == f"Azure checked MD5 of each of {blocks} blocks; Content-MD5 set"
        # every block went with the MD5 of exactly its own bytes, block-sized; in block-id order
        # they are the file (up to max_concurrency of them are sent at the same time)
        assert b"".join(r.body or b"" for r in sorted(put_blocks, key=_block_id_of)) == data
        for r in put_blocks:
            assert r.body is not None and 0 < len(r.body) <= MiB
            assert base64.b64decode(r.headers["content-md5"]) == md5(r.body)
        assert base64.b64decode(commits[0].headers["x-ms-blob-content-md5"]) == md5(data)
    assert all(s.url.startswith("https://") for s in rec.sent)
    stored_checks(admin, sink, key, data)


def test_prefix_and_content_type(make_sink: Callable[..., AzureSink], admin: BlobServiceClient) -> None:
    sink = make_sink(prefix="/deep/er/")
    assert sink.location().endswith(f"/{CONTAINER}/deep/er")
    key = unique("transcript.json")
    result, _ = put_bytes(sink, key, b'{"a": 1}', 8)
    assert result.key == f"deep/er/{key}"
    props = admin.get_blob_client(CONTAINER, f"deep/er/{key}").get_blob_properties()
    assert props.content_settings.content_type == "application/json"


def test_wrong_md5_is_rejected_by_azurite_raw(azurite: Azurite, admin: BlobServiceClient) -> None:
    """The server itself, not our client, refuses a body whose Content-MD5 is wrong."""
    blob = admin.get_blob_client(CONTAINER, unique("raw.bin"))
    with pytest.raises(HttpResponseError) as e:
        blob.upload_blob(b"payload", overwrite=True, transactional_content_md5=md5(b"something else"))
    assert e.value.status_code == 400
    with pytest.raises(HttpResponseError) as e:
        blob.stage_block("blk-000001", b"payload", transactional_content_md5=md5(b"other"))
    assert e.value.status_code == 400
    assert download(admin, blob.blob_name) is None


def _block_id_of(sent: Sent) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(sent.url).query)
    return base64.b64decode(query["blockid"][0]).decode()


def _lie_on(monkeypatch: pytest.MonkeyPatch, which: int) -> list[int]:
    """Make the sink send a wrong Content-MD5 on its ``which``-th request body (1-based)."""
    calls: list[int] = []
    real = sink_module._transactional_md5
    lock = threading.Lock()  # blocks go out from several threads: which call this is, counted once

    def lying(data: bytes) -> bytes:
        with lock:
            calls.append(len(data))
            nth = len(calls)
        digest = real(data)
        return md5(b"not " + data) if nth == which else digest

    monkeypatch.setattr(sink_module, "_transactional_md5", lying)
    return calls


@pytest.mark.parametrize(("size", "which"), [(1000, 1), (4 * MiB + 5, 1), (4 * MiB + 5, 3), (4 * MiB + 5, 5)])
def test_wrong_md5_is_refused_by_the_server_and_nothing_is_visible(
    make_sink: Callable[..., AzureSink],
    admin: BlobServiceClient,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    which: int,
) -> None:
    sink = make_sink(block_size=MiB, max_concurrency=1)  # one block in flight: none sent after the refused one
    calls = _lie_on(monkeypatch, which)
    key = unique("corrupt.bin")
    with pytest.raises(SinkError) as e:
        put_bytes(sink, key, pattern_bytes(size, seed=9), size)
    assert len(calls) == which, "the upload must stop at the refused block"
    assert e.value.status == 400 and "MD5" in str(e.value)
    assert e.value.retryable
    assert e.value.location == f"{sink.location()}/{key}"
    assert download(admin, sink.blob_name(key)) is None


def test_failure_keeps_the_previous_version_intact(
    make_sink: Callable[..., AzureSink], admin: BlobServiceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = make_sink(block_size=MiB)
    key = unique("v.bin")
    first = pattern_bytes(2 * MiB + 3, seed=1)
    put_bytes(sink, key, first, len(first))
    # a block refused by the server mid-upload...
    _lie_on(monkeypatch, 2)
    with pytest.raises(SinkError):
        put_bytes(sink, key, pattern_bytes(3 * MiB, seed=2), 3 * MiB)
    monkeypatch.undo()
    # ...and a source that drops after three staged blocks
    with pytest.raises(Exception, match="connection dropped"):
        sink.put(key, HashingStream(failing_chunks(pattern_bytes(4 * MiB, seed=3), 3 * MiB + 10)), 4 * MiB)
    assert download(admin, sink.blob_name(key)) == first
    stored_checks(admin, sink, key, first)


def test_staged_blocks_of_a_failed_upload_stay_uncommitted(sink: AzureSink, admin: BlobServiceClient) -> None:
    key = unique("dropped.bin")
    rec = Recorder(sink)
    with pytest.raises(Exception, match="connection dropped"):
        sink.put(key, HashingStream(failing_chunks(pattern_bytes(4 * MiB, seed=4), 3 * MiB + 10)), 4 * MiB)
    assert len(rec.ops("block")) == 3 and not rec.ops("blocklist") and not rec.ops(None)
    name = sink.blob_name(key)
    assert download(admin, name) is None
    container = admin.get_container_client(CONTAINER)
    assert name not in {b.name for b in container.list_blobs(name_starts_with=name)}
    # Azure keeps them as an uncommitted blob, invisible to readers until garbage-collected
    assert name in {b.name for b in container.list_blobs(name_starts_with=name, include=["uncommittedblobs"])}


def test_short_stream_is_not_committed(sink: AzureSink, admin: BlobServiceClient) -> None:
    for size in (500, 2 * MiB + 1):
        key = unique("short.bin")
        data = pattern_bytes(size)
        with pytest.raises(IntegrityError):
            sink.put(key, HashingStream(chunked(data)), size + 10)
        assert download(admin, sink.blob_name(key)) is None


def test_declared_sha256_mismatch_aborts_before_commit(sink: AzureSink, admin: BlobServiceClient) -> None:
    """The core's stream raises at the end when the source's SHA-256 differs: nothing is committed."""
    data = pattern_bytes(2 * MiB + 5)
    key = unique("badsha.bin")
    stream = HashingStream(chunked(data), expect_size=len(data), expect_sha256="0" * 64)
    with pytest.raises(IntegrityError):
        sink.put(key, stream, len(data))
    assert download(admin, sink.blob_name(key)) is None


@pytest.mark.serial
@pytest.mark.parametrize("concurrency", [1, 3])
def test_memory_is_bounded_by_the_blocks_in_flight(
    make_sink: Callable[..., AzureSink], admin: BlobServiceClient, concurrency: int
) -> None:
    """While a block is sent, the sink has taken at most max_concurrency blocks (+ one source
    chunk) beyond it: the blocks in flight and the one being read."""
    sink = make_sink(block_size=MiB, max_concurrency=concurrency)
    chunk = 64 * 1024
    data = pattern_bytes(12 * MiB + 17, seed=7)
    stream = HashingStream(data[i : i + chunk] for i in range(0, len(data), chunk))
    ahead: list[int] = []
    sent = [0]
    lock = threading.Lock()

    def on_send(item: Sent) -> None:
        if item.body is not None and "comp=block&" in item.url + "&":
            with lock:
                sent[0] += len(item.body)
                ahead.append(stream.bytes_read - sent[0])

    Recorder(sink, on_send)
    key = unique("big.bin")
    result = sink.put(key, stream, len(data))
    assert result.size == len(data) and len(ahead) == 13
    bound = concurrency * MiB + chunk + 1
    assert bound < len(data) / 3, "the file must be much larger than the bound for this test to mean anything"
    assert max(ahead) <= bound, f"the sink read {max(ahead)} bytes ahead of what it sent"
    stored_checks(admin, sink, key, data)


def test_parallel_puts_share_one_sink(sink: AzureSink, admin: BlobServiceClient) -> None:
    payloads = {unique(f"p{i}.bin"): pattern_bytes(MiB * (i % 3) + 1000 * i, seed=100 + i) for i in range(6)}
    errors: list[BaseException] = []

    def work(key: str, data: bytes) -> None:
        try:
            put_bytes(sink, key, data, len(data))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=item) for item in payloads.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for key, data in payloads.items():
        stored_checks(admin, sink, key, data)


def test_access_tier_is_set(make_sink: Callable[..., AzureSink], admin: BlobServiceClient) -> None:
    sink = make_sink(access_tier="Cool")
    for size in (10, 2 * MiB + 1):
        key = unique("cool.bin")
        put_bytes(sink, key, pattern_bytes(size), size)
        assert admin.get_blob_client(CONTAINER, sink.blob_name(key)).get_blob_properties().blob_tier == "Cool"


def test_encryption_scope_goes_with_every_write(make_sink: Callable[..., AzureSink]) -> None:
    # Azurite accepts and ignores encryption scopes, so this checks what goes on the wire.
    sink = make_sink(encryption_scope="custkeys01")
    rec = Recorder(sink)
    put_bytes(sink, unique("a.bin"), b"small", 5)
    put_bytes(sink, unique("b.bin"), pattern_bytes(2 * MiB + 1), 2 * MiB + 1)
    writes = [s for s in rec.sent if s.method == "PUT"]
    assert len(writes) == 1 + 3 + 1
    assert all(s.headers.get("x-ms-encryption-scope") == "custkeys01" for s in writes)


def test_api_version_pin(make_sink: Callable[..., AzureSink], admin: BlobServiceClient) -> None:
    sink = make_sink(api_version="2025-11-05")
    rec = Recorder(sink)
    key = unique("pinned.bin")
    put_bytes(sink, key, b"x" * 10, 10)
    assert {s.headers.get("x-ms-version") for s in rec.sent} == {"2025-11-05"}
    assert download(admin, sink.blob_name(key)) == b"x" * 10


def test_check_stages_an_invisible_probe(sink: AzureSink, admin: BlobServiceClient) -> None:
    rec = Recorder(sink)
    sink.check()
    (probe,) = rec.ops("block")
    assert base64.b64decode(probe.headers["content-md5"]) == md5(probe.body or b"")
    container = admin.get_container_client(CONTAINER)
    assert not [b.name for b in container.list_blobs(name_starts_with="tests/.portshift-check")]


@pytest.mark.parametrize("size", [10, 2 * MiB + 5])  # single Put Blob; blocks + Put Block List
def test_content_type_comes_from_the_stream(make_sink: Callable[..., AzureSink], admin: BlobServiceClient, size: int) -> None:
    """The artifact's media type (``stream.content_type``) wins over the extension's guess."""
    sink = make_sink(block_size=MiB)
    rec = Recorder(sink)
    data = pattern_bytes(size, seed=3)
    key = unique("recording.bin")  # the extension alone would give application/octet-stream
    sink.put(key, HashingStream(chunked(data), content_type="audio/ogg; codecs=opus"), size)
    props = admin.get_blob_client(CONTAINER, sink.blob_name(key)).get_blob_properties()
    assert props.content_settings.content_type == "audio/ogg; codecs=opus"
    committing = rec.ops("blocklist") if size > MiB else rec.ops(None)
    assert [s.headers.get("x-ms-blob-content-type") for s in committing] == ["audio/ogg; codecs=opus"]


@pytest.mark.parametrize(
    ("given", "name", "expected"),
    [
        (None, "transcript.json", "application/json"),
        ("", "media.mp3", "audio/mpeg"),
        (None, "blob.unknownext", "application/octet-stream"),
        ("text/plain\r\nx-ms-meta-evil: 1", "notes.json", "application/json"),  # never sent as a header
        ("not a media type", "notes.json", "application/json"),
    ],
)
def test_content_type_falls_back_to_the_extension(
    make_sink: Callable[..., AzureSink], admin: BlobServiceClient, given: str | None, name: str, expected: str
) -> None:
    sink = make_sink()
    rec = Recorder(sink)
    key = unique(name)
    sink.put(key, HashingStream(chunked(b"{}"), content_type=given), 2)
    blob = admin.get_blob_client(CONTAINER, sink.blob_name(key))
    props = blob.get_blob_properties()
    assert props.content_settings.content_type == expected
    assert "evil" not in props.metadata
    (put,) = rec.ops(None)
    assert put.headers.get("x-ms-blob-content-type") == expected
