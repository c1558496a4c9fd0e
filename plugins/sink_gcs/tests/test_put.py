"""Uploads against gcp-storage-emulator over HTTPS: sizes, request shapes, checksums GCS verifies,
wrong CRC32C/MD5 refused, interrupted uploads leave nothing and cancel their session.

Every stored object is re-downloaded by the independent admin client and re-hashed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
import requests
from portshift_sink_gcs import GcsSink
from portshift_sink_gcs import sink as sink_module

from portshift.errors import ConfigError, IntegrityError, SinkError
from portshift.hashing import HashingStream
from portshift.testing import SourceFailure, failing_chunks, pattern_bytes, put_bytes

from .conftest import BUCKET, CHUNK, MiB, Recorder, Sent, Server, crc32c_b64, md5_b64, unique

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 3]


def check_stored(server: Server, sink: GcsSink, key: str, data: bytes) -> dict[str, object]:
    stored = server.admin.download(sink.object_name(key))
    assert stored is not None, f"nothing stored under {key}"
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
    meta = server.admin.meta(sink.object_name(key))
    assert meta is not None
    assert meta["crc32c"] == crc32c_b64(data) and meta["md5Hash"] == md5_b64(data)
    assert int(meta["size"]) == len(data)
    return meta


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "undeclared"])
@pytest.mark.parametrize("size", SIZES)
def test_sizes_from_zero_to_many_chunks(emulator: Server, make_sink: Callable[..., GcsSink], size: int, declare: bool) -> None:
    sink = make_sink()
    rec = Recorder(sink)
    data = pattern_bytes(size, seed=size)
    key = unique(f"n{size}.bin")
    result, stream = put_bytes(sink, key, data, size if declare else None)
    assert stream.finished and stream.bytes_read == size
    assert result.key == f"tests/{key}" and result.size == size
    assert result.checksums == {"crc32c": crc32c_b64(data), "md5": md5_b64(data)}
    assert result.version
    check_stored(emulator, sink, key, data)

    kinds = rec.kinds()
    if size <= CHUNK:
        assert kinds == ["multipart"], kinds
        assert "single-request" in result.verified and "CRC32C and MD5" in result.verified
    else:
        chunks = -(-size // CHUNK)
        assert kinds == ["initiate"] + ["chunk"] * (chunks - 1) + ["final"], kinds
        assert f"{chunks} chunks" in result.verified and "at finalize" in result.verified
        for s in rec.sent[1:-1]:
            assert s.body is not None and len(s.body) == CHUNK  # memory: one chunk per request
        final = rec.sent[-1]
        assert final.headers["x-goog-hash"] == f"crc32c={crc32c_b64(data)},md5={md5_b64(data)}"
        assert final.headers["content-range"].endswith(f"/{size}")
        initiate = rec.sent[0]
        if declare:
            assert initiate.headers["x-upload-content-length"] == str(size)
        else:
            assert "x-upload-content-length" not in initiate.headers


def test_large_object_in_one_mib_chunks(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    size = 20 * MiB + 12345
    data = pattern_bytes(size, seed=77)
    sink = make_sink(chunk_size="1MiB")
    rec = Recorder(sink)
    key = unique("large.bin")
    result, _ = put_bytes(sink, key, data, size)
    assert result.size == size and "21 chunks" in result.verified
    assert max(len(s.body or b"") for s in rec.sent) <= MiB
    check_stored(emulator, sink, key, data)


def test_metadata_sent_content_type_storage_class_kms(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    kms = "projects/p1/locations/europe-west1/keyRings/r/cryptoKeys/k"
    sink = make_sink(storage_class="NEARLINE", kms_key_name=kms)
    rec = Recorder(sink)
    for size in (10, 2 * CHUNK + 1):
        key = unique("meta.json")
        stream = HashingStream(iter([pattern_bytes(size)]), content_type="application/json")
        sink.put(key, stream, size)
        meta = emulator.admin.meta(sink.object_name(key))
        assert meta is not None and meta["contentType"] == "application/json"
        assert meta["storageClass"] == "NEARLINE"
    bodies = [s.body or b"" for s in rec.sent if s.method == "POST"]
    assert len(bodies) == 2 and all(kms.encode() in b and b"NEARLINE" in b for b in bodies)


def _lie(values: dict[str, str], which: str) -> dict[str, str]:
    wrong = dict(values)
    wrong[which] = crc32c_b64(b"something else") if which == "crc32c" else md5_b64(b"something else")
    return wrong


@pytest.mark.parametrize("which", ["crc32c", "md5"])
@pytest.mark.parametrize("size", [1000, 3 * CHUNK + 5], ids=["multipart", "resumable"])
def test_wrong_checksum_is_refused_by_gcs_and_nothing_is_stored(
    emulator: Server, make_sink: Callable[..., GcsSink], monkeypatch: pytest.MonkeyPatch, size: int, which: str
) -> None:
    monkeypatch.setattr(sink_module, "_sent_checksums", lambda values: _lie(values, which))
    sink = make_sink()
    rec = Recorder(sink)
    before = emulator.admin.resumable()
    key = unique("lied.bin")
    with pytest.raises(SinkError) as e:
        put_bytes(sink, key, pattern_bytes(size), size)
    err = e.value
    assert err.status == 400 and err.retryable
    label = "CRC32C" if which == "crc32c" else "MD5"
    assert "checksum" in str(err) and label in str(err), str(err)
    assert err.location == f"gs://{BUCKET}/{sink.object_name(key)}"
    assert err.__cause__ is None and err.__suppress_context__
    assert emulator.admin.download(sink.object_name(key)) is None
    if size > CHUNK:
        assert rec.kinds()[-1] == "cancel"
        after = emulator.admin.resumable()
        assert after["open"] == before["open"] and after["cancelled"] == before["cancelled"] + 1


def flip_a_body_byte(sent: Sent) -> Sent:
    """Change one byte near the end of an upload's body (after the sink hashed it)."""
    if sent.body and sent.method in ("POST", "PUT") and len(sent.body) > 500:
        body = bytearray(sent.body)
        body[-300] ^= 0x01
        sent.body = bytes(body)
    return sent


