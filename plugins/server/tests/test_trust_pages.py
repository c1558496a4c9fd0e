"""What a customer checks before trusting the service: /.well-known/security.txt (RFC 9116), the
security page, the advisories feed, the signing public key, and least-privilege snippets that
are the documentation's own text."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from portshift_server.pages import advisories, permissions

from .conftest import Server
from .test_api import check_headers

REPO = Path(__file__).resolve().parents[3]


def test_security_txt_follows_rfc_9116(server: Server) -> None:
    resp = server.client().get("/.well-known/security.txt")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    check_headers(resp)
    fields = dict(line.split(": ", 1) for line in resp.text.splitlines() if line and not line.startswith("#"))
    assert fields["Contact"] == "mailto:security@portshift.app"
    expires = datetime.strptime(fields["Expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert datetime.now(timezone.utc) < expires < datetime.now(timezone.utc) + timedelta(days=366)


def test_the_security_page_and_the_advisories_feed(server: Server) -> None:
    c = server.client()
    page = c.get("/security")
    assert page.status_code == 200 and "/.well-known/security.txt" in page.text and "/advisories" in page.text
    check_headers(page)
    feed = c.get("/advisories")
    assert feed.status_code == 200 and feed.headers["content-type"].startswith("application/feed+json")
    doc = feed.json()
    assert doc["version"] == "https://jsonfeed.org/version/1.1" and doc == advisories()
    assert isinstance(doc["items"], list)
    assert 'href="/security"' in c.get("/").text


def test_the_signing_public_key_is_published_and_the_private_key_is_not(server: Server) -> None:
    resp = server.client().get("/manifest-signing.pub.pem")
    assert resp.status_code == 200
    assert isinstance(load_pem_public_key(resp.content), Ed25519PublicKey)
    assert b"PRIVATE" not in resp.content


@pytest.mark.parametrize("sink", ["s3", "azure", "gcs"])
def test_the_policy_snippets_are_the_documentations_text(sink: str) -> None:
    snippet = permissions()[sink]
    assert snippet["source"] == f"docs/permissions/{sink}.md"
    doc = (REPO / snippet["source"]).read_text()
    assert f"```{snippet['lang']}\n{snippet['text']}```" in doc, f"{sink}: the snippet drifted from {snippet['source']}"
