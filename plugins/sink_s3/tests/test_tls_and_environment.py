"""TLS only, and nothing in the environment or the shared AWS files can redirect the client or
change whom it trusts."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from portshift.errors import ConfigError, SinkError
from portshift.hashing import HashingStream
from portshift.testing import TLSServer, server_context

from .conftest import MakeSink, ReadObj

HOSTILE_ENDPOINT_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
TRUST_VARS = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


def plain(listener: Any) -> str:
    return "http" + f"://127.0.0.1:{listener.port}"


def test_an_http_endpoint_is_a_config_error_before_any_connection(make_options: Callable[..., Any], plain_listener: Any) -> None:
    with pytest.raises(ConfigError) as e:
        make_options(endpoint_url=plain(plain_listener))
    assert "https://" in str(e.value)
    assert plain_listener.connections == 0


def test_hostile_endpoint_proxy_and_trust_variables_are_ignored(
    make_sink: MakeSink, monkeypatch: pytest.MonkeyPatch, plain_listener: Any, certs: Any, read_obj: ReadObj
) -> None:
    for name in HOSTILE_ENDPOINT_VARS + ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, plain(plain_listener))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    for name in TRUST_VARS:
        monkeypatch.setenv(name, str(certs.other_ca_pem))  # a CA that did not sign moto's cert
    sink = make_sink()
    sink.put("env.bin", HashingStream(iter([b"hello", b" world"])), 11)
    sink.put("env-big.bin", HashingStream(iter([b"\x01" * (6 * 1024 * 1024)])), None)
    assert read_obj("env.bin") == b"hello world"
    assert plain_listener.connections == 0


def test_without_an_endpoint_it_is_aws_over_https_whatever_the_environment(
    make_sink: MakeSink, monkeypatch: pytest.MonkeyPatch, plain_listener: Any
) -> None:
    for name in HOSTILE_ENDPOINT_VARS:
        monkeypatch.setenv(name, plain(plain_listener))
    sink = make_sink(endpoint_url=None, region="eu-central-1")  # built only: no request is made
    assert sink.client.meta.endpoint_url == "https://s3.eu-central-1.amazonaws.com"
    assert plain_listener.connections == 0


def test_trust_variables_do_not_add_trust(
    make_sink: MakeSink, monkeypatch: pytest.MonkeyPatch, certs: Any, tls_proxy: Any
) -> None:
    """With the test CA only in AWS_CA_BUNDLE & co (not in ca_bundle), moto's cert is refused."""
    for name in TRUST_VARS:
        monkeypatch.setenv(name, str(certs.ca_pem))
    sink = make_sink(endpoint_url=tls_proxy.url, ca_bundle=None)
    with pytest.raises(SinkError) as e:
        sink.put("untrusted.bin", HashingStream(iter([b"x"])), 1)
    assert "TLS failure" in str(e.value) and "CERTIFICATE_VERIFY_FAILED" in str(e.value)
    assert e.value.retryable is False
    assert tls_proxy.seen == []


