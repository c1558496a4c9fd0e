"""The service-account key path, end to end in-process: a canary key (a real RSA key generated
here, private_key_id CANARYKEYID…) is exchanged for an access token at a loopback HTTPS token
endpoint that checks the JWT's signature, and the canary — raw, base64, the signed assertion,
the access token, the resumable session URIs — appears nowhere: not in any log record at DEBUG
(every logger, extras rendered, unscrubbed), not in exceptions (tracebacks with locals), reprs,
options dumps or files."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from portshift_sink_gcs import GcsOptions, GcsReader, GcsSink
from portshift_sink_gcs.transport import PINNED_LOGGERS

from portshift.errors import AuthError, SinkError
from portshift.secrets import known_masks
from portshift.testing import pattern_bytes, put_bytes, raised_by, renderings

from .conftest import CHUNK, CanaryKey, Certs, Recorder, Server, TokenServer, key_secret, make_options, unique

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class ExtrasJSONFormatter(logging.Formatter):
    """Renders every record with all its extras (as a JSON log shipper would), unscrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"logger": record.name, "level": record.levelname, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STANDARD:
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=repr)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(ExtrasJSONFormatter())
        self.lines: list[str] = []
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.names.add(record.name)
        self.lines.append(self.format(record))


@pytest.fixture
def capture() -> Iterator[Capture]:
    """A DEBUG handler on the root logger, and google's loggers explicitly turned to DEBUG (as an
    application might): the sink must pin them back before anything is logged."""
    root = logging.getLogger()
    handler = Capture()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    saved = {n: logging.getLogger(n).level for n in ("google", "google.auth.transport.requests", "urllib3")}
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def forbidden(key: CanaryKey, tokens: TokenServer, extra: set[str]) -> set[str]:
    out = set(key.forms()) | set(extra)
    for assertion in tokens.assertions:
        out.add(assertion)
        out.update(part for part in assertion.split(".") if len(part) > 20)
    out.update(tokens.issued)
    return {f for f in out if f}


def assert_clean(text: str, bad: set[str], what: str) -> None:
    for form in bad:
        assert form not in text, f"a secret ({form[:14]}…) appears in {what}"


def render(e: BaseException) -> list[str]:
    return renderings(e, with_locals=True)


capture_error = raised_by


class AuthHeaders:
    """Sees the Authorization header of every request as it reaches the TLS adapter."""

    def __init__(self, session: Any) -> None:
        self.seen: list[str] = []
        adapter = session.get_adapter("https://x")
        original = adapter.send

        def send(request: Any, *args: Any, **kwargs: Any) -> Any:
            self.seen.append(str(request.headers.get("Authorization", "")))
            return original(request, *args, **kwargs)

        adapter.send = send


