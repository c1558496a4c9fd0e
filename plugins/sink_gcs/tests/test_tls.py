"""TLS only, trust only from ca_bundle, no endpoint from the environment, no redirects."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
from google.oauth2.credentials import Credentials as TokenCredentials
from portshift_sink_gcs import GcsReader, GcsSink

from portshift.errors import FatalError, PortshiftError, SinkError
from portshift.testing import pattern_bytes, put_bytes

from .conftest import (
    CHUNK,
    CanaryKey,
    Certs,
    PlainListener,
    Server,
    TLSServer,
    TokenServer,
    key_secret,
    make_canary_key,
    make_options,
    server_context,
    unique,
)

HIJACK_ENV = ("STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY")
TRUST_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def test_environment_cannot_redirect_the_client_or_its_bearer_token(
    emulator: Server,
    certs: Certs,
    make_sink: Callable[..., GcsSink],
    plain_listener: PlainListener,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in HIJACK_ENV:
        monkeypatch.setenv(name, plain_listener.url)
    token = "CANARY-BEARER-gcs-access-token"
    sink = make_sink(_credentials=TokenCredentials(token=token))
    for size in (10, 2 * CHUNK + 1):
        key = unique()
        put_bytes(sink, key, pattern_bytes(size), size)
        assert emulator.admin.download(sink.object_name(key)) == pattern_bytes(size)
    sink.check()
    reader = GcsReader(make_options(emulator, certs.ca_pem), _credentials=TokenCredentials(token=token))
    assert reader.client._connection.API_BASE_URL == emulator.endpoint
    assert list(reader.list(""))
    reader.close()
    assert plain_listener.connections == 0, "a request went to the endpoint/proxy named by the environment"
    assert token.encode() not in plain_listener.received


def test_trust_comes_from_ca_bundle_never_from_the_environment(
    emulator: Server, certs: Certs, make_sink: Callable[..., GcsSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment names the CA that signed the server; without ca_bundle the sink still
    refuses the certificate (system store only), at once, without retrying."""
    for name in TRUST_ENV:
        monkeypatch.setenv(name, str(certs.ca_pem))
    sink = make_sink(ca_bundle=None, request_retries=3)
    # put: this file fails, not retried; check: the run stops before listing (FatalError)
    for fn, kind in ((lambda: put_bytes(sink, unique(), b"abc", 3), SinkError), (sink.check, FatalError)):
        with pytest.raises(kind) as e:
            fn()
        assert "certificate verification failed" in str(e.value) and not e.value.retryable


@pytest.fixture
def tls_server(certs: Certs) -> Callable[..., TLSServer]:
    made: list[TLSServer] = []

    def factory(respond: Callable[..., tuple[int, dict[str, str], bytes]], **ctx_kw: object) -> TLSServer:
        hosts = ctx_kw.pop("hosts", ())
        server = TLSServer(server_context(certs.ca, *hosts, **ctx_kw), respond)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield factory  # type: ignore[misc]
    for s in made:
        s.close()


def ok(*_: object) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b"{}"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ({"tls11_only": True}, "TLS handshake failed"),
        ({"hosts": ("other.example",)}, "certificate verification failed"),
    ],
)
def test_old_tls_and_wrong_host_are_refused(
    certs: Certs, tls_server: Callable[..., TLSServer], kind: dict[str, object], expected: str
) -> None:
    server = tls_server(ok, **kind)
    fake = Server("tls", server.url, server.port, None, False)  # type: ignore[arg-type]
    sink = GcsSink(make_options(fake, certs.ca_pem))
    with pytest.raises(SinkError) as e:
        put_bytes(sink, unique(), b"abc", 3)
    assert expected in str(e.value) and not e.value.retryable
    assert server.requests == []
    sink.close()


def test_redirects_are_never_followed(certs: Certs, tls_server: Callable[..., TLSServer], plain_listener: PlainListener) -> None:
    server = tls_server(lambda *a: (302, {"Location": plain_listener.url + "/landed"}, b""))
    fake = Server("tls", server.url, server.port, None, False)  # type: ignore[arg-type]
    sink = GcsSink(make_options(fake, certs.ca_pem), _credentials=TokenCredentials(token="CANARY-BEARER-redirect"))
    for size in (3, 2 * CHUNK + 1):
        with pytest.raises(SinkError) as e:
            put_bytes(sink, unique(), pattern_bytes(size), size)
        assert "redirect" in str(e.value) and e.value.status == 302
    assert plain_listener.connections == 0
    sink.close()


@pytest.mark.parametrize("where", ["other-host", "plain-http"])
def test_session_uri_elsewhere_is_refused(
    certs: Certs, tls_server: Callable[..., TLSServer], plain_listener: PlainListener, where: str
) -> None:
    """A session URI is where the data and the bearer token would go: it must be https on the
    configured endpoint's host."""
    other = tls_server(ok)
    target = (
        f"https://localhost:{other.port}/upload?upload_id=x"
        if where == "other-host"
        else (plain_listener.url + "/upload?upload_id=x")
    )
    server = tls_server(lambda *a: (200, {"Location": target}, b""))
    fake = Server("tls", server.url, server.port, None, False)  # type: ignore[arg-type]
    sink = GcsSink(make_options(fake, certs.ca_pem), _credentials=TokenCredentials(token="CANARY-BEARER-elsewhere"))
    with pytest.raises(SinkError) as e:
        put_bytes(sink, unique(), pattern_bytes(2 * CHUNK + 1), None)
    assert "session URI" in str(e.value)
    assert other.requests == [] and plain_listener.connections == 0
    sink.close()


def test_token_endpoint_is_held_to_the_same_policy(
    emulator: Server,
    certs: Certs,
    tls_server: Callable[..., TLSServer],
    plain_listener: PlainListener,
) -> None:
    """The JWT grant goes only to an https token_uri verified with ca_bundle, TLS 1.2+, and a
    redirect from it is not followed."""
    cases: list[tuple[TLSServer, str]] = [
        (tls_server(ok, tls11_only=True), "TLS handshake failed"),
        (tls_server(ok, hosts=("other.example",)), "certificate verification failed"),
        (tls_server(lambda *a: (302, {"Location": plain_listener.url + "/token"}, b"")), "refused"),
    ]
    for server, expected in cases:
        key: CanaryKey = make_canary_key(f"{server.url}/token")
        sink = GcsSink(make_options(emulator, certs.ca_pem, key=key_secret(key)))
        with pytest.raises(PortshiftError) as e:
            put_bytes(sink, unique(), b"abc", 3)
        assert expected in str(e.value), str(e.value)
        for form in key.forms():
            assert form not in str(e.value)
        sink.close()
    assert plain_listener.connections == 0


def test_clients_use_portshift_tls_policy(
    emulator: Server, certs: Certs, token_server: TokenServer, make_sink: Callable[..., GcsSink]
) -> None:
    sink = make_sink()
    for session in (sink._session, sink._token_session):
        assert session.trust_env is False
        ctx = session.get_adapter("https://x")._context
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        with pytest.raises(Exception, match="plain HTTP"):
            session.get("http" + "://127.0.0.1:9/")