def test_shared_config_files_cannot_redirect_or_add_trust_with_the_credential_chain(
    make_sink: MakeSink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, plain_listener: Any, certs: Any, read_obj: ReadObj
) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[default]\n"
        f"endpoint_url = {plain(plain_listener)}\n"
        f"ca_bundle = {certs.other_ca_pem}\n"
        "region = ap-south-1\n"
        "s3 =\n  addressing_style = virtual\n  use_accelerate_endpoint = true\n"
        "use_dualstack_endpoint = true\n"
        "[services s3]\n"
    )
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIAFROMFILE\naws_secret_access_key = CANARYfilesecret\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("PORTSHIFT_AWS_ACCESS_KEY_ID", "PORTSHIFT_AWS_SECRET_ACCESS_KEY", "PORTSHIFT_AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    sink = make_sink(credential_chain=True)
    sink.put("chain.bin", HashingStream(iter([b"from the chain"])), 14)
    assert read_obj("chain.bin") == b"from the chain"
    assert plain_listener.connections == 0


def test_static_keys_read_no_shared_file(
    make_sink: MakeSink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, plain_listener: Any, read_obj: ReadObj
) -> None:
    config = tmp_path / "config"
    config.write_text("[profile other]\nregion = ap-south-1\n[default]\nthis is not an ini file\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # would be ProfileNotFound if files were read
    sink = make_sink()
    sink.put("static.bin", HashingStream(iter([b"ok"])), 2)
    assert read_obj("static.bin") == b"ok"


def test_a_static_key_session_looks_into_the_s3_models_alone(
    make_options: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, read_obj: ReadObj
) -> None:
    """botocore lists its ~400 service folders to check one name (~15 ms a process); with a key
    pair the private session can only build S3 clients, so only S3's folder is looked into. With
    the credential chain (which may build STS or SSO clients) botocore's own loader stays."""
    import botocore.loaders
    from portshift_sink_s3 import S3Sink
    from portshift_sink_s3.client import build_client

    listed: list[str] = []
    real = os.listdir

    def spy(path: Any = ".") -> list[str]:
        listed.append(str(path))
        return real(path)

    monkeypatch.setattr(os, "listdir", spy)
    everything = botocore.loaders.Loader.BUILTIN_DATA_PATH
    client, _ = build_client(make_options())
    assert client.meta.service_model.service_name == "s3"
    assert everything not in listed and os.path.join(everything, "s3") in listed
    sink = S3Sink(make_options())
    sink.put("one-service.bin", HashingStream(iter([b"ok"])), 2)  # and the client works
    assert read_obj("one-service.bin") == b"ok"
    listed.clear()
    for name in ("PORTSHIFT_AWS_ACCESS_KEY_ID", "PORTSHIFT_AWS_SECRET_ACCESS_KEY", "PORTSHIFT_AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAIN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
    build_client(make_options(credential_chain=True))
    assert everything in listed


def test_the_client_uses_portshifts_tls_context(make_sink: MakeSink) -> None:
    from portshift_sink_s3.client import HTTPSOnlySession

    session = make_sink().client._endpoint.http_session
    assert isinstance(session, HTTPSOnlySession)
    ctx = session._get_ssl_context()
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname is True


def test_the_http_session_refuses_plain_http(make_sink: MakeSink, plain_listener: Any) -> None:
    import botocore.exceptions
    from botocore.awsrequest import AWSRequest
    from portshift_sink_s3.client import PlainHTTPRefused

    session = make_sink().client._endpoint.http_session
    request = AWSRequest(method="GET", url=plain(plain_listener) + "/b/k").prepare()
    with pytest.raises(botocore.exceptions.HTTPClientError) as e:
        session.send(request)
    assert isinstance(e.value.kwargs["error"], PlainHTTPRefused)
    assert plain_listener.connections == 0


# --- servers that must be refused -------------------------------------------------------------------


@pytest.fixture
def old_tls_server(certs: Any) -> Iterator[TLSServer]:
    with TLSServer(server_context(certs.ca, tls11_only=True)) as server:
        yield server


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_a_tls_1_1_server_is_refused(make_sink: MakeSink, old_tls_server: TLSServer, certs: Any) -> None:
    # Control: the server does speak TLS 1.1 to a client that allows it.
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    loose.load_verify_locations(str(certs.ca_pem))
    loose.set_ciphers("ALL:@SECLEVEL=0")
    loose.minimum_version = ssl.TLSVersion.TLSv1
    try:
        with (
            socket.create_connection(("127.0.0.1", old_tls_server.port)) as raw,
            loose.wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            assert s.version() == "TLSv1.1"
    except ssl.SSLError as exc:  # pragma: no cover - this OpenSSL build cannot do TLS 1.1 at all
        pytest.fail(f"the TLS 1.1 test server does not work on this machine: {exc}")
    # the server's thread counts the control handshake after the client is through it: wait for
    # that count, or it could land after `before` is read and look like the sink's handshake
    assert old_tls_server.wait_for(lambda: old_tls_server.handshakes >= 1)
    before = old_tls_server.handshakes
    assert before == 1

    sink = make_sink(endpoint_url=f"https://127.0.0.1:{old_tls_server.port}")
    with pytest.raises(SinkError) as e:
        sink.put("old.bin", HashingStream(iter([b"x"])), 1)
    assert "TLS failure" in str(e.value) and e.value.retryable is False
    assert old_tls_server.handshakes == before and old_tls_server.requests == []


def assert_refused_before_a_request(make_sink: MakeSink, context: ssl.SSLContext, key: str) -> None:
    """A put to a TLS server holding ``context``'s certificate fails certificate verification
    (the sink's ca_bundle is the test CA), and no request reaches that server."""
    with TLSServer(context) as server:
        sink = make_sink(endpoint_url=f"https://127.0.0.1:{server.port}")
        with pytest.raises(SinkError) as e:
            sink.put(key, HashingStream(iter([b"x"])), 1)
        assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
        assert server.requests == []


def test_a_certificate_for_another_host_is_refused(make_sink: MakeSink, certs: Any, tmp_path: Path) -> None:
    assert_refused_before_a_request(make_sink, server_context(certs.ca, "other.example"), "host.bin")


def test_an_unknown_ca_is_refused(make_sink: MakeSink, tmp_path: Path) -> None:
    assert_refused_before_a_request(make_sink, server_context(trustme.CA()), "ca.bin")


def test_client_side_monitoring_from_the_environment_stays_off(
    make_sink: MakeSink, monkeypatch: pytest.MonkeyPatch, moto: Any, certs: Any
) -> None:
    """AWS_CSM_ENABLED would make botocore send call records (with the access key id) over UDP."""
    import boto3

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.5)
    monkeypatch.setenv("AWS_CSM_ENABLED", "true")
    monkeypatch.setenv("AWS_CSM_HOST", "127.0.0.1")
    monkeypatch.setenv("AWS_CSM_PORT", str(udp.getsockname()[1]))
    try:
        # Control: a default boto3 client does send them here.
        plain_client = boto3.session.Session().client(
            "s3",
            endpoint_url=moto.url,
            region_name="us-east-1",
            verify=str(certs.ca_pem),
            aws_access_key_id="AKIACONTROL",
            aws_secret_access_key="x",
        )
        plain_client.list_buckets()
        control = []
        with contextlib.suppress(TimeoutError):
            while True:
                control.append(udp.recv(65536))
        assert any(b"AKIACONTROL" in d for d in control)
        make_sink().put("csm.bin", HashingStream(iter([b"x"])), 1)
        with pytest.raises(TimeoutError):
            udp.recv(65536)
    finally:
        udp.close()


def test_sslkeylogfile_gets_no_tls_secrets(
    make_sink: MakeSink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, moto: Any, certs: Any
) -> None:
    import boto3

    control, ours = tmp_path / "control.keys", tmp_path / "ours.keys"
    monkeypatch.setenv("SSLKEYLOGFILE", str(control))
    boto3.session.Session().client(
        "s3",
        endpoint_url=moto.url,
        region_name="us-east-1",
        verify=str(certs.ca_pem),
        aws_access_key_id="x",
        aws_secret_access_key="y",
    ).list_buckets()
    assert "TRAFFIC_SECRET" in control.read_text() or "CLIENT_RANDOM" in control.read_text()  # botocore honours it

    monkeypatch.setenv("SSLKEYLOGFILE", str(ours))
    make_sink().put("keylog.bin", HashingStream(iter([b"x"])), 1)
    # botocore's own (replaced, never used) context may create the file with its header line only
    text = ours.read_text() if ours.exists() else ""
    assert "SECRET" not in text and "CLIENT_RANDOM" not in text
