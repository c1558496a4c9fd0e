"""Uploads against moto over HTTPS: sizes around the part boundary, what S3 confirmed, SSE and
storage class on the server, parallel parts, bounded memory, and aborts that leave nothing."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from portshift.errors import AuthError, SinkError
from portshift.hashing import HashingStream
from portshift.testing import chunked, failing_chunks, pattern_bytes

from .conftest import MakeSink, Pending, ReadObj

PART = 5 * 1024 * 1024
MiB = 1024 * 1024


def b64sha(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize(
    ("size", "parts"),
    [
        (0, 1),
        (1000, 1),
        (PART - 1, 1),
        (PART, 1),  # exactly one part: still a single PutObject
        (PART + 1, 2),  # one byte more: multipart, the second part is 1 byte
        (2 * PART + 12345, 3),
        (25 * MiB, 5),
    ],
    ids=["zero", "small", "part-minus-1", "exactly-one-part", "one-part-plus-1", "three-parts", "25MiB"],
)
def test_sizes_round_trip_and_say_what_s3_checked(
    make_sink: MakeSink, admin: Any, bucket: str, pending: Pending, size: int, parts: int
) -> None:
    sink = make_sink(prefix="p")
    data = pattern_bytes(size, seed=size)
    stream = HashingStream(chunked(data))
    result = sink.put("a/obj.bin", stream, size)

    assert stream.finished and stream.bytes_read == size
    assert result.size == size and result.key == "a/obj.bin"
    if parts == 1:
        # The checksum S3 verified IS the manifest's SHA-256.
        assert result.checksums["sha256"] == hashlib.sha256(data).hexdigest() == stream.sha256_hex()
        assert result.checksums["s3-sha256"] == b64sha(data)
        assert result.verified.startswith("S3 checked SHA-256 of 1 part")
    else:
        assert "sha256" not in result.checksums
        part_digests = b"".join(hashlib.sha256(data[i : i + PART]).digest() for i in range(0, size, PART))
        import base64

        expected = base64.b64encode(hashlib.sha256(part_digests).digest()).decode() + f"-{parts}"
        assert result.checksums["s3-sha256-composite"] == expected
        assert result.verified.startswith(f"S3 checked SHA-256 of each of {parts} parts")
    assert result.version

    # Independent check: download with plain boto3 and re-hash.
    obj = admin.get_object(Bucket=bucket, Key="p/a/obj.bin", ChecksumMode="ENABLED")
    body = obj["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    if parts == 1:
        assert obj["ChecksumSHA256"] == b64sha(data)  # stored with the object
    assert pending() == []


@pytest.mark.parametrize("size", [1000, 2 * PART + 7])
def test_sse_kms_and_storage_class_reach_the_server(make_sink: MakeSink, admin: Any, bucket: str, size: int) -> None:
    sink = make_sink(sse="aws:kms", kms_key_id="alias/portshift-test", storage_class="STANDARD_IA")
    data = pattern_bytes(size)
    sink.put("kms.bin", HashingStream(chunked(data)), size)
    head = admin.head_object(Bucket=bucket, Key="kms.bin")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == "alias/portshift-test"
    assert head["StorageClass"] == "STANDARD_IA"


@pytest.mark.parametrize("size", [10, PART + 10])
def test_sse_s3_reaches_the_server(make_sink: MakeSink, admin: Any, bucket: str, size: int) -> None:
    sink = make_sink(sse="AES256")
    sink.put("aes.bin", HashingStream(chunked(pattern_bytes(size))), size)
    head = admin.head_object(Bucket=bucket, Key="aes.bin")
    assert head["ServerSideEncryption"] == "AES256"
    assert "StorageClass" not in head  # STANDARD: not set, not sent


def test_parallel_parts_arrive_in_order(make_sink: MakeSink, read_obj: ReadObj) -> None:
    sink = make_sink(max_concurrency=4)
    data = os.urandom(6 * PART + 999)
    result = sink.put("par.bin", HashingStream(chunked(data)), None)
    assert result.verified.startswith("S3 checked SHA-256 of each of 7 parts")
    assert read_obj("par.bin") == data


def _generated(total: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    block = os.urandom(chunk)
    sent = 0
    counter = 0
    while sent < total:
        counter += 1
        piece = counter.to_bytes(8, "big") + block[8 : min(chunk, total - sent)]
        piece = piece[: total - sent]
        sent += len(piece)
        yield piece


@pytest.mark.serial
@pytest.mark.parametrize("concurrency", [1, 3])
def test_memory_is_bounded_by_part_size_not_file_size(make_sink: MakeSink, concurrency: int) -> None:
    total = 40 * MiB
    sink = make_sink(max_concurrency=concurrency)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = sink.put("mem.bin", HashingStream(_generated(total)), None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.size == total
    bound = PART * (concurrency + 1) + 3 * MiB  # documented: parts in flight + the one being filled
    assert bound < 0.6 * total, "the artifact must be much larger than the bound for this test to mean anything"
    assert peak < bound, f"peak {peak / MiB:.1f} MiB above the bound {bound / MiB:.1f} MiB"


def test_source_failure_mid_multipart_aborts_and_leaves_nothing(make_sink: MakeSink, read_obj: ReadObj, pending: Pending) -> None:
    sink = make_sink(max_concurrency=2)
    data = pattern_bytes(3 * PART + 100)
    stream = HashingStream(failing_chunks(data, fail_after=2 * PART + 50))
    from portshift.testing import SourceFailure

    with pytest.raises(SourceFailure):  # the source's own error goes up unchanged
        sink.put("broken.bin", stream, len(data))
    assert read_obj("broken.bin") is None
    assert pending() == []


def test_interrupt_mid_multipart_aborts(make_sink: MakeSink, read_obj: ReadObj, pending: Pending) -> None:
    import threading

    from portshift.errors import Interrupted

    cancel = threading.Event()
    data = pattern_bytes(3 * PART)

    def chunks() -> Iterator[bytes]:
        for i, piece in enumerate(chunked(data)):
            if i == 40:
                cancel.set()  # like SIGTERM arriving mid-transfer
            yield piece

    sink = make_sink()
    with pytest.raises(Interrupted):
        sink.put("int.bin", HashingStream(chunks(), cancel=cancel), len(data))
    assert read_obj("int.bin") is None
    assert pending() == []


def test_server_failure_on_one_part_aborts_and_leaves_nothing(
    make_sink: MakeSink, tls_proxy: Any, read_obj: ReadObj, pending: Pending, admin: Any, bucket: str
) -> None:
    # Every attempt at part 3 loses its connection (botocore retries it, then gives up).
    tls_proxy.rule = lambda req: tls_proxy.Action(close=True) if "partNumber=3&" in req.target + "&" else None
    sink = make_sink(endpoint_url=tls_proxy.url, max_concurrency=2)
    data = pattern_bytes(4 * PART + 1)
    with pytest.raises(SinkError) as e:
        sink.put("dropped.bin", HashingStream(chunked(data)), len(data))
    assert "upload part 3" in str(e.value) and e.value.retryable
    assert sum("partNumber=3" in r.target for r in tls_proxy.seen) == 3  # botocore's 3 attempts
    assert any(r.method == "DELETE" and "uploadId" in r.target for r in tls_proxy.seen), "no abort was sent"
    assert read_obj("dropped.bin") is None
    assert pending() == []


def test_no_such_bucket_is_a_sink_error_with_location(make_sink: MakeSink) -> None:
    sink = make_sink(bucket="no-such-bucket-here")
    with pytest.raises(SinkError) as e:
        sink.put("x.bin", HashingStream(iter([b"data"])), 4)
    assert not isinstance(e.value, AuthError)
    assert e.value.retryable is False
    text = str(e.value)
    assert "NoSuchBucket" in text and "put object" in text and "s3://no-such-bucket-here/x.bin" in text
    assert "(HTTP 404)" in text
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_location_is_bucket_and_prefix(make_sink: MakeSink, bucket: str) -> None:
    assert make_sink(prefix="/exports/acme/").location() == f"s3://{bucket}/exports/acme"
    assert make_sink().location() == f"s3://{bucket}"


def test_check_creates_nothing_and_writes_only_with_check_write(
    make_sink: MakeSink, tls_proxy: Any, read_obj: ReadObj, pending: Pending, admin: Any, bucket: str
) -> None:
    """check() proves the bucket and the write permission with a PutObject that cannot be written
    (If-Match on a name no object has: NoSuchKey) and an AbortMultipartUpload for an upload that
    does not exist (NoSuchUpload): no object, no upload, nothing to leave behind if the process
    dies. check_write adds the marker object."""
    sink = make_sink(endpoint_url=tls_proxy.url, prefix="chk")
    sink.check()
    assert [r.method for r in tls_proxy.seen] == ["PUT", "DELETE"]
    assert "If-Match" in tls_proxy.seen[0].headers and "uploadId=check-" in tls_proxy.seen[1].target
    assert admin.list_objects_v2(Bucket=bucket, Prefix="chk/").get("KeyCount") == 0
    assert read_obj("chk/.portshift-check") is None and pending() == []
    tls_proxy.seen.clear()
    writer = make_sink(endpoint_url=tls_proxy.url, prefix="chk", check_write=True)
    writer.check()
    assert [r.method for r in tls_proxy.seen] == ["PUT", "DELETE", "PUT"]
    assert read_obj("chk/.portshift-check") == b"portshift write check\n"


def test_a_declared_size_beyond_10000_parts_is_refused_before_sending(make_sink: MakeSink, tls_proxy: Any) -> None:
    sink = make_sink(endpoint_url=tls_proxy.url)
    with pytest.raises(SinkError, match="raise part_size"):
        sink.put("huge.bin", HashingStream(iter([b"x"])), PART * 10_000 + 1)
    assert tls_proxy.connections == 0


def test_a_composite_checksum_returned_by_s3_is_compared(make_sink: MakeSink) -> None:
    """moto returns no composite checksum on CompleteMultipartUpload; AWS does (``<b64>-<parts>``)."""
    import base64

    from portshift_sink_s3.sink import _Part

    from portshift.errors import IntegrityError

    sink = make_sink()
    parts = [_Part(n, f'"e{n}"', "", hashlib.sha256(bytes([n])).digest(), 1) for n in (1, 2, 3)]
    composite = base64.b64encode(hashlib.sha256(b"".join(p.digest for p in parts)).digest()).decode()
    ok = sink._completed("k", "k", parts, 3, {"ChecksumSHA256": f"{composite}-3", "ETag": '"x-3"'})
    assert ok.verified.endswith("composite SHA-256 confirmed by S3")
    assert ok.checksums == {"s3-sha256-composite": f"{composite}-3"} and ok.version == '"x-3"'
    for wrong in (f"{composite}-2", base64.b64encode(b"\0" * 32).decode() + "-3"):
        with pytest.raises(IntegrityError, match="composite"):
            sink._completed("k", "k", parts, 3, {"ChecksumSHA256": wrong})


@pytest.mark.parametrize("size", [1000, 2 * PART + 7], ids=["put-object", "multipart"])
def test_botocore_sends_our_sha256_and_hashes_nothing_again(make_sink: MakeSink, read_obj: ReadObj, size: int) -> None:
    """Each part's SHA-256 is computed once, by the sink: botocore sends it as a plain header,
    neither computes a checksum of its own (no trailer, no aws-chunked body, no Content-MD5) nor
    hashes the payload for the signature, and sends the very buffer it was given (no re-read)."""
    import base64

    import botocore.httpchecksum

    sink = make_sink(max_concurrency=2)
    seen: list[tuple[str, dict[str, str], Any]] = []

    def capture(request: Any, event_name: str, **_: Any) -> None:
        seen.append((event_name.rsplit(".", 1)[-1], dict(request.headers), request.body))

    sink.client.meta.events.register("before-send.s3", capture)
    hashed: list[str] = []
    original_handle = botocore.httpchecksum.BaseChecksum.handle

    def spy_handle(self: Any, body: Any) -> Any:
        hashed.append(type(self).__name__)
        return original_handle(self, body)

    mp = pytest.MonkeyPatch()
    mp.setattr(botocore.httpchecksum.BaseChecksum, "handle", spy_handle)
    try:
        data = pattern_bytes(size, seed=7)
        sink.put("once.bin", HashingStream(chunked(data)), size)
    finally:
        mp.undo()
    assert read_obj("once.bin") == data
    uploads = [(op, h, body) for op, h, body in seen if op in ("PutObject", "UploadPart")]
    assert len(uploads) == (1 if size < PART else 3)
    pieces = [data] if size < PART else [data[i : i + PART] for i in range(0, size, PART)]
    # parts go out concurrently, in any order: each request is matched with the piece it carries
    assert sorted(bytes(body) for _, _, body in uploads) == sorted(pieces)
    for op, headers, body in uploads:
        piece = next(p for p in pieces if p == body)
        lower = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}
        assert lower["x-amz-checksum-sha256"] == base64.b64encode(hashlib.sha256(piece).digest()).decode(), op
        assert lower["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD", op  # the signature does not hash the body
        assert "x-amz-trailer" not in lower and "aws-chunked" not in lower.get("content-encoding", ""), op
        assert "content-md5" not in lower, op
        # the buffer itself, not a BytesIO botocore would send 16 KiB at a time after a 100-continue
        assert isinstance(body, bytearray) and body == piece and "expect" not in lower, op
    assert hashed == [], f"botocore hashed the body again: {hashed}"
