"""What S3 confirms is compared with what portshift sent, and a mismatch fails the upload.

moto never verifies checksums (it echoes the x-amz-checksum-sha256 header, or computes the
SHA-256 of what it received when the header is missing). A TLS-terminating proxy between the
sink and moto therefore damages requests in flight: corrupting one byte of one part and dropping
the checksum header makes moto report the SHA-256 of the damaged bytes, as a verifying store
would; altering the header makes it echo a value that is not ours. Either way the sink must fail,
abort, and leave nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from portshift.errors import AuthError, IntegrityError
from portshift.hashing import HashingStream
from portshift.testing import chunked, pattern_bytes

PART = 5 * 1024 * 1024


def _is_part(req: Any, number: int) -> bool:
    return req.method == "PUT" and f"partNumber={number}" in req.target


def _completes(proxy: Any) -> list[Any]:
    return [r for r in proxy.seen if r.method == "POST" and "uploadId=" in r.target]


def _aborts(proxy: Any) -> list[Any]:
    return [r for r in proxy.seen if r.method == "DELETE" and "uploadId=" in r.target]


def test_a_part_corrupted_in_flight_fails_the_upload_and_aborts(
    make_sink: Callable[..., Any], tls_proxy: Any, read_obj: Callable[[str], bytes | None], pending: Callable[[], list[Any]]
) -> None:
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(flip_body_byte=12345, drop_headers=("x-amz-checksum-sha256",)) if _is_part(req, 2) else None
    )
    sink = make_sink(endpoint_url=tls_proxy.url)
    data = pattern_bytes(3 * PART + 10)
    with pytest.raises(IntegrityError) as e:
        sink.put("corrupt.bin", HashingStream(chunked(data)), len(data))
    part2 = base64.b64encode(hashlib.sha256(data[PART : 2 * PART]).digest()).decode()
    assert "upload part 2" in str(e.value) and f"portshift sent {part2}" in str(e.value)
    assert any(_is_part(r, 2) and r.body_len == PART for r in tls_proxy.seen), "the corrupted part reached moto"
    assert _completes(tls_proxy) == [], "a corrupted upload must never be completed"
    assert len(_aborts(tls_proxy)) >= 1  # botocore may retry an abort whose answer was lost
    assert read_obj("corrupt.bin") is None
    assert pending() == []


def test_a_checksum_header_altered_in_flight_fails_the_upload(
    make_sink: Callable[..., Any], tls_proxy: Any, read_obj: Callable[[str], bytes | None], pending: Callable[[], list[Any]]
) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode()
    tls_proxy.rule = lambda req: tls_proxy.Action(set_headers={"x-amz-checksum-sha256": wrong}) if _is_part(req, 3) else None
    sink = make_sink(endpoint_url=tls_proxy.url, max_concurrency=3)
    data = pattern_bytes(4 * PART)
    with pytest.raises(IntegrityError) as e:
        sink.put("altered.bin", HashingStream(chunked(data)), len(data))
    assert "upload part 3" in str(e.value) and f"S3 confirmed SHA-256 {wrong}" in str(e.value)
    assert _completes(tls_proxy) == []
    assert read_obj("altered.bin") is None
    assert pending() == []


def test_a_single_put_corrupted_in_flight_fails(
    make_sink: Callable[..., Any], tls_proxy: Any, read_obj: Callable[[str], bytes | None]
) -> None:
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(flip_body_byte=7, drop_headers=("x-amz-checksum-sha256",)) if req.method == "PUT" else None
    )
    sink = make_sink(endpoint_url=tls_proxy.url)
    data = pattern_bytes(2000)
    with pytest.raises(IntegrityError) as e:
        sink.put("single.bin", HashingStream(chunked(data)), len(data))
    assert "not recorded as exported" in str(e.value)
    # A verifying store (S3) refuses such a PUT with BadDigest; moto stored the damaged bytes.
    # The sink cannot delete (write-only), so the object is there, but put() failed: the core
    # never records it as done and it never reaches the manifest; a retry overwrites it.
    stored = read_obj("single.bin")
    assert stored is not None and stored != data


def test_the_untouched_path_through_the_proxy_succeeds(
    make_sink: Callable[..., Any], tls_proxy: Any, read_obj: Callable[[str], bytes | None]
) -> None:
    """Control for the tests above: the proxy itself does not break uploads."""
    sink = make_sink(endpoint_url=tls_proxy.url)
    data = pattern_bytes(2 * PART + 3)
    result = sink.put("fine.bin", HashingStream(chunked(data)), len(data))
    assert result.size == len(data) and read_obj("fine.bin") == data
    assert len(_completes(tls_proxy)) == 1


def test_the_sink_only_writes(make_sink: Callable[..., Any], tls_proxy: Any) -> None:
    """Every request of a single put, a multipart upload and an aborted one is a write."""
    tls_proxy.rule = lambda req: tls_proxy.Action(close=True) if "abortme" in req.target and _is_part(req, 2) else None
    sink = make_sink(endpoint_url=tls_proxy.url, expected_bucket_owner="123456789012", check_write=True)
    sink.check()
    sink.put("small.bin", HashingStream(iter([b"x" * 100])), 100)
    sink.put("big.bin", HashingStream(chunked(pattern_bytes(PART + 5))), PART + 5)
    with pytest.raises(Exception):  # noqa: B017
        sink.put("abortme.bin", HashingStream(chunked(pattern_bytes(2 * PART))), 2 * PART)
    kinds = set()
    for r in tls_proxy.seen:
        path, _, query = r.target.partition("?")
        params = {p.split("=", 1)[0] for p in query.split("&") if p}
        if r.method == "PUT" and params <= {"partNumber", "uploadId", "x-id"}:
            kinds.add("put object/part")
        elif r.method == "POST" and (params <= {"uploads", "x-id"} or params <= {"uploadId", "x-id"}):
            kinds.add("create/complete multipart")
        elif r.method == "DELETE" and "uploadId" in params:
            kinds.add("abort multipart")
        else:
            raise AssertionError(f"not a write: {r.method} {r.target}")
        assert r.headers.get("x-amz-expected-bucket-owner") == "123456789012", r.target
    assert kinds == {"put object/part", "create/complete multipart", "abort multipart"}


@pytest.mark.parametrize("size", [100, 2 * PART])
def test_a_region_redirect_is_refused_not_followed(
    make_sink: Callable[..., Any], tls_proxy: Any, pending: Callable[[], list[Any]], size: int
) -> None:
    tls_proxy.rule = lambda req: tls_proxy.Action(
        respond=tls_proxy.error_response(
            301, "Moved Permanently", "PermanentRedirect", headers={"x-amz-bucket-region": "eu-west-1"}
        )
    )
    sink = make_sink(endpoint_url=tls_proxy.url, allowed_regions=["us-*"])
    with pytest.raises(AuthError) as e:  # stops the job
        sink.put("moved.bin", HashingStream(chunked(pattern_bytes(size))), size)
    assert "eu-west-1" in str(e.value) and "does not follow region redirects" in str(e.value)
    assert len(tls_proxy.seen) == 1, "botocore must not retry in the bucket's real region"
    assert pending() == []


def test_a_wrong_region_signature_answer_is_refused(make_sink: Callable[..., Any], tls_proxy: Any) -> None:
    tls_proxy.rule = lambda req: tls_proxy.Action(
        respond=tls_proxy.error_response(
            400, "Bad Request", "AuthorizationHeaderMalformed", extra_xml="<Region>ap-south-1</Region>"
        )
    )
    sink = make_sink(endpoint_url=tls_proxy.url)
    with pytest.raises(AuthError) as e:
        sink.put("sig.bin", HashingStream(iter([b"abc"])), 3)
    assert "ap-south-1" in str(e.value)
    assert len(tls_proxy.seen) == 1


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch", "ExpiredToken"])
def test_rejected_credentials_stop_the_job_and_abort(
    make_sink: Callable[..., Any], tls_proxy: Any, pending: Callable[[], list[Any]], code: str
) -> None:
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(respond=tls_proxy.error_response(403, "Forbidden", code)) if _is_part(req, 2) else None
    )
    sink = make_sink(endpoint_url=tls_proxy.url)
    data = pattern_bytes(2 * PART + 1)
    with pytest.raises(AuthError) as e:
        sink.put("denied.bin", HashingStream(chunked(data)), len(data))
    text = str(e.value)
    assert text.startswith("upload part 2:") and code in text and "(HTTP 403)" in text and "/denied.bin" in text
    assert e.value.retryable is False
    assert len(_aborts(tls_proxy)) >= 1  # botocore may retry an abort whose answer was lost
    assert pending() == []
