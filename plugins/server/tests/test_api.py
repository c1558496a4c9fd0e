"""The JSON API against the real server: a job end to end, its events, headers, refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from .conftest import Server, canary_job, canary_value, start_job, wait_status

EXPECTED_HEADERS = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def check_headers(resp: httpx.Response) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert resp.headers.get(name) == value, (resp.request.url, name, resp.headers.get(name))
    csp = resp.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "server" not in resp.headers


def verify_export(root: Path) -> int:
    """Re-hash every file against portshift-manifest.txt (what `sha256sum -c` does)."""
    manifest = (root / "portshift-manifest.txt").read_text()
    entries = [line.split("  ", 1) for line in manifest.splitlines() if line and not line.startswith("#")]
    for digest, rel in entries:
        assert hashlib.sha256((root / rel).read_bytes()).hexdigest() == digest, rel
    return len(entries)


def test_a_job_runs_to_completion_and_its_manifest_digest_is_reported(server: Server) -> None:
    c = server.client()
    resp = c.post("/api/jobs", json=canary_job(canary_value("api"), count=3))
    assert resp.status_code == 201, resp.text
    check_headers(resp)
    job = resp.json()
    assert resp.headers["location"] == f"/api/jobs/{job['id']}"
    assert job["status"] in ("running", "starting")
    done = wait_status(c, job["id"], ("complete", "failed"))
    assert done["status"] == "complete", done
    assert done["files"] == 6 and done["recordings"]["done"] == 3 and done["bytes"] > 3 * 40_000
    root = server.local_root / server.work_dir(job["id"]).name / done["export_root"]
    manifest = root / "portshift-manifest.txt"
    assert done["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert verify_export(root) == 7  # 6 files and the JSON manifest
    assert done["attempts"] == 1 and done["error"] is None


def test_events_stream_progress_until_the_end(server: Server) -> None:
    c = server.client()
    job = start_job(c, canary_job(canary_value("sse"), count=8, delay=0.4))
    statuses = []
    with c.stream("GET", f"/api/jobs/{job['id']}/events") as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        check_headers(resp)
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "status":
                statuses.append(json.loads(line[6:]))
            elif line.startswith("data: ") and event == "end":
                break
    assert statuses[-1]["status"] == "complete"
    assert statuses[-1]["manifest_sha256"]
    files = [s["files"] for s in statuses]
    assert files == sorted(files), "progress never goes backwards"
    assert any(0 < s["files"] < 16 for s in statuses), f"no intermediate progress seen: {files}"


def test_every_response_carries_the_security_headers(server: Server) -> None:
    c = server.client()
    for method, path in [
        ("GET", "/"),
        ("GET", "/static/app.js"),
        ("GET", "/static/style.css"),
        ("GET", "/openapi.json"),
        ("GET", "/api/offers"),
        ("GET", "/api/jobs/nope"),
        ("GET", "/nothing-here"),
        ("DELETE", "/api/jobs"),
        ("POST", "/api/signups"),
    ]:
        resp = c.request(method, path)
        check_headers(resp)
    page = c.get("/")
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script>" not in html and "onclick" not in html and "style=" not in html, "no inline script or style"
    assert '<script src="/static/app.js"' in html
    js = c.get("/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    # every credential input is a password field with autocomplete off
    assert 'type: "password"' in js.text and 'autocomplete: "off"' in js.text
    assert 'autocomplete="off"' in html


def test_the_offers_and_the_openapi_document(server: Server) -> None:
    c = server.client()
    offers = c.get("/api/offers").json()
    assert [o["type"] for o in offers["sources"]] == ["chorus", "canary", "example"]
    assert [o["type"] for o in offers["sinks"]] == ["local", "canarylocal", "s3"]
    assert str(server.canary_out) not in json.dumps(offers), "operator-fixed options are not published"
    assert offers["signing"] == {"public_key": "/manifest-signing.pub.pem"}
    assert "manifest-signing.pem" not in json.dumps(offers), "the signing key's path is not published"
    spec = c.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/jobs/{job_id}/events",
        "/api/jobs/{job_id}/cancel",
        "/api/jobs/{job_id}/resume",
        "/api/signups",
    } <= set(spec["paths"])
    for src in spec["components"]["schemas"]["JobRequest"]["properties"]["source"]["oneOf"][:2]:
        assert src["properties"]["token"]["writeOnly"] is True and "token" in src["required"]
    assert "base_url" not in json.dumps(spec) and "ca_bundle" not in json.dumps(spec)


def test_refusals_name_the_field_never_its_value(server: Server) -> None:
    c = server.client()
    secret = canary_value("refused")
    bad = [
        {"source": {"type": "canary", "token": secret, "ca_bundle": "/etc/shadow"}, "sink": {"type": "local"}},
        {"source": {"type": "canary", "token": secret, "count": secret}, "sink": {"type": "local"}},
        {"source": {"type": "canary", "token": secret}, "sink": {"type": "local", "folder": "../../etc"}},
        {"source": {"type": "canary", "token": secret}, "sink": {"type": "local", "path": "/"}},
        {"source": {"type": secret, "token": secret}, "sink": {"type": "local"}},
        {"source": {"type": "canary", "token": 12345}, "sink": {"type": "local"}},
        {"source": {"type": "canary"}, "sink": {"type": "local"}},
        {"source": {"type": "canary", "token": secret}, "sink": {"type": "canarylocal"}},
        {"source": {"type": "canary", "token": secret, secret: "x"}, "sink": {"type": "local"}},
        {"source": {"type": "canary", "token": secret}, "sink": {"type": "local"}, "since": secret},
        [secret],
    ]
    for body in bad:
        resp = c.post("/api/jobs", json=body)
        assert resp.status_code == 400, (resp.status_code, resp.text)
        assert "canary-refused" not in resp.text and "/etc/shadow" not in resp.text
        assert resp.json()["error"]
    assert "missing" in c.post("/api/jobs", json=bad[6]).json()["error"]
    not_json = c.post("/api/jobs", content=b"{not json " + secret.encode(), headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and "canary" not in not_json.text
    assert c.post("/api/jobs", data={"token": secret}).status_code == 415
    assert c.post("/api/jobs", json={"source": {"type": "canary", "token": "x" * 70_000}, "sink": {}}).status_code == 413
    assert c.get("/api/jobs/not-a-job").status_code == 404
    assert c.post("/api/jobs/not-a-job/cancel", json={}).status_code == 404
    forged = c.post("/api/jobs", json=canary_job(secret), headers={"origin": "https://evil.example"})
    assert forged.status_code == 403


def test_job_ids_are_random_and_unrelated(server: Server) -> None:
    c = server.client()
    ids = [start_job(c, canary_job("wrong-token", count=1))["id"] for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(len(i) >= 24 for i in ids)  # 18 random bytes
    assert len({i[:6] for i in ids}) == 3
    for i in ids:
        wait_status(c, i, ("failed",))


def test_a_refused_credential_is_a_clear_error(server: Server) -> None:
    c = server.client()
    job = start_job(c, canary_job("not-the-right-token"))
    done = wait_status(c, job["id"], ("failed", "complete"))
    assert done["status"] == "failed"
    assert "refused" in done["error"], done
    assert "not-the-right-token" not in json.dumps(done)


def test_signups_are_stored(server: Server) -> None:
    c = server.client()
    ok = c.post("/api/signups", json={"name": "Ada Lovelace", "email": "ada@example.com", "company": "Engines Ltd"})
    assert ok.status_code == 201
    assert c.post("/api/signups", json={"name": "Ada", "email": "not-an-address"}).status_code == 400
    assert c.post("/api/signups", json={"name": "Ada", "email": "a@b.co", "phone": "1"}).status_code == 400
    import sqlite3

    conn = sqlite3.connect(f"file:{server.data_dir / 'service.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("select name, email, company from signups").fetchall()
        assert ("Ada Lovelace", "ada@example.com", "Engines Ltd") in rows
    finally:
        conn.close()
