"""TLS against the Chorus source (issue 7): an untrusted CA, a certificate for another host name,
a TLS 1.1-only server and trust offered only through the environment all fail before a single
request byte is sent, with a clear portshift error that carries neither the token nor a query
string. A redirect of the listing to plain HTTP reaches nobody. (The media redirect to plain
HTTP is in test_security.py.)
"""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from portshift_source_chorus import ChorusSource
from portshift_source_chorus.simulator import ChorusSimulator

from portshift.errors import PortshiftError, SourceError
from portshift.testing import PlainListener, TLSServer, renderings, server_context

from .conftest import CANARY, WINDOW, options

PLAIN = "http" + "://"
TRUST_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
QUERY_WORDS = ("?", "min_date", "max_date", "engagement_type=", "continuation_key")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def served(sim: ChorusSimulator) -> int:
    return sim.stats.total("api") + sim.stats.total("media")


def assert_clean(e: PortshiftError) -> None:
    """The error a caller sees: a portshift error, one clear line, no token, no query string, no
    httpx/ssl object travelling up with it."""
    rendered = renderings(e)
    for text in rendered:
        assert CANARY not in text
        for word in QUERY_WORDS:
            assert word not in text, f"{word!r} in {text!r}"
    assert "\n" not in str(e)
    assert e.__cause__ is None, "no SDK exception chained to it"
    assert e.__context__ is None or e.__suppress_context__, "raised from None at the plugin boundary"


def refuse(source: ChorusSource) -> SourceError:
    """List the window through ``source``; it must fail with a SourceError (returned)."""
    try:
        with pytest.raises(SourceError) as e:
            next(iter(source.recordings(WINDOW)))
    finally:
        source.close()
    assert_clean(e.value)
    return e.value


# --- (a) the simulator's real certificate, its CA not given ----------------------------------------
def test_the_simulators_certificate_without_ca_bundle_is_refused(sim: ChorusSimulator) -> None:
    before = served(sim)
    err = refuse(ChorusSource(options(sim, ca_bundle=None)))
    assert "TLS certificate verification failed" in str(err)
    assert err.retryable is False and err.operation == "list engagements"
    assert "ca_bundle" in str(err)  # the hint says what to do
    assert served(sim) == before, "the simulator served a request to an unverified client"
    # Control: the same options with the CA do list calls.
    ok = ChorusSource(options(sim))
    try:
        assert next(iter(ok.recordings(WINDOW))).id
    finally:
        ok.close()
    assert served(sim) > before


# --- (b) a certificate for another host name -------------------------------------------------------
@pytest.fixture
def other_host_server(ca: trustme.CA) -> Iterator[TLSServer]:
    server = TLSServer(server_context(ca, "other.example"))
    yield server
    server.close()


def test_a_certificate_for_another_host_name_is_refused(
    sim: ChorusSimulator, other_host_server: TLSServer, ca_file: Path
) -> None:
    err = refuse(ChorusSource(options(sim, base_url=other_host_server.url, ca_bundle=ca_file)))
    assert "TLS certificate verification failed" in str(err) and err.retryable is False
    assert other_host_server.handshakes == 0 and other_host_server.requests == []
    assert other_host_server.wait_for(lambda: other_host_server.failed_handshakes == 1)  # tried once, not retried


def test_a_host_name_mismatch_is_named_as_such(sim: ChorusSimulator, other_host_server: TLSServer, ca_file: Path) -> None:
    err = refuse(ChorusSource(options(sim, base_url=other_host_server.url, ca_bundle=ca_file)))
    assert "host name" in str(err).lower() or "hostname" in str(err).lower()
    assert "set ca_bundle" not in str(err)


