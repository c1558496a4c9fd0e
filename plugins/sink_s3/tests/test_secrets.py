"""No credential in logs, exception text, tracebacks (with locals) or results."""

from __future__ import annotations

import base64
import logging
import traceback
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from portshift.errors import PortshiftError
from portshift.hashing import HashingStream
from portshift.testing import chunked, pattern_bytes

PART = 5 * 1024 * 1024


def forms(value: str) -> set[str]:
    return {value, urllib.parse.quote(value, safe=""), base64.b64encode(value.encode()).decode().rstrip("=")}


def leaks(text: str, canaries: tuple[str, ...]) -> list[str]:
    return [f for c in canaries for f in forms(c) if f in text]


def test_a_control_botocore_debug_does_carry_the_session_token(
    caplog: pytest.LogCaptureFixture, moto: Any, certs: Any, canaries: tuple[str, str, str]
) -> None:
    """Proves the log test below can fail: botocore's own DEBUG output holds the token."""
    import boto3

    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore").setLevel(logging.DEBUG)
    try:
        boto3.session.Session().client(
            "s3",
            endpoint_url=moto.url,
            region_name="us-east-1",
            verify=str(certs.ca_pem),
            aws_access_key_id=canaries[0],
            aws_secret_access_key=canaries[1],
            aws_session_token=canaries[2],
        ).list_buckets()
    finally:
        logging.getLogger("botocore").setLevel(logging.WARNING)
    assert canaries[2] in caplog.text


def test_botocore_debug_never_reaches_the_logs(
    caplog: pytest.LogCaptureFixture, make_sink: Callable[..., Any], tls_proxy: Any, canaries: tuple[str, str, str]
) -> None:
    caplog.set_level(logging.DEBUG)  # root at DEBUG, as with --log-level debug
    sink = make_sink()
    sink.put("log/small.bin", HashingStream(iter([b"abc"])), 3)
    sink.put("log/big.bin", HashingStream(chunked(pattern_bytes(PART + 1))), PART + 1)
    with pytest.raises(PortshiftError):
        make_sink(bucket="no-such-bucket-for-logs").put("x", HashingStream(iter([b"x"])), 1)
    tls_proxy.rule = lambda req: tls_proxy.Action(respond=tls_proxy.error_response(403, "Forbidden", "AccessDenied"))
    with pytest.raises(PortshiftError):
        make_sink(endpoint_url=tls_proxy.url).put("denied", HashingStream(chunked(pattern_bytes(PART + 1))), None)
    text = caplog.text + "".join(str(r.args) + str(r.__dict__) for r in caplog.records)
    assert leaks(text, canaries) == []
    assert not [
        r
        for r in caplog.records
        if r.name.split(".")[0] in {"botocore", "boto3", "urllib3", "s3transfer"} and r.levelno < logging.WARNING
    ]


@pytest.mark.parametrize("case", ["no-such-bucket", "access-denied", "connection-refused", "untrusted", "part-denied"])
def test_errors_carry_no_credential_even_with_locals(
    case: str, make_sink: Callable[..., Any], tls_proxy: Any, canaries: tuple[str, str, str]
) -> None:
    import socket

    if case == "no-such-bucket":
        sink, size = make_sink(bucket="no-such-bucket-errors"), 10
    elif case == "access-denied":
        tls_proxy.rule = lambda req: tls_proxy.Action(respond=tls_proxy.error_response(403, "Forbidden", "AccessDenied"))
        sink, size = make_sink(endpoint_url=tls_proxy.url), 10
    elif case == "part-denied":
        tls_proxy.rule = lambda req: (
            tls_proxy.Action(
                respond=tls_proxy.error_response(
                    403, "Forbidden", "SignatureDoesNotMatch", extra_xml=f"<StringToSign>{canaries[2]}</StringToSign>"
                )
            )
            if "partNumber=2" in req.target
            else None
        )
        sink, size = make_sink(endpoint_url=tls_proxy.url), PART + 1
    elif case == "connection-refused":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sink, size = make_sink(endpoint_url=f"https://127.0.0.1:{port}"), 10
    else:
        sink, size = make_sink(endpoint_url=tls_proxy.url, ca_bundle=None), 10
    with pytest.raises(PortshiftError) as e:
        sink.put("err.bin", HashingStream(chunked(pattern_bytes(size))), size)
    err = e.value
    err.with_traceback(err.__traceback__.tb_next)  # from the sink down (this test's own locals hold the canaries)
    assert err.__cause__ is None and err.__suppress_context__, "SDK exceptions must not be chained"
    rendered = "\n".join(
        [
            str(err),
            repr(err),
            "".join(traceback.format_exception(err)),
            "".join(traceback.TracebackException.from_exception(err, capture_locals=True).format()),
        ]
    )
    assert "portshift_sink_s3" in rendered and "self = " in rendered, "the sink's frames and locals are rendered"
    leaked = [line.strip()[:200] for line in rendered.splitlines() if leaks(line, canaries)]
    assert leaked == []
    assert "AWSPreparedRequest" not in rendered and "X-Amz-Security-Token" not in rendered


def test_results_and_location_carry_no_credential(make_sink: Callable[..., Any], canaries: tuple[str, str, str]) -> None:
    sink = make_sink()
    result = sink.put("r.bin", HashingStream(iter([b"abc"])), 3)
    assert leaks(repr(result) + sink.location() + repr(sink.options) + sink.options.model_dump_json(), canaries) == []


def test_chain_credentials_are_registered_with_the_scrubber(
    make_sink: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, read_obj: Callable[[str], bytes | None]
) -> None:
    from portshift.redact import scrub

    token = "CANARYCHAINTOKEN4242"
    for name in ("PORTSHIFT_AWS_ACCESS_KEY_ID", "PORTSHIFT_AWS_SECRET_ACCESS_KEY", "PORTSHIFT_AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAIN00000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "CANARYchainsecret/xyz")
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    sink = make_sink(credential_chain=True)
    sink.put("chain.bin", HashingStream(iter([b"chain"])), 5)
    assert read_obj("chain.bin") == b"chain"
    assert token not in scrub(f"t={token}") and "CANARYchainsecret/xyz" not in scrub("CANARYchainsecret/xyz")
