"""Rate limits: 429 with Retry-After, then recovered; counters keyed by an HMAC of the address."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from pathlib import Path

import pytest

from .conftest import Server, ServerStarter, canary_job


@pytest.fixture(scope="module")
def strict(module_server: ServerStarter) -> Server:
    return module_server("strict", "--rate-jobs", "2/3", "--rate-signups", "2/3", "--max-jobs-per-client", "4")


def hit_until_limited(strict: Server, path: str, body: dict) -> tuple[list[int], str | None]:
    c = strict.client()
    codes = []
    retry = None
    for _ in range(3):
        resp = c.post(path, json=body)
        codes.append(resp.status_code)
        if resp.status_code == 429:
            retry = resp.headers.get("retry-after")
            assert resp.json()["error"]
    return codes, retry


def test_job_creation_is_rate_limited_then_recovers(strict: Server) -> None:
    body = canary_job("wrong-token", count=1)
    codes, retry = hit_until_limited(strict, "/api/jobs", body)
    assert codes == [201, 201, 429]
    assert retry is not None and 1 <= int(retry) <= 3
    time.sleep(int(retry) + 0.2)
    assert strict.client().post("/api/jobs", json=body).status_code == 201
    # invalid requests count too (no free probing), and the limit applies to resume as well
    c = strict.client()
    assert c.post("/api/jobs", json={"source": {}, "sink": {}}).status_code == 400
    assert c.post("/api/jobs/whatever/resume", json={}).status_code == 429


def test_signups_are_rate_limited_then_recover(strict: Server) -> None:
    body = {"name": "Grace", "email": "grace@example.com", "company": "Navy"}
    codes, retry = hit_until_limited(strict, "/api/signups", body)
    assert codes == [201, 201, 429]
    time.sleep(int(retry or 3) + 0.2)
    assert strict.client().post("/api/signups", json=body).status_code == 201


def test_counters_are_keyed_by_an_hmac_of_the_address_never_the_address(strict: Server) -> None:
    strict.client().post("/api/signups", json={"name": "x", "email": "x@example.com"})
    expected = hmac.new(strict.secret, b"127.0.0.1/32", hashlib.sha256).hexdigest()  # the /32 of the peer
    conn = sqlite3.connect(f"file:{strict.data_dir / 'service.db'}?mode=ro", uri=True)
    try:
        keys = {row[0] for row in conn.execute("select key from rate_limits")}
    finally:
        conn.close()
    assert keys == {expected}
    for suffix in ("", "-wal"):
        path = Path(f"{strict.data_dir / 'service.db'}{suffix}")
        if path.exists():
            data = path.read_bytes()
            assert b"127.0.0.1" not in data and hashlib.sha256(b"127.0.0.1").hexdigest().encode() not in data
