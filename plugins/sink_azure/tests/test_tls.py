"""TLS: portshift's policy, not the environment's; TLS 1.2+; no plain HTTP by any route."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from portshift_sink_azure import AzureSink

from portshift.errors import FatalError, SinkError
from portshift.secrets import Secret
from portshift.testing import LocalCA, Request, pattern_bytes, put_bytes

from .conftest import ACCOUNT, Azurite, MiB, PlainListener, TLSServer, download, unique


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_client_context_is_tls12_plus_and_verifying(sink: AzureSink) -> None:
    adapter = sink._transport.session.get_adapter("https://127.0.0.1/")  # type: ignore[union-attr]
    ctx = adapter._context
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert sink._transport.session.trust_env is False  # type: ignore[union-attr]


def test_environment_cannot_add_trust(
    azurite: Azurite, make_sink: Callable[..., AzureSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Env variables naming the test CA do not make the sink trust it: only ca_bundle does."""
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(var, str(azurite.ca))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    sink = make_sink(ca_bundle=None, request_retries=2)
    with pytest.raises(SinkError, match="certificate verification failed") as e:
        put_bytes(sink, unique("untrusted.bin"), b"abc", 3)
    assert not e.value.retryable


def test_environment_cannot_remove_trust(
    azurite: Azurite,
    admin: object,
    make_sink: Callable[..., AzureSink],
    monkeypatch: pytest.MonkeyPatch,
    other_ca: Path,
) -> None:
    """Env variables naming a wrong CA do not break the explicit ca_bundle."""
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(var, str(other_ca))
    sink = make_sink()
    key = unique("trusted.bin")
    put_bytes(sink, key, b"abc", 3)
    assert download(admin, sink.blob_name(key)) == b"abc"  # type: ignore[arg-type]


def test_wrong_ca_bundle_fails_verification(make_sink: Callable[..., AzureSink], other_ca: Path) -> None:
    sink = make_sink(ca_bundle=str(other_ca))
    # check() stops the run on it (FatalError), before anything is listed
    with pytest.raises(FatalError, match="certificate verification failed"):
        sink.check()


def test_proxy_variables_are_ignored(
    azurite: Azurite,
    admin: object,
    make_sink: Callable[..., AzureSink],
    monkeypatch: pytest.MonkeyPatch,
    plain_listener: PlainListener,
) -> None:
    proxy = f"{'http'}://127.0.0.1:{plain_listener.port}"
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(var, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sink = make_sink()
    key = unique("direct.bin")
    put_bytes(sink, key, pattern_bytes(2 * MiB), 2 * MiB)
    assert plain_listener.connections == 0
    monkeypatch.undo()  # the test's own admin client does honour proxy variables
    assert download(admin, sink.blob_name(key)) == pattern_bytes(2 * MiB)  # type: ignore[arg-type]


@pytest.fixture
def tls11_server(certs: LocalCA) -> Iterator[TLSServer]:
    server = TLSServer(certs.server_context(tls11_only=True), lambda head: b"HTTP/1.1 201 Created\r\n\r\n")
    yield server
    server.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls11_only_server_is_refused(azurite: Azurite, make_sink: Callable[..., AzureSink], tls11_server: TLSServer) -> None:
    # The server really does speak TLS 1.1 (a client allowed to use it gets through the handshake).
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.minimum_version = ssl.TLSVersion.TLSv1
    probe.set_ciphers("ALL:@SECLEVEL=0")
    probe.load_verify_locations(str(azurite.ca))
    with socket.create_connection(("127.0.0.1", tls11_server.port), timeout=5) as raw:
        with probe.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1", "TLSv1.1")
    deadline = time.monotonic() + 5
    while tls11_server.handshakes < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    before, seen = tls11_server.handshakes, len(tls11_server.requests)
    assert before == 1
    sink = make_sink(account_url=f"https://127.0.0.1:{tls11_server.port}/{ACCOUNT}", request_retries=3)
    with pytest.raises(SinkError, match="TLS handshake failed") as e:
        put_bytes(sink, unique("old.bin"), b"abc", 3)
    assert not e.value.retryable
    assert tls11_server.handshakes == before and len(tls11_server.requests) == seen
    # the server's thread counts a failed handshake after the client gave up on it
    assert tls11_server.wait_for(lambda: tls11_server.failed_handshakes >= 1), "the sink never even tried"


def test_hostname_mismatch_is_refused(make_sink: Callable[..., AzureSink], certs: LocalCA) -> None:
    server = TLSServer(certs.server_context("other.example"), lambda head: b"HTTP/1.1 201 Created\r\n\r\n")
    try:
        sink = make_sink(account_url=f"https://127.0.0.1:{server.port}/{ACCOUNT}")
        with pytest.raises(SinkError, match="certificate verification failed"):
            put_bytes(sink, unique("mismatch.bin"), b"abc", 3)
        assert not server.requests
    finally:
        server.close()


def test_redirect_to_plain_http_is_not_followed(
    make_sink: Callable[..., AzureSink], certs: LocalCA, plain_listener: PlainListener
) -> None:
    target = f"{'http'}://127.0.0.1:{plain_listener.port}/{ACCOUNT}/exports/landed"

    def redirect(request: Request) -> bytes:
        return f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()

    server = TLSServer(certs.server_context(), redirect)
    try:
        sink = make_sink(account_url=f"https://127.0.0.1:{server.port}/{ACCOUNT}", request_retries=2)
        for size in (3, 2 * MiB + 1):
            with pytest.raises(SinkError) as e:
                put_bytes(sink, unique("redirected.bin"), pattern_bytes(size), size)
            assert e.value.status == 307
        assert server.requests, "the TLS server should have seen the first request"
        assert plain_listener.connections == 0
    finally:
        server.close()


def test_plain_http_refused_even_past_validation(
    azurite: Azurite, make_sink: Callable[..., AzureSink], plain_listener: PlainListener
) -> None:
    """Defence in depth: an http account URL forced past the options check is refused by the transport."""
    sink = make_sink()
    options = sink.options.model_copy(update={"account_url": f"{'http'}://127.0.0.1:{plain_listener.port}/{ACCOUNT}"})
    forced = AzureSink(options)
    try:
        with pytest.raises(SinkError, match="plain HTTP") as e:
            put_bytes(forced, unique("clear.bin"), b"abc", 3)
        assert not e.value.retryable
        assert plain_listener.connections == 0
    finally:
        forced.close()


def test_sas_kept_for_the_tls_failure_messages(azurite: Azurite, make_sink: Callable[..., AzureSink], other_ca: Path) -> None:
    token = azurite.sas()
    sink = make_sink(ca_bundle=str(other_ca), sas=Secret(token, "sas"))
    with pytest.raises(SinkError) as e:
        put_bytes(sink, unique("x.bin"), b"abc", 3)
    assert "sig=" not in str(e.value) and token not in repr(e.value)


def test_server_errors_are_retried_per_request_then_reported(make_sink: Callable[..., AzureSink], certs: LocalCA) -> None:
    busy = b"HTTP/1.1 503 Service Unavailable\r\nx-ms-error-code: ServerBusy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    server = TLSServer(certs.server_context(), lambda head: busy)
    try:
        sink = make_sink(account_url=f"https://127.0.0.1:{server.port}/{ACCOUNT}", request_retries=1)
        with pytest.raises(SinkError) as e:
            put_bytes(sink, unique("busy.bin"), b"abc", 3)
        assert e.value.status == 503 and e.value.retryable and "ServerBusy" in str(e.value)
        assert len(server.requests) == 2, "one try plus one retry"
    finally:
        server.close()
