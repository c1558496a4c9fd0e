"""Application Default Credentials: resolved by google.auth.default on portshift's transport."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from portshift_sink_gcs import GcsSink
from portshift_sink_gcs.transport import build_session

from portshift.errors import ConfigError
from portshift.testing import pattern_bytes, put_bytes

from .conftest import CHUNK, CanaryKey, Certs, PlainListener, Server, TokenServer, make_options, unique


@pytest.fixture
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, plain_listener: PlainListener) -> None:
    """No gcloud files, no GCE: and should anything probe the metadata server, it is pointed at
    a loopback listener (which must then see nothing: only the real metadata host is allowed)."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{plain_listener.port}")
    monkeypatch.setenv("GCE_METADATA_IP", f"127.0.0.1:{plain_listener.port}")


def test_adc_from_google_application_credentials(
    emulator: Server,
    certs: Certs,
    token_server: TokenServer,
    canary: CanaryKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_ambient_credentials: None,
    make_sink: Callable[..., GcsSink],
    plain_listener: PlainListener,
) -> None:
    path = tmp_path / "adc.json"
    path.write_text(canary.json)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    n = len(token_server.assertions)
    sink = make_sink(application_default_credentials=True)
    for size in (5, 2 * CHUNK + 5):
        key = unique()
        put_bytes(sink, key, pattern_bytes(size), size)
        assert emulator.admin.download(sink.object_name(key)) == pattern_bytes(size)
    assert len(token_server.assertions) == n + 1, "the ADC key was exchanged at its token_uri, once"
    assert sink._session.credentials.token == token_server.issued[-1]
    assert plain_listener.connections == 0


def test_no_adc_is_a_config_error(
    emulator: Server, certs: Certs, no_ambient_credentials: None, plain_listener: PlainListener
) -> None:
    with pytest.raises(ConfigError) as e:
        GcsSink(make_options(emulator, certs.ca_pem, application_default_credentials=True))
    assert "Application Default Credentials" in str(e.value)
    assert plain_listener.connections == 0


def test_metadata_server_exception_allows_only_the_metadata_host(plain_listener: PlainListener) -> None:
    session = build_session(None, allow_metadata_server=True)
    with pytest.raises(Exception, match="plain HTTP"):
        session.get(plain_listener.url + "/computeMetadata/v1/", timeout=2)
    assert plain_listener.connections == 0
