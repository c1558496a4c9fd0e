"""Options: validated before any connection; a bad key never echoes its content."""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any

import pytest
from portshift_sink_gcs import GcsOptions, GcsSink

from portshift import plugins
from portshift.config import build_options
from portshift.errors import ConfigError
from portshift.secrets import Secret

from .conftest import CanaryKey, PlainListener, make_canary_key

BASE = {"bucket": "exports", "anonymous": True, "api_endpoint": "https://127.0.0.1:9"}


def opts(**kw: Any) -> GcsOptions:
    data = {**BASE, **kw}
    return build_options(GcsOptions, data, "sink")  # type: ignore[return-value]


def test_registered_as_gcs_sink_and_reader() -> None:
    assert plugins.sinks().get("gcs") is GcsSink
    assert plugins.readers().get("gcs").__name__ == "GcsReader"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (256 * 1024, 256 * 1024),
        ("8MiB", 8 * 1024 * 1024),
        ("512 KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("16M", 16 * 1024 * 1024),  # the same forms as every portshift size
        ("8 MiB", 8 * 1024 * 1024),
    ],
)
def test_chunk_size_accepts_multiples_of_256_kib(value: Any, expected: int) -> None:
    assert opts(chunk_size=value).chunk_size == expected


def test_chunk_size_default_is_8_mib() -> None:
    assert opts().chunk_size == 8 * 1024 * 1024


@pytest.mark.parametrize("value", [0, 1000, 256 * 1024 + 1, "1MB", "3 GiB", "lots", True, -262144])
def test_chunk_size_rejects_other_values(value: Any) -> None:
    with pytest.raises(ConfigError) as e:
        opts(chunk_size=value)
    assert "chunk_size" in str(e.value)


def test_plain_http_endpoint_is_refused_before_any_connection(plain_listener: PlainListener) -> None:
    with pytest.raises(ConfigError) as e:
        opts(api_endpoint=plain_listener.url)
    assert "https" in str(e.value)
    assert plain_listener.connections == 0


