"""Where a request may send the service's workers: Azure account URLs and GCS token URIs on the
operator's allow-lists, and one error text whether a chosen host refused the connection, failed
TLS or dropped it. Also the per-client job cap and the keying of clients by network."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme
from portshift_server.destinations import NETWORK_ERROR, Outbound
from portshift_server.ratelimit import client_key, client_network

from .conftest import Server, ServerStarter, canary_job, canary_value, free_port, wait_status
from .test_hostile_input import job_dirs, job_rows

OUTBOUND_CONFIG = """
sources = ["canary"]
sinks = ["azure", "gcs", "s3", "local"]
[source.canary]
fields = {{ count = "integer", media_size = "integer", delay = "number" }}
secrets = {{ token = true }}
[sink.azure.fixed]
request_retries = 0
[outbound]
azure_account_urls = ["https://127.0.0.1:{closed}/acct", "https://127.0.0.1:{untrusted}/acct", "https://127.0.0.1:{dropping}/acct"]
"""


class Listener:
    """A loopback listener that either fails TLS (a certificate from a CA nobody trusts) or
    accepts and closes at once."""

    def __init__(self, mode: str) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx: ssl.SSLContext | None = None
        if mode == "untrusted":
            leaf = trustme.CA().issue_cert("127.0.0.1")
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            leaf.configure_cert(self.ctx)
        self.stop = False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                if self.ctx is not None:
                    conn.settimeout(5)
                    try:
                        self.ctx.wrap_socket(conn, server_side=True).close()
                    except (ssl.SSLError, OSError):
                        pass
            finally:
                conn.close()

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def outbound(module_server: ServerStarter) -> Iterator[Server]:
    untrusted, dropping = Listener("untrusted"), Listener("dropping")
    config = OUTBOUND_CONFIG.replace("{closed}", str(free_port()))
    config = config.replace("{untrusted}", str(untrusted.port)).replace("{dropping}", str(dropping.port))
    plugins = "portshift-server,portshift-canary-test,portshift-sink-azure"
    env = {"PORTSHIFT_LOAD_PLUGINS": plugins, "PORTSHIFT_RETRY_BASE": "0.01"}
    s = module_server("outbound", "--rate-jobs", "1000/60", config_text=config, env_extra=env)
    s.outbound_config = config  # type: ignore[attr-defined]
    yield s
    untrusted.close()
    dropping.close()


def azure_job(account_url: str) -> dict[str, object]:
    return {
        "source": {"type": "canary", "token": canary_value("az"), "count": 1, "media_size": 1000},
        "sink": {"type": "azure", "account_url": account_url, "container": "calls", "sas": "sv=2024-01-01&sp=cw&sig=abc"},
    }


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1:8443",
        "https://10.0.0.1",
        "https://metadata.google.internal",
        "https://acct.blob.core.windows.net:8443",
        "https://acct.blob.core.windows.net.evil.example",
        "https://user@acct.blob.core.windows.net",
        "https://acct.blob.core.windows.net/x?y=1",
        "http://acct.blob.core.windows.net",
        "https://127.0.0.1:1/acct",
    ],
)
def test_an_azure_account_url_off_the_allow_list_is_refused_and_creates_nothing(outbound: Server, url: str) -> None:
    before = job_rows(outbound), job_dirs(outbound)
    resp = outbound.client().post("/api/jobs", json=azure_job(url))
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"].startswith("sink.account_url:") and url not in resp.text
    assert (job_rows(outbound), job_dirs(outbound)) == before


def test_a_gcs_key_whose_token_uri_is_not_googles_is_refused(outbound: Server) -> None:
    key = {"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com", "private_key": "x"}
    c = outbound.client()
    for token_uri in ("https://127.0.0.1:1/token", "https://oauth2.googleapis.com.evil.example/token", None):
        doc = dict(key, token_uri=token_uri) if token_uri else key
        body = {
            "source": {"type": "canary", "token": "canary-x"},
            "sink": {"type": "gcs", "bucket": "b-1", "key": json.dumps(doc)},
        }
        resp = c.post("/api/jobs", json=body)
        assert resp.status_code == 400 and resp.json()["error"].startswith("sink.key: token_uri must be"), resp.text
        assert "127.0.0.1" not in resp.text and "evil" not in resp.text


def test_the_allow_lists_accept_what_they_list() -> None:
    out = Outbound()
    for url in (
        "https://acct.blob.core.windows.net",
        "https://acct123.blob.core.windows.net/",
        "https://x1y.blob.core.chinacloudapi.cn",
    ):
        out.check_azure_account_url(url)
    out.check_gcs_key(json.dumps({"token_uri": "https://oauth2.googleapis.com/token"}))


def test_connect_tls_and_dropped_failures_read_the_same_to_the_client(outbound: Server) -> None:
    urls = [u for u in outbound.outbound_config.split('"') if u.startswith("https://127.0.0.1")]  # type: ignore[attr-defined]
    assert len(urls) == 3
    c = outbound.client()
    seen = []
    for url in urls:
        resp = c.post("/api/jobs", json=azure_job(url))
        assert resp.status_code == 201, resp.text
        texts: set[str] = set()
        started = time.monotonic()
        while True:  # every text the client can see while the job runs and after it ended
            doc = c.get(f"/api/jobs/{resp.json()['id']}").json()
            texts.update(doc["messages"])
            if doc["status"] in ("failed", "complete", "partial"):
                break
            assert time.monotonic() - started < 120
            time.sleep(0.05)
        assert doc["status"] in ("failed", "partial"), doc
        texts.add(doc["error"])
        print(url, round(time.monotonic() - started, 1), texts)
        seen.append(texts)
    assert seen[0] == seen[1] == seen[2], seen
    for text in seen[0]:
        assert text == NETWORK_ERROR or not any(w in text.lower() for w in ("refused", "certificate", "tls", "ssl", "eof")), text


def test_one_client_cannot_hold_every_job_slot(outbound: Server) -> None:
    c = outbound.client()  # --max-jobs-per-client defaults to 1
    first = c.post("/api/jobs", json=canary_job(canary_value("slot"), count=3, delay=1.0))
    assert first.status_code == 201, first.text
    second = c.post("/api/jobs", json=canary_job(canary_value("slot"), count=1))
    assert second.status_code == 429 and second.headers["retry-after"] == "60"
    assert "already run" in second.json()["error"]
    c.post(f"/api/jobs/{first.json()['id']}/cancel")
    wait_status(c, first.json()["id"], ("cancelled", "complete", "failed"))
    assert c.post("/api/jobs", json=canary_job(canary_value("slot"), count=1)).status_code == 201


def test_clients_are_keyed_by_their_ipv6_64_or_ipv4_address() -> None:
    assert client_network("2001:db8:1:2::1") == client_network("2001:db8:1:2:ffff:ffff:ffff:fffe") == "2001:db8:1:2::/64"
    assert client_network("2001:db8:1:3::1") != client_network("2001:db8:1:2::1")
    assert client_network("192.0.2.7") == "192.0.2.7/32" != client_network("192.0.2.8")
    assert client_network("::ffff:192.0.2.7") == "192.0.2.7/32"
    assert client_network("fe80::1%eth0") == "fe80::/64"
    secret = b"k" * 32
    assert client_key(secret, "2001:db8:1:2::1") == client_key(secret, "2001:db8:1:2:abcd::9")
    assert "2001" not in client_key(secret, "2001:db8:1:2::1")