def test_canary_key_exchange_and_uploads_leak_nothing(
    emulator: Server,
    certs: Certs,
    token_server: TokenServer,
    canary: CanaryKey,
    capture: Capture,
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text(canary.json)
    before_files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    opts = GcsOptions.model_validate(
        {
            "bucket": "exports",
            "prefix": "secret-tests",
            "chunk_size": CHUNK,
            "api_endpoint": emulator.endpoint,
            "ca_bundle": str(certs.ca_pem),
            "key_file": str(key_file),
            "__section__": "sink",
        }
    )
    sink = GcsSink(opts)
    for name in PINNED_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
    auth = AuthHeaders(sink._session)
    rec = Recorder(sink)
    n_before = len(token_server.assertions)
    for size in (10, 3 * CHUNK + 1):
        result, _ = put_bytes(sink, unique("ok.bin"), pattern_bytes(size), size)
        assert result.size == size
    sink.check()
    wrong_bucket = GcsSink(make_options(emulator, certs.ca_pem, bucket="no-such-bucket", key=key_secret(canary)))
    failures = [capture_error(lambda: put_bytes(wrong_bucket, unique(), pattern_bytes(3 * CHUNK + 1), None))]

    # the JWT grant really went to the token endpoint, signed with the canary key, once
    assert len(token_server.assertions) == n_before + 2  # one per sink
    issued = token_server.issued[-2]
    assert sink._session.credentials.token == issued
    assert auth.seen and set(auth.seen) == {f"Bearer {issued}"}, "every GCS request carries the token"

    # what must never appear, and what must be registered with the scrubber
    bad = forbidden(canary, token_server, rec.session_uris())
    masks = known_masks()
    for value in (canary.key_id, issued, token_server.assertions[-1], *rec.session_uris()):
        assert value in masks, "a secret was not registered with the log scrubber"

    # logs: every record of every logger, with extras, unscrubbed
    assert "portshift.sink.gcs" in capture.names, "the sink's own debug lines were not captured"
    leaked_loggers = {n for n in capture.names if n.startswith(("google", "urllib3"))}
    assert not leaked_loggers, f"SDK loggers emitted below WARNING: {leaked_loggers}"
    for line in capture.lines:
        assert_clean(line, bad, "a log record")
        assert "assertion" not in line and "Making request" not in line

    # exceptions (rendered with locals), reprs, dumps
    for err in failures:
        assert isinstance(err, SinkError) and err.status == 404
        assert err.__cause__ is None and err.__suppress_context__
        for text in render(err):
            assert_clean(text, bad, "an exception")
    for text in (repr(sink), sink.location(), repr(opts), opts.model_dump_json(), str(opts.model_dump())):
        assert_clean(text, bad, "a repr/dump")
    with pytest.raises(TypeError):
        pickle.dumps(opts)

    # files: the key file is only read; nothing else was written here
    after_files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after_files == before_files
    sink.close()
    wrong_bucket.close()


def test_refused_credentials_stop_the_job_without_echoing_anything(
    emulator: Server, certs: Certs, token_server: TokenServer, canary: CanaryKey, capture: Capture
) -> None:
    token_server.refuse = True
    try:
        sink = GcsSink(make_options(emulator, certs.ca_pem, key=key_secret(canary)))
        errors = [
            capture_error(lambda: put_bytes(sink, unique(), b"abc", 3)),
            capture_error(lambda: put_bytes(sink, unique(), pattern_bytes(2 * CHUNK + 1), None)),
            capture_error(sink.check),
        ]
    finally:
        token_server.refuse = False
    bad = forbidden(canary, token_server, set())
    for err in errors:
        assert isinstance(err, AuthError), repr(err)
        assert err.operation == "get access token" and not err.retryable
        assert "invalid_grant" in str(err)
        assert err.__cause__ is None and err.__suppress_context__
        for text in render(err):
            assert_clean(text, bad, "an auth error")
    for line in capture.lines:
        assert_clean(line, bad, "a log record")
    sink.close()


def test_signature_from_another_key_is_refused(
    emulator: Server, certs: Certs, token_server: TokenServer, canary: CanaryKey
) -> None:
    """The token endpoint really checks the RS256 signature: a key it does not know is refused
    (so the passing tests above prove the grant was signed with the canary key)."""
    from .conftest import make_canary_key

    stranger = make_canary_key(token_server.token_uri)  # public half never given to the server
    sink = GcsSink(make_options(emulator, certs.ca_pem, key=key_secret(stranger)))
    with pytest.raises(AuthError) as e:
        put_bytes(sink, unique(), b"x", 1)
    assert "invalid_grant" in str(e.value)
    sink.close()


def test_reader_reads_back_with_the_key(
    emulator: Server, certs: Certs, token_server: TokenServer, canary: CanaryKey, capture: Capture
) -> None:
    """``portshift verify --store`` reader: google-cloud-storage on the same hardened session."""
    opts = make_options(emulator, certs.ca_pem, key=key_secret(canary), prefix="reader")
    sink = GcsSink(opts)
    data = pattern_bytes(3 * CHUNK + 3, seed=4)
    key = unique("r.bin")
    put_bytes(sink, key, data, len(data))
    reader = GcsReader(opts)
    assert b"".join(reader.open(key)) == data
    assert key in list(reader.list(key.split("/")[0] + "/"))
    with pytest.raises(FileNotFoundError):
        list(reader.open("missing/nothing.bin"))
    bad = forbidden(canary, token_server, set())
    for line in capture.lines:
        assert_clean(line, bad, "a log record")
    reader.close()
    sink.close()
