"""Early-access sign-ups: checked, trimmed, one per e-mail address; the operator exports them as
CSV no spreadsheet runs as formulas, and erases one person on request (real server, real CLI)."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Server


def cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PORTSHIFT_LOAD_PLUGINS"] = "portshift-server"
    return subprocess.run(
        [sys.executable, "-m", "portshift", "serve", "--data-dir", str(server.data_dir), "signups", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def rows(server: Server, email: str) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(f"file:{server.data_dir / 'service.db'}?mode=ro", uri=True)
    try:
        return conn.execute("select name, email, company from signups where lower(email) = lower(?)", [email]).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("email", ["<script>@x", "x@y", "a b@example.com", "@example.com", "a@-x.com", "a@@example.com"])
def test_an_address_that_is_not_an_email_is_refused(server: Server, email: str) -> None:
    resp = server.client().post("/api/signups", json={"name": "Ada", "email": email})
    assert resp.status_code == 400 and resp.json()["error"].startswith("email:")


def test_signups_are_trimmed_and_kept_once_per_address(server: Server) -> None:
    c = server.client()
    assert c.post("/api/signups", json={"name": "  Ada  ", "email": " Ada@Example.org ", "company": " AE "}).status_code == 201
    assert c.post("/api/signups", json={"name": "Ada L.", "email": "ada@example.ORG", "company": "Engine"}).status_code == 201
    assert rows(server, "ada@example.org") == [("Ada L.", "ada@example.ORG", "Engine")]


def test_export_is_safe_against_formula_injection_and_delete_erases_one_person(server: Server, tmp_path: Path) -> None:
    c = server.client()
    evil = {"name": '=HYPERLINK("http://x","y")', "email": "eve@example.com", "company": "+1+2"}
    assert c.post("/api/signups", json=evil).status_code == 201
    assert c.post("/api/signups", json={"name": "@SUM(A1)", "email": "bob@example.com", "company": "-3"}).status_code == 201
    out = tmp_path / "signups.csv"
    done = cli(server, "export", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    eve = next(r for r in table if r["email"] == "eve@example.com")
    assert eve["name"] == "'" + evil["name"] and eve["company"] == "'+1+2"
    bob = next(r for r in table if r["email"] == "bob@example.com")
    assert bob["name"] == "'@SUM(A1)" and bob["company"] == "'-3"
    for row in table:
        assert not any(v.startswith(("=", "+", "-", "@")) for v in row.values()), row

    done = cli(server, "delete", "EVE@example.com")
    assert done.returncode == 0 and "deleted 1" in done.stdout
    assert rows(server, "eve@example.com") == []
    db = (server.data_dir / "service.db").read_bytes() + (
        (server.data_dir / "service.db-wal").read_bytes() if (server.data_dir / "service.db-wal").exists() else b""
    )
    assert b"eve@example.com" not in db and b"HYPERLINK" not in db, "secure_delete zeroed the erased row"
    again = cli(server, "delete", "eve@example.com")
    assert again.returncode != 0 and again.stderr.count("\n") <= 2 and "Traceback" not in again.stderr
    assert "no sign-up" in again.stderr


def test_the_signup_commands_need_the_service_data_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PORTSHIFT_LOAD_PLUGINS"] = "portshift-server"
    done = subprocess.run(
        [sys.executable, "-m", "portshift", "serve", "--data-dir", str(tmp_path / "none"), "signups", "export"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and "no service database" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "none").exists(), "nothing is created by a refused command"
