"""Logging: SDK loggers pinned to WARNING whatever --log-level says; every registered secret
scrubbed from the final text (message, arguments, extras, exception) in text and JSON formats;
a broken logging call never prints its raw arguments."""

from __future__ import annotations

import base64
import io
import json
import logging
import urllib.parse

import pytest

from portshift.logs import PINNED_LOGGERS, configure_logging
from portshift.redact import REDACTED
from portshift.secrets import Secret, register_mask

from .conftest import make_canary

pytestmark = pytest.mark.usefixtures("restore_logging")


def _setup(fmt: str = "text", level: str = "debug") -> io.StringIO:
    out = io.StringIO()
    configure_logging(level, fmt, stream=out)
    return out


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_sdk_loggers_are_pinned_to_warning(level: str) -> None:
    _setup(level=level)
    assert logging.getLogger().level == getattr(logging, level.upper())
    for name in ("httpx", "httpcore", "urllib3", "botocore", "boto3", "s3transfer", "google", "google.auth", "azure"):
        assert name in PINNED_LOGGERS
        assert logging.getLogger(name).level == logging.WARNING, name
    for child in (
        "httpx._client",
        "httpcore.http11",
        "urllib3.connectionpool",
        "botocore.endpoint",
        "botocore.auth",
        "google.auth.transport.requests",
        "google.resumable_media._upload",
        "azure.core.pipeline.policies.http_logging_policy",
    ):
        assert logging.getLogger(child).getEffectiveLevel() == logging.WARNING, child


def test_a_debug_or_info_record_from_an_sdk_child_logger_is_dropped() -> None:
    out = _setup("text", "debug")
    logging.getLogger("httpx._client").debug("DEBUG-LINE https://h/x?sig=abc")
    logging.getLogger("httpx").info("HTTP Request: GET https://h/x?sig=abc")
    logging.getLogger("botocore.endpoint").debug("Sending http request: X-Amz-Security-Token")
    logging.getLogger("google.auth.transport.requests").debug("Making request", extra={"httpRequest": {}})
    logging.getLogger("urllib3.connectionpool").debug('"GET /c/b?sig=x HTTP/1.1" 200')
    logging.getLogger("portshift.run").debug("our own debug line")
    logging.getLogger("httpx").warning("a warning still shows")
    text = out.getvalue()
    assert "our own debug line" in text and "a warning still shows" in text
    for dropped in ("DEBUG-LINE", "HTTP Request", "Security-Token", "Making request", "GET /c/b"):
        assert dropped not in text


def test_configure_logging_twice_installs_one_handler() -> None:
    _setup()
    out = _setup()
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "portshift"]
    assert len(ours) == 1
    logging.getLogger("portshift.x").info("once")
    assert out.getvalue().count("once") == 1


def _forms(value: str) -> list[str]:
    return [
        value,
        urllib.parse.quote(value, safe=""),
        json.dumps(value)[1:-1],
        base64.b64encode(value.encode()).decode().rstrip("="),
    ]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_scrubbed_everywhere_in_a_record(fmt: str) -> None:
    out = _setup(fmt)
    canary = make_canary("log") + "/+=x"
    Secret(canary, "token")
    assertion = make_canary("jwt")
    register_mask(assertion)  # a value derived from a secret, registered by a plugin
    log = logging.getLogger("portshift.test.logs")

    log.info(f"in the message {canary}")
    log.info("in the args %s and %r", canary, {"nested": [canary]})
    log.info("url-encoded %s", f"https://h/x?sig={urllib.parse.quote(canary, safe='')}")
    log.info("base64 %s", base64.b64encode(canary.encode()).decode())
    # the google-auth shape: the signed JWT grant in an extra dict (research L7)
    log.warning("Making request", extra={"httpRequest": {"method": "POST", "body": {"assertion": assertion}}})
    log.warning("extra secret", extra={"token_value": canary, "as_secret": Secret(canary)})
    try:
        raise RuntimeError(f"the server said no to {canary}")
    except RuntimeError:
        log.exception("with a traceback")
    log.error("stack", stack_info=True, extra={"k": canary})

    text = out.getvalue()
    for form in _forms(canary) + _forms(assertion):
        assert form not in text, (form, text)
    # the records were written (a dropped record would pass the check above trivially)
    for marker in (
        "in the message",
        "in the args",
        "url-encoded",
        "base64",
        "Making request",
        "extra secret",
        "with a traceback",
        "RuntimeError",
        "stack",
    ):
        assert marker in text, marker
    assert text.count(REDACTED) >= 9
    if fmt == "json":
        docs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert len(docs) == 8
        making = next(d for d in docs if d["message"] == "Making request")
        assert making["httpRequest"]["body"]["assertion"] == REDACTED
        assert "RuntimeError" in next(d for d in docs if d["message"] == "with a traceback")["exception"]
        assert {d["level"] for d in docs} == {"info", "warning", "error"}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_broken_logging_call_never_prints_its_raw_arguments(fmt: str, capfd: pytest.CaptureFixture[str]) -> None:
    out = _setup(fmt)
    canary = make_canary("args")  # NOT registered: only the broken call could leak it
    log = logging.getLogger("portshift.test.broken")
    log.info("two placeholders %s %s", canary)
    log.info("a bad placeholder %d", canary)
    log.info("marker after the broken calls")
    text = out.getvalue()
    captured = capfd.readouterr()
    for where in (text, captured.out, captured.err):
        assert canary not in where
        assert "--- Logging error ---" not in where
    assert "two placeholders" in text and "a bad placeholder" in text and "marker after" in text


def test_a_broken_logging_call_through_a_sdk_logger_at_warning(capfd: pytest.CaptureFixture[str]) -> None:
    out = _setup("text", "info")
    canary = make_canary("sdk")
    logging.getLogger("botocore.credentials").warning("refreshing %s %s %s", canary)
    captured = capfd.readouterr()
    assert canary not in out.getvalue() + captured.out + captured.err


def test_json_lines_are_one_document_each() -> None:
    out = _setup("json")
    logging.getLogger("portshift.x").info("multi\nline\rmessage", extra={"n": 3, "obj": object()})
    lines = [line for line in out.getvalue().splitlines() if line]
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["message"] == "multi\nline\rmessage" and doc["n"] == 3 and doc["logger"] == "portshift.x"


def test_scrubbing_happens_for_records_of_any_logger() -> None:
    """The scrubber is on the handler: a library logger that is not pinned and has its own level
    still goes through it."""
    out = _setup("text", "debug")
    canary = make_canary("lib")
    register_mask(canary)
    lib = logging.getLogger("some.thirdparty.lib")
    lib.setLevel(logging.DEBUG)
    lib.debug("token=%s", canary)
    text = out.getvalue()
    assert "token=" + REDACTED in text and canary not in text
