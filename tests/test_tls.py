"""The one TLS policy, against real servers on 127.0.0.1: TLS 1.2+, certificates and host names
checked, trust from the system store plus an explicit ca_bundle only (the environment cannot add
a CA), https only, no redirects followed, no proxy from the environment."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from portshift import tls
from portshift.errors import ConfigError
from portshift.tls import https_client, require_https, ssl_context

from .conftest import HTTPSServer, PlainListener, TLSMaterial


def handshake(ctx: ssl.SSLContext, port: int, host: str = "127.0.0.1") -> str:
    """Connect and handshake; the negotiated version, or raise ssl.SSLError."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            return str(tls.version())


def test_the_context_policy(tls_material: TLSMaterial) -> None:
    for ctx in (ssl_context(), ssl_context(tls_material.ca_pem)):
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is True
        assert ctx.protocol == ssl.PROTOCOL_TLS_CLIENT


def test_ca_bundle_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist or is not a file"):
        ssl_context(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="does not exist or is not a file"):
        ssl_context(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="is not a PEM certificate file"):
        ssl_context(tmp_path / "junk.pem")


def test_an_explicit_ca_bundle_is_trusted_and_nothing_else_is(tls_material: TLSMaterial, https_server: HTTPSServer) -> None:
    assert handshake(ssl_context(tls_material.ca_pem), https_server.port) in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl_context(), https_server.port)


def test_host_names_are_checked(tls_material: TLSMaterial, https_server: HTTPSServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        handshake(ssl_context(tls_material.ca_pem), https_server.port, host="not-the-cert-name.example")


def test_one_context_per_trust_and_process_made_again_when_the_bundle_changes(tls_material: TLSMaterial, tmp_path: Path) -> None:
    """Loading the trust costs ~20 ms: every client asking for the same trust shares one context;
    a ca_bundle file rewritten in place is loaded again; ``fresh=True`` is a context of one's own."""
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(tls_material.ca_pem.read_bytes())
    first = ssl_context(bundle)
    assert ssl_context(bundle) is first and ssl_context(str(bundle)) is first
    assert ssl_context() is ssl_context() and ssl_context() is not first
    assert ssl_context(bundle, fresh=True) is not first
    before = first.cert_store_stats()["x509_ca"]
    bundle.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a PEM certificate file"):
        ssl_context(bundle)  # the file is looked at again, not taken from the cache
    bundle.write_bytes(tls_material.ca_pem.read_bytes() * 2 + b"\n")
    again = ssl_context(bundle)
    assert again is not first and again.cert_store_stats()["x509_ca"] == before
    for n in range(tls.KEEP_CONTEXTS + 2):  # a long-lived process seeing many bundles keeps a few
        other = tmp_path / f"ca-{n}.pem"
        other.write_bytes(tls_material.ca_pem.read_bytes())
        ssl_context(other)
    assert len(tls._contexts) <= tls.KEEP_CONTEXTS


def test_prepared_contexts_are_the_same_policy_and_trust_and_each_is_used_once(
    tls_material: TLSMaterial, https_server: HTTPSServer, tmp_path: Path
) -> None:
    """``prepare_trust`` loads the system store ahead of need; the contexts made next take those
    (one each) and add their ca_bundle: the same policy and the same trust as a context made on
    the spot, the server's CA trusted, another CA not."""
    for t in list(tls._preparing):  # what an earlier test in this process left: not this test's
        t.join(10)
    tls._prepared.clear()
    on_the_spot = ssl_context(tls_material.ca_pem, fresh=True)
    system = ssl_context(fresh=True).cert_store_stats()["x509_ca"]
    tls.prepare_trust(2)
    for t in list(tls._preparing):
        t.join(10)
    prepared = list(tls._prepared)
    assert len(prepared) == 2
    first = ssl_context(tls_material.ca_pem, fresh=True)
    second = ssl_context(fresh=True)
    assert [first, second] == prepared and not tls._prepared  # each taken once, in order
    third = ssl_context(fresh=True)  # none left: made on the spot
    assert third not in prepared
    for ctx in (first, second):
        assert (ctx.minimum_version, ctx.verify_mode, ctx.check_hostname, ctx.protocol) == (
            on_the_spot.minimum_version, on_the_spot.verify_mode, on_the_spot.check_hostname, on_the_spot.protocol
        )  # fmt: skip
    assert first.cert_store_stats()["x509_ca"] == on_the_spot.cert_store_stats()["x509_ca"] == system + 1
    assert second.cert_store_stats()["x509_ca"] == system
    assert handshake(first, https_server.port) in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(second, https_server.port)
    tls.prepare_trust(1)  # a context asked for while the store is still loading waits for it
    assert ssl_context(tls_material.ca_pem, fresh=True).cert_store_stats()["x509_ca"] == system + 1
    for t in list(tls._preparing):
        t.join(10)
    assert not tls._prepared


def _hashed_ca_dir(pem: Path, folder: Path) -> Path:
    """An OpenSSL CApath folder holding ``pem`` under its subject-hash name."""
    folder.mkdir()
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)], capture_output=True, text=True, check=True
    ).stdout.strip()
    shutil.copy(pem, folder / f"{subject_hash}.0")
    return folder


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_trust_variables_in_the_environment_add_no_ca(
    variable: str,
    tls_material: TLSMaterial,
    https_server: HTTPSServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile CA put in the environment: a default Python context trusts it (the control shows
    the variable works), portshift's contexts and clients do not."""
    hostile = tls_material.ca_pem
    unrelated = tmp_path / "empty.pem"
    unrelated.write_text("")
    if variable == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", str(hostile))
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    else:
        if not shutil.which("openssl"):
            pytest.skip("no openssl command to build a hashed CA folder")
        monkeypatch.setenv("SSL_CERT_DIR", str(_hashed_ca_dir(hostile, tmp_path / "capath")))
        monkeypatch.setenv("SSL_CERT_FILE", str(unrelated))
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE"):
        monkeypatch.setenv(name, str(hostile))
    monkeypatch.setattr(tls, "_contexts", OrderedDict())  # every context below is made with the variables set

    # control: the stdlib default honours the variable, so the hostile CA would be trusted
    assert handshake(ssl.create_default_context(), https_server.port)

    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl_context(), https_server.port)
    with https_client() as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(f"{https_server.url}/ok")
    # with the CA given explicitly, the same server is fine
    with https_client(tls_material.ca_pem) as client:
        r = client.get(f"{https_server.url}/ok")
    assert r.status_code == 200 and r.text == "hello over tls"


