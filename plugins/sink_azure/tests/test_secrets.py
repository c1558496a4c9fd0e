"""The SAS never leaves process memory: not in logs (any logger, DEBUG), errors, reprs or client URLs."""

from __future__ import annotations

import base64
import logging
import pickle
import urllib.parse
from collections.abc import Callable

import pytest
from portshift_sink_azure import AzureSink
from portshift_sink_azure.transport import PINNED_LOGGERS

from portshift.errors import AuthError
from portshift.secrets import Secret
from portshift.testing import pattern_bytes, put_bytes, raised_by, renderings

from .conftest import OTHER_CONTAINER, Azurite, MiB, unique


def forms(token: str) -> list[str]:
    """The token and its signature in raw, URL-decoded, URL-encoded and base64 forms."""
    sig = urllib.parse.parse_qs(token)["sig"][0]  # decoded
    raw_sig = next(p for p in token.split("&") if p.startswith("sig=")).split("=", 1)[1]
    out = {token, sig, raw_sig, urllib.parse.quote(sig, safe=""), base64.b64encode(token.encode()).decode()[:40]}
    return sorted(out)


def assert_clean(text: str, token: str, what: str) -> None:
    for form in forms(token):
        assert form not in text, f"the SAS (or its signature) appears in {what}"
    assert "sig=" not in text, f"a sig= parameter appears in {what}"


def render(e: BaseException) -> list[str]:
    return renderings(e, with_locals=True)


capture = raised_by


def test_sas_absent_from_debug_logs_errors_and_urls(
    azurite: Azurite, make_sink: Callable[..., AzureSink], caplog: pytest.LogCaptureFixture
) -> None:
    token = azurite.sas(permission="rcw")  # one extra permission: a warning is logged
    wrong = azurite.sas(OTHER_CONTAINER)  # valid, but for another container
    caplog.set_level(logging.DEBUG)  # the root logger and its handler at DEBUG
    good = make_sink(sas=Secret(token, "sas"), block_size=MiB)
    bad = make_sink(sas=Secret(wrong, "sas"), block_size=MiB)

    for size in (10, 3 * MiB + 1):
        put_bytes(good, unique("ok.bin"), pattern_bytes(size), size)
    good.check()
    # Raised through a helper, so that the rendered tracebacks (with locals) start outside this
    # test function, whose own locals hold the tokens.
    failures = [
        capture(lambda: put_bytes(bad, unique("refused.bin"), pattern_bytes(10), 10)),
        capture(lambda: put_bytes(bad, unique("refused.bin"), pattern_bytes(3 * MiB + 1), 3 * MiB + 1)),
        capture(bad.check),
    ]

    # Loggers that would print request lines stay pinned above DEBUG/INFO.
    for name in PINNED_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
    names = {r.name for r in caplog.records}
    assert "portshift.sink.azure" in names, "the sink's own warnings/debug lines were not captured"
    assert any("read (r)" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.DEBUG and "stored https://" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        text = " ".join([record.getMessage(), repr(record.args), str(record.exc_text or ""), repr(vars(record))])
        assert_clean(text, token, f"log record {record.name}")
        assert_clean(text, wrong, f"log record {record.name}")
    assert_clean(caplog.text, token, "captured log text")

    for err in failures:
        assert isinstance(err, AuthError)
        assert err.__cause__ is None and err.__suppress_context__
        assert err.status == 403 and err.location and "?" not in err.location
        for text in render(err):
            assert_clean(text, wrong, "an exception")

    for s in (good, bad):
        for text in (
            repr(s),
            s.location(),
            repr(s.options),
            s.options.model_dump_json(),
            s._service.url,
            s._container.url,
            s._container.get_blob_client("a/b.bin").url,
        ):
            assert_clean(text, token, "a repr/location/client URL")
            assert_clean(text, wrong, "a repr/location/client URL")
    with pytest.raises(TypeError):
        pickle.dumps(good.options)


def test_auth_error_names_operation_status_code_location(azurite: Azurite, make_sink: Callable[..., AzureSink]) -> None:
    sink = make_sink(sas=Secret(azurite.sas(OTHER_CONTAINER), "sas"))
    key = unique("x.bin")
    with pytest.raises(AuthError) as e:
        put_bytes(sink, key, b"abc", 3)
    err = e.value
    assert err.operation == "put blob" and err.status == 403 and not err.retryable
    assert err.location == f"{azurite.url}/exports/tests/{key}"
    assert "AuthorizationFailure" in str(err) or "AuthenticationFailed" in str(err)


def test_permission_mismatch_is_an_auth_error_with_a_hint(
    azurite: Azurite, make_sink: Callable[..., AzureSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sink = make_sink(sas=Secret(azurite.sas(permission="c"), "sas"), block_size=MiB)
    assert any("not write (w)" in r.getMessage() for r in caplog.records)  # warned at config time
    with pytest.raises(AuthError) as e:
        put_bytes(sink, unique("blocks.bin"), pattern_bytes(2 * MiB), 2 * MiB)
    assert e.value.operation == "put block" and e.value.status == 403
    assert "AuthorizationPermissionMismatch" in str(e.value) and "sp=cw" in str(e.value)