@pytest.mark.parametrize("size", [1000, 3 * CHUNK + 5], ids=["multipart", "resumable"])
def test_bytes_corrupted_on_the_wire_are_refused(emulator: Server, make_sink: Callable[..., GcsSink], size: int) -> None:
    """The checksums are right but a byte of the body changes in transit (after hashing)."""
    sink = make_sink()
    Recorder(sink, alter=flip_a_body_byte)
    key = unique("flipped.bin")
    with pytest.raises(SinkError) as e:
        put_bytes(sink, key, pattern_bytes(size), size)
    assert e.value.status == 400 and "checksum" in str(e.value)
    assert emulator.admin.download(sink.object_name(key)) is None


def test_interrupted_upload_leaves_no_object_and_cancels_the_session(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    sink = make_sink()
    rec = Recorder(sink)
    before = emulator.admin.resumable()
    data = pattern_bytes(5 * CHUNK + 99)
    key = unique("interrupted.bin")
    with pytest.raises(SourceFailure):
        sink.put(key, HashingStream(failing_chunks(data, fail_after=3 * CHUNK + 10)), len(data))
    assert rec.kinds() == ["initiate", "chunk", "chunk", "chunk", "cancel"]
    assert rec.sent[-1].status == 499
    assert emulator.admin.download(sink.object_name(key)) is None
    after = emulator.admin.resumable()
    assert after["open"] == before["open"], "a resumable session was left open"
    assert after["cancelled"] == before["cancelled"] + 1
    # the cancelled session accepts nothing more
    uri = next(iter(rec.session_uris()))
    r = requests.put(uri, data=b"x", headers={"Content-Range": "bytes */*"}, verify=str(emulator.admin.ca), timeout=10)
    assert r.status_code == 404


def test_declared_size_mismatch_aborts_before_commit(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    """The core's stream raises at the end when fewer bytes arrive than declared: nothing is
    committed, the session is cancelled."""
    sink = make_sink()
    rec = Recorder(sink)
    data = pattern_bytes(2 * CHUNK + 10)
    key = unique("short.bin")
    with pytest.raises(IntegrityError):
        sink.put(key, HashingStream(iter([data]), expect_size=len(data) + 1), len(data) + 1)
    assert "final" not in rec.kinds() and rec.kinds()[-1] == "cancel"
    assert emulator.admin.download(sink.object_name(key)) is None


def test_lost_connection_on_a_chunk_is_resumed_from_what_gcs_persisted(
    emulator: Server, make_sink: Callable[..., GcsSink]
) -> None:
    sink = make_sink(request_retries=2)
    calls = {"n": 0}
    original = sink._session.request

    def flaky(method: str, url: str, **kwargs: object) -> object:
        if method == "PUT" and "bytes 262144-" in str((kwargs.get("headers") or {}).get("Content-Range", "")):
            calls["n"] += 1
            if calls["n"] == 1:
                raise requests.exceptions.ConnectionError("connection reset by peer")
        return original(method, url, **kwargs)

    sink._session.request = flaky  # type: ignore[method-assign]
    data = pattern_bytes(4 * CHUNK + 1, seed=9)
    key = unique("flaky.bin")
    result, _ = put_bytes(sink, key, data, len(data))
    assert calls["n"] == 2 and result.size == len(data)
    check_stored(emulator, sink, key, data)


def test_missing_bucket_is_a_clear_non_retryable_error(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    sink = make_sink(bucket="no-such-bucket")
    for size in (10, 2 * CHUNK + 1):
        with pytest.raises(SinkError) as e:
            put_bytes(sink, unique(), pattern_bytes(size), size)
        assert e.value.status == 404 and not e.value.retryable
        assert "gs://no-such-bucket/tests/" in str(e.value)


def test_check_opens_and_cancels_a_session_without_writing(emulator: Server, make_sink: Callable[..., GcsSink]) -> None:
    sink = make_sink(prefix="checked")
    rec = Recorder(sink)
    before = emulator.admin.resumable()
    sink.check()
    assert rec.kinds() == ["initiate", "cancel"]
    assert emulator.admin.names("checked/") == []
    after = emulator.admin.resumable()
    assert after["open"] == before["open"] and after["cancelled"] == before["cancelled"] + 1
    with pytest.raises(ConfigError, match=r"bucket: gs://no-such-bucket/tests does not exist") as e:
        make_sink(bucket="no-such-bucket").check()
    assert "\n" not in str(e.value)


def test_fake_gcs_server_sizes(fakegcs: Server, make_sink: Callable[..., GcsSink]) -> None:
    """The same uploads on the multi-threaded fake-gcs-server (which does not verify checksums:
    the sink's own comparison with what it reports still holds)."""
    sink = make_sink(fakegcs)
    for size in (0, CHUNK, CHUNK + 1, 6 * CHUNK + 7):
        data = pattern_bytes(size, seed=size + 1)
        key = unique()
        result, _ = put_bytes(sink, key, data, None)
        assert result.checksums["crc32c"] == crc32c_b64(data)
        check_stored(fakegcs, sink, key, data)


@pytest.mark.parametrize("size", [1000, 3 * CHUNK + 5], ids=["multipart", "resumable"])
def test_store_that_does_not_verify_is_caught_by_the_comparison(
    fakegcs: Server, make_sink: Callable[..., GcsSink], size: int
) -> None:
    """fake-gcs-server does not verify the checksums it is sent: bytes changed in transit are
    stored. The sink compares the CRC32C/MD5 the store reports with its own and refuses to call
    that a verified write."""
    sink = make_sink(fakegcs)
    Recorder(sink, alter=flip_a_body_byte)
    with pytest.raises(IntegrityError) as e:
        put_bytes(sink, unique(), pattern_bytes(size), size)
    assert "CRC32C" in str(e.value) and "MD5" in str(e.value)


def test_permission_answers_are_translated() -> None:
    """GCS's 403 answers (the JSON API error shape, texts as GCS words them) become the right portshift errors: a
    missing create permission stops the job (AuthError); an existing object that objectCreator may
    not replace fails that one file only."""
    from portshift_sink_gcs import errors as gcs_errors

    from portshift.errors import AuthError

    def answer(message: str) -> requests.Response:
        r = requests.Response()
        r.status_code = 403
        r._content = json.dumps(
            {"error": {"code": 403, "message": message, "errors": [{"reason": "forbidden", "message": message}]}}
        ).encode()
        return r

    denied = gcs_errors.from_response(
        answer(
            "sa@p.iam.gserviceaccount.com does not have storage.objects.create access to the Google Cloud Storage "
            "object. Permission 'storage.objects.create' denied on resource (or it may not exist)."
        ),
        "upload object",
        "gs://b/k",
    )
    assert isinstance(denied, AuthError) and "objectCreator" in str(denied)
    exists = gcs_errors.from_response(
        answer(
            "sa@p.iam.gserviceaccount.com does not have storage.objects.delete access to the Google Cloud Storage "
            "object. Permission 'storage.objects.delete' denied on resource (or it may not exist)."
        ),
        "upload object",
        "gs://b/k",
    )
    assert type(exists) is SinkError and not exists.retryable and "already exists" in str(exists)