@pytest.mark.parametrize("endpoint", ["https://storage.googleapis.com/storage/v1", "https://h/x?a=b", "ftp://x"])
def test_endpoint_is_scheme_and_host_only(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        opts(api_endpoint=endpoint)


@pytest.mark.parametrize(
    "endpoint",
    ["https://storage.googleapis.com", "https://localhost:4443", "https://private.googleapis.com", "https://10.0.0.5:443"],
)
def test_anonymous_is_refused_unless_the_endpoint_is_a_loopback_ip(endpoint: str) -> None:
    with pytest.raises(ConfigError) as e:
        opts(api_endpoint=endpoint)
    assert "anonymous" in str(e.value) and "loopback" in str(e.value)


def test_anonymous_accepts_loopback_ips() -> None:
    assert opts(api_endpoint="https://127.0.0.2:4443").anonymous
    assert opts(api_endpoint="https://[::1]:4443").anonymous


def test_credentials_are_required_and_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTSHIFT_GCS_KEY", raising=False)
    with pytest.raises(ConfigError) as e:
        build_options(GcsOptions, {"bucket": "exports"}, "sink")
    assert "PORTSHIFT_GCS_KEY" in str(e.value) and "application_default_credentials" in str(e.value)
    with pytest.raises(ConfigError) as e:
        opts(application_default_credentials=True)
    assert "choose one" in str(e.value)


def test_key_in_the_job_file_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        build_options(GcsOptions, {"bucket": "exports", "key": '{"type": "service_account"}'}, "sink")
    assert "never read from the job file" in str(e.value)


@pytest.mark.parametrize("name", ["ab", "Exports", "gs://exports", "-x-", "goog-bucket", "a..b"])
def test_bucket_names(name: str) -> None:
    with pytest.raises(ConfigError):
        opts(bucket=name)


@pytest.mark.parametrize("kms", ["key", "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"])
def test_kms_key_name_shape(kms: str) -> None:
    with pytest.raises(ConfigError):
        opts(kms_key_name=kms)


def test_prefix_normalised_and_checked() -> None:
    assert opts(prefix="/a/b/").prefix == "a/b"
    for bad in ("a//b", "../x", "a/./b", "a\\b", "a\nb"):
        with pytest.raises(ConfigError):
            opts(prefix=bad)


def test_storage_class_values() -> None:
    assert opts(storage_class="COLDLINE").storage_class == "COLDLINE"
    with pytest.raises(ConfigError):
        opts(storage_class="GLACIER")


# --- the key: parsed in memory, errors never echo it ----------------------------------------------


def _caught(fn: Any) -> ConfigError:
    # a frame that holds no key: the rendered traceback (with locals) starts here
    try:
        fn()
    except ConfigError as e:
        return e
    raise AssertionError("expected a ConfigError")


def key_error(value: str, monkeypatch: pytest.MonkeyPatch) -> ConfigError:
    monkeypatch.setenv("PORTSHIFT_GCS_KEY", value)
    return _caught(lambda: build_options(GcsOptions, {"bucket": "exports"}, "sink"))


def all_text(e: BaseException) -> str:
    return "\n".join(
        [
            str(e),
            repr(e),
            "".join(traceback.format_exception(type(e), e, e.__traceback__)),
            "".join(traceback.TracebackException.from_exception(e, capture_locals=True).format()),
        ]
    )


@pytest.fixture
def key() -> CanaryKey:
    return make_canary_key("https://127.0.0.1:9/token")


def test_key_that_is_not_json_is_a_config_error_without_content(key: CanaryKey, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = key.json[:-40]  # truncated JSON still holding the private key
    err = key_error(broken, monkeypatch)
    assert "not a JSON document" in str(err) and "line 1" in str(err)
    assert err.__cause__ is None
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None:
        chain.append(e)
        e = e.__context__
    assert not any(isinstance(x, json.JSONDecodeError) for x in chain), "the parser's error (with .doc) travels along"
    text = all_text(err) + "".join(repr(x) + str(x) + repr(getattr(x, "errors", lambda: "")()) for x in chain)
    for form in key.forms():
        assert form not in text


@pytest.mark.parametrize("field", ["client_email", "private_key", "token_uri", "type"])
def test_incomplete_key_names_the_missing_field_only(key: CanaryKey, field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    info = dict(key.info)
    del info[field]
    err = key_error(json.dumps(info), monkeypatch)
    assert (field in str(err)) or ("service_account" in str(err))
    for form in key.forms():
        assert form not in all_text(err)


def test_key_with_plain_http_token_uri_is_refused(monkeypatch: pytest.MonkeyPatch, plain_listener: PlainListener) -> None:
    key = make_canary_key(plain_listener.url + "/token")
    err = key_error(key.json, monkeypatch)
    assert "token_uri" in str(err) and "https" in str(err)
    assert plain_listener.connections == 0


def test_key_with_unreadable_private_key(key: CanaryKey, monkeypatch: pytest.MonkeyPatch) -> None:
    info = dict(key.info)
    info["private_key"] = key.private_pem.replace("A", "*", 30)
    monkeypatch.setenv("PORTSHIFT_GCS_KEY", json.dumps(info))
    options = build_options(GcsOptions, {"bucket": "exports"}, "sink")
    err = _caught(lambda: GcsSink(options))  # type: ignore[arg-type]
    assert "private_key cannot be read" in str(err)
    assert err.__context__ is None
    text = all_text(err)
    for line in key.private_pem.splitlines()[2:-2]:
        assert line not in text


def test_key_file_is_read_and_masked(key: CanaryKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTSHIFT_GCS_KEY", raising=False)
    path = tmp_path / "key.json"
    path.write_text(key.json + "\n")
    options = build_options(GcsOptions, {"bucket": "exports", "key_file": str(path)}, "sink")
    assert isinstance(options.key, Secret)  # type: ignore[attr-defined]
    for text in (repr(options), options.model_dump_json(), str(options.model_dump())):
        for form in key.forms():
            assert form not in text
    with pytest.raises(ConfigError) as e:
        build_options(GcsOptions, {"bucket": "exports", "key_file": str(tmp_path / "missing.json")}, "sink")
    assert "does not exist" in str(e.value)