# --- (c) a TLS 1.1-only server ---------------------------------------------------------------------
@pytest.fixture
def tls11_server(ca: trustme.CA, ca_file: Path) -> Iterator[TLSServer]:
    server = TLSServer(server_context(ca, tls11_only=True))
    try:
        # Control: the server really speaks TLS 1.1 to a client that allows it.
        loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        loose.load_verify_locations(str(ca_file))
        loose.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loose.minimum_version = ssl.TLSVersion.TLSv1
        try:
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
                loose.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                assert tls.version() == "TLSv1.1"
        except ssl.SSLError as exc:  # pragma: no cover - an OpenSSL build without TLS 1.1 at all
            pytest.fail(f"the TLS 1.1 test server does not work on this machine: {exc}")
        assert server.wait_for(lambda: server.handshakes == 1)
        server.handshakes = 0
        yield server
    finally:
        server.close()


def test_a_tls_1_1_only_server_is_refused(sim: ChorusSimulator, tls11_server: TLSServer, ca_file: Path) -> None:
    err = refuse(ChorusSource(options(sim, base_url=tls11_server.url, ca_bundle=ca_file, retries=2)))
    assert err.operation == "list engagements"
    assert tls11_server.handshakes == 0 and tls11_server.requests == []
    # the server's thread counts a failed handshake after the client gave up on it
    assert tls11_server.wait_for(lambda: tls11_server.failed_handshakes >= 1), "the source never even tried"


def test_a_tls_1_1_only_server_is_refused_at_once_with_a_tls_error(
    sim: ChorusSimulator, tls11_server: TLSServer, ca_file: Path
) -> None:
    err = refuse(ChorusSource(options(sim, base_url=tls11_server.url, ca_bundle=ca_file, retries=2)))
    assert "TLS" in str(err), str(err)
    assert err.retryable is False
    assert tls11_server.wait_for(lambda: tls11_server.failed_handshakes >= 1)
    time.sleep(0.2)  # a retry would come within backoff_cap (0.05 s)
    assert tls11_server.failed_handshakes == 1, "retried a handshake that cannot succeed"


# --- (d) the CA only in the environment --------------------------------------------------------------
def test_trust_variables_in_the_environment_add_no_trust(sim: ChorusSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TRUST_VARS:
        monkeypatch.setenv(name, str(sim.ca_path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    # Control: a default Python context does trust the simulator through SSL_CERT_FILE now.
    with (
        socket.create_connection(("127.0.0.1", sim.port), timeout=5) as raw,
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    before = served(sim)
    err = refuse(ChorusSource(options(sim, ca_bundle=None)))
    assert "TLS certificate verification failed" in str(err) and err.retryable is False
    assert served(sim) == before


def test_trust_variables_naming_another_ca_do_not_remove_ca_bundle(
    sim: ChorusSimulator, monkeypatch: pytest.MonkeyPatch, ca_file: Path
) -> None:
    for name in TRUST_VARS:
        monkeypatch.setenv(name, str(ca_file))  # a CA that did not sign the simulator's certificate
    source = ChorusSource(options(sim))
    try:
        assert len(list(source.recordings(WINDOW))) == len(sim.tenant.listed(WINDOW.start, WINDOW.end))
    finally:
        source.close()


# --- the listing redirected to plain HTTP ------------------------------------------------------------
def test_a_listing_redirected_to_plain_http_reaches_nobody(
    sim: ChorusSimulator, ca: trustme.CA, ca_file: Path, plain: PlainListener
) -> None:
    target = f"{PLAIN}127.0.0.1:{plain.port}/v3/engagements?min_date=x"
    answer = f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n".encode()
    server = TLSServer(server_context(ca), answer)
    try:
        err = refuse(ChorusSource(options(sim, base_url=server.url, ca_bundle=ca_file)))
        assert err.status == 307 and err.retryable is False
        assert len(server.requests) == 1 and server.requests[0].head.startswith(b"GET /v3/engagements?")
        assert CANARY.encode() in server.requests[0].head  # the control: the token did go to base_url's origin
    finally:
        server.close()
    assert plain.connections == 0 and plain.received == b""
