"""Malformed requests are a 4xx with one line, and nothing is created for them: deep nesting, lone
surrogates, control and bidirectional characters, oversize fields; plus hypothesis on the JSON
bodies of every POST (any JSON value, any text) against the real server: never a 500."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server


def job_rows(server: Server) -> int:
    conn = sqlite3.connect(f"file:{server.data_dir / 'service.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("select count(*) from jobs").fetchone()[0])
    finally:
        conn.close()


def job_dirs(server: Server) -> set[Path]:
    return set((server.data_dir / "jobs").iterdir())


def post_raw(client: httpx.Client, path: str, raw: bytes) -> httpx.Response:
    return client.post(path, content=raw, headers={"Content-Type": "application/json"})


def assert_refused(resp: httpx.Response, status: int = 400) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text[:200])
    message = resp.json()["error"]
    assert "\n" not in message and len(message) < 300
    return str(message)


@pytest.mark.parametrize("path", ["/api/signups", "/api/jobs", "/api/jobs/x/resume"])
def test_60000_open_brackets_are_a_400_not_a_500(server: Server, path: str) -> None:
    message = assert_refused(post_raw(server.client(), path, b"[" * 60_000))
    assert "nests deeper" in message


@pytest.mark.parametrize(
    "body",
    [
        {"name": "A\ud800", "email": "a@example.com"},
        {"name": "A", "email": "a@example.com", "company": "\udfff"},
        {"name": "A", "email": "a@example.com", "\ud800": "x"},
    ],
)
def test_a_lone_surrogate_in_a_signup_is_a_400(server: Server, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as \ud800, valid JSON text
    assert b"\\ud" in raw
    assert "surrogate" in assert_refused(post_raw(server.client(), "/api/signups", raw))


def test_a_lone_surrogate_in_a_job_field_creates_nothing(server: Server) -> None:
    before_rows, before_dirs = job_rows(server), job_dirs(server)
    c = server.client()
    for sink in ({"type": "local", "folder": "x\ud800"}, {"type": "s3", "bucket": "b\ud800", "region": "eu-west-1"}):
        raw = json.dumps({"source": {"type": "canary", "token": "canary-x"}, "sink": sink}).encode()
        assert "surrogate" in assert_refused(post_raw(c, "/api/jobs", raw))
    assert job_rows(server) == before_rows
    assert job_dirs(server) == before_dirs, "no job folder or job.toml for a refused request"


@pytest.mark.parametrize("bad", ["a\u202eb", "a\u2066b", "a\x00b", "a\x1bb", "a\x85b", "a\u200fb"])
def test_control_and_bidi_characters_are_refused_in_fields(server: Server, bad: str) -> None:
    before_rows, before_dirs = job_rows(server), job_dirs(server)
    c = server.client()
    resp = c.post("/api/jobs", json={"source": {"type": "canary", "token": "canary-x"}, "sink": {"type": "local", "folder": bad}})
    assert "sink.folder" in assert_refused(resp)
    resp = c.post("/api/signups", json={"name": bad, "email": "a@example.com"})
    assert "name" in assert_refused(resp)
    assert job_rows(server) == before_rows and job_dirs(server) == before_dirs


def test_oversize_fields_and_bodies_are_refused(server: Server) -> None:
    c = server.client()
    assert "name" in assert_refused(c.post("/api/signups", json={"name": "x" * 201, "email": "a@example.com"}))
    assert_refused(post_raw(c, "/api/signups", b'{"name": "' + b"x" * 70_000 + b'"}'), 413)
    resp = c.post("/api/jobs", json={"source": {"type": "canary", "token": "t" * 20_000}, "sink": {"type": "local"}})
    assert "source.token" in assert_refused(resp)


JSON_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(["name", "email", "company", "type", "token", "folder", "count", "source", "sink", "since"])
BODIES = st.one_of(
    JSON_VALUES,
    st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=4),
    st.fixed_dictionaries(
        {
            "source": st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=3),
            "sink": st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=3),
        }
    ),
)


def test_hypothesis_json_bodies_never_get_a_500(server: Server) -> None:
    c = server.client()
    before_rows = job_rows(server)

    @given(body=BODIES, path=st.sampled_from(["/api/signups", "/api/jobs", "/api/jobs/nope/resume", "/api/jobs/nope/cancel"]))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def run(body: Any, path: str) -> None:
        raw = json.dumps(body).encode()  # lone surrogates become \udXXX escapes, as an attacker sends them
        resp = post_raw(c, path, raw)
        assert resp.status_code < 500, (path, raw[:200], resp.status_code, resp.text[:200])

    run()
    assert job_rows(server) == before_rows, "no random body made a job"