def test_a_tls_1_1_only_server_is_refused(tls_material: TLSMaterial, https_server_factory: Callable[..., HTTPSServer]) -> None:
    old = https_server_factory(tls11_only=True)
    # control: a deliberately loosened client shows whether this OpenSSL can speak TLS 1.1 at all
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loose.minimum_version = ssl.TLSVersion.TLSv1
    loose.set_ciphers("ALL:@SECLEVEL=0")
    loose.load_verify_locations(cafile=str(tls_material.ca_pem))
    try:
        legacy_possible = handshake(loose, old.port) == "TLSv1.1"
    except ssl.SSLError:
        legacy_possible = False  # this OpenSSL cannot offer TLS 1.1: refusing it is then a given

    with pytest.raises(ssl.SSLError):
        handshake(ssl_context(tls_material.ca_pem), old.port)
    with https_client(tls_material.ca_pem) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(f"{old.url}/ok")
    # the server saw the two refused handshakes and no request at all
    deadline = time.monotonic() + 5
    expected_failures = 2 if legacy_possible else 3
    while old.failed_handshakes < expected_failures and time.monotonic() < deadline:
        time.sleep(0.02)
    assert old.failed_handshakes == expected_failures
    assert old.versions == (["TLSv1.1"] if legacy_possible else [])
    assert old.requests == []


def test_https_client_refuses_plain_http_before_connecting(tls_material: TLSMaterial, plain_listener: PlainListener) -> None:
    with https_client(tls_material.ca_pem) as client:
        with pytest.raises(httpx.UnsupportedProtocol, match="https only") as e:
            client.get(f"{plain_listener.url}/x?sig=CANARYsig", headers={"Authorization": "Bearer CANARYtok"})
    assert "CANARYsig" not in str(e.value)
    with https_client(tls_material.ca_pem, base_url=plain_listener.url) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            client.get("/x")
    assert plain_listener.connections == 0 and plain_listener.received == b""


def test_https_client_does_not_follow_redirects(
    tls_material: TLSMaterial, https_server: HTTPSServer, plain_listener: PlainListener
) -> None:
    target = f"{plain_listener.url}/landed"
    with https_client(tls_material.ca_pem, headers={"X-Api-Key": "CANARY-api"}) as client:
        r = client.get(f"{https_server.url}/redirect", params={"to": target})
        assert r.status_code == 302 and r.headers["location"] == target
        assert not r.history
        # a caller asking for redirects explicitly still cannot be taken to plain http
        with pytest.raises(httpx.UnsupportedProtocol):
            client.get(f"{https_server.url}/redirect", params={"to": target}, follow_redirects=True)
    assert plain_listener.connections == 0 and plain_listener.received == b""
    assert [r.path for r in https_server.requests] == ["/redirect", "/redirect"]


def test_https_client_ignores_proxy_variables(
    tls_material: TLSMaterial, https_server: HTTPSServer, plain_listener: PlainListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, plain_listener.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with https_client(tls_material.ca_pem) as client:
        r = client.get(f"{https_server.url}/ok")
    assert r.status_code == 200
    assert plain_listener.connections == 0
    # control: httpx with trust_env honours the variable, so the listener would have seen it
    with httpx.Client(verify=ssl_context(tls_material.ca_pem), trust_env=True, timeout=5) as leaky:
        try:
            leaky.get(f"{https_server.url}/ok")
        except httpx.HTTPError:
            pass
    assert plain_listener.connections >= 1


@pytest.mark.parametrize(
    "url",
    ["https://api.example", "https://api.example/v1?x=1", "HTTPS://API.EXAMPLE", "https://127.0.0.1:8443/", "https://[::1]/"],
)
def test_require_https_accepts(url: str) -> None:
    assert require_https(url, "endpoint") == url


@pytest.mark.parametrize(
    "url, expect",
    [
        ("http://api.example/x?sig=CANARYq", "endpoint must be an https:// URL, got http://api.example"),
        ("ftp://api.example", "must be an https:// URL"),
        ("ws://api.example", "must be an https:// URL"),
        ("api.example/v1", "must be an https:// URL"),
        ("", "must be an https:// URL"),
        ("https://", "has no host name"),
        ("https:///path", "has no host name"),
        ("https://user:CANARYq@api.example/", "must not carry a user name or password"),
        ("https://CANARYq@api.example/", "must not carry a user name or password"),
    ],
)
def test_require_https_refuses(url: str, expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        require_https(url, "endpoint")
    assert expect in str(e.value)
    assert "CANARYq" not in str(e.value)
