"""The canary sweep: a full export from the Chorus simulator at DEBUG with the JSON formatter,
with faults of every kind on the way, and the Chorus token handed over on stdin. While it runs,
`/proc/<pid>/cmdline` and `environ` are read; afterwards stdout, stderr, every file created (the
state DB with its WAL included) are searched. The token, the signed media links and their
encoded forms appear nowhere. On the PostgreSQL state the database password (a canary too, given
on stdin) joins the sweep, and the server's own log (every statement it saw) and a `pg_dump` of
the database are searched as well."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import StateBackend
from .support import PORTSHIFT, sha256sum_check

chorus = pytest.importorskip("portshift_source_chorus.simulator", reason="the Chorus plugin is not installed")

CANARY = "CANARY-sweep-tok-Zq81/+x="


def forms(secret: str) -> set[str]:
    raw = secret.encode()
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),
        urllib.parse.quote_plus(secret),
        json.dumps(secret)[1:-1],
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


@pytest.fixture  # one per test: a fault met once is not met again by the same simulator
def simulator() -> Iterator[object]:
    tenant = chorus.Tenant(
        chorus.TenantSpec(calls=24, seed=5, media_size=(1, 400_000), not_found_ratio=0.1, forbidden_ratio=0.05)
    )
    with chorus.ChorusSimulator(tenant, token=CANARY) as sim:
        sim.configure(
            faults=chorus.Faults(
                throttle=chorus.Fault(ratio=0.2),
                retry_after="0",
                server_error=chorus.Fault(ratio=0.2),
                truncate=chorus.Fault(ratio=0.15),
                reset=chorus.Fault(ratio=0.15),
                expired_link=chorus.Fault(ratio=0.2),
            )
        )
        yield sim


def pg_dump(backend: StateBackend) -> bytes:
    assert backend.server is not None and backend.password
    dsn = (
        f"host=127.0.0.1 port={backend.server.port} dbname={backend.dbname} user={backend.server.user} "
        f"sslmode=verify-full sslrootcert={backend.server.ca_pem}"
    )
    env = {**os.environ, "PGPASSWORD": backend.password}
    r = subprocess.run(["pg_dump", "--no-owner", dsn], capture_output=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr.decode()[-1000:]
    assert b"CREATE TABLE public.files" in r.stdout and b"COPY public.files" in r.stdout
    return r.stdout


def test_no_secret_anywhere_after_a_faulty_export(tmp_path: Path, simulator: object, state_backend: StateBackend) -> None:
    sim = simulator
    server_log_start = len(state_backend.server.log_text()) if state_backend.server else 0
    out = tmp_path / "out"
    job = tmp_path / "job.toml"
    job.write_text(
        "[job]\ntransfers = 4\nretries = 4\nsince = 2024-01-01\nuntil = 2024-04-02\n\n"
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\n'
        "requests_per_second = 0\nbackoff_base = 0.01\nbackoff_cap = 0.05\n\n"
        f'[sink]\ntype = "local"\npath = "{out}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env.update({"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp"), "PORTSHIFT_RETRY_BASE": "0.01"})
    (tmp_path / "tmp").mkdir()
    out_file, err_file = open(tmp_path / "stdout.txt", "wb"), open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *PORTSHIFT,
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "run",
            "--config",
            str(job),
            "--state",
            state_backend.target,
            "--secrets-from-stdin",
            "--no-progress",
        ],
        stdin=subprocess.PIPE,
        stdout=out_file,
        stderr=err_file,
        env=env,
    )
    assert proc.stdin is not None
    given = {"source": {"token": CANARY}}
    if state_backend.password:
        given["state"] = {"password": state_backend.password}
    proc.stdin.write(json.dumps(given).encode())
    proc.stdin.close()
    seen_proc: list[bytes] = []
    while proc.poll() is None:
        for name in ("cmdline", "environ"):
            try:
                seen_proc.append(Path(f"/proc/{proc.pid}/{name}").read_bytes())
            except OSError:
                pass
        time.sleep(0.05)
    proc.wait(timeout=120)
    out_file.close()
    err_file.close()
    stdout, stderr = (tmp_path / "stdout.txt").read_bytes(), (tmp_path / "stderr.txt").read_bytes()
    assert seen_proc, "the process was never observed while running"
    assert proc.returncode in (0, 3), stderr.decode()[-2000:]
    blobs: dict[str, bytes] = {}
    for i, b in enumerate(seen_proc):
        blobs[f"/proc sample {i}"] = b
    for p in tmp_path.rglob("*"):
        if p.is_file() and p != job:
            blobs[str(p.relative_to(tmp_path))] = p.read_bytes()
    secrets = [CANARY]
    if state_backend.kind == "sqlite":
        assert any(name.startswith("state.db") for name in blobs)
    else:
        assert state_backend.server is not None and state_backend.password
        secrets.append(state_backend.password)
        log = state_backend.server.log_text()[server_log_start:]
        assert f"database={state_backend.dbname}" in log and "insert into files" in log  # it saw the export
        logins = [ln for ln in log.splitlines() if f"connection authorized: user={state_backend.server.user} " in ln]
        assert len(logins) >= 2  # the locks' connection and at least one writer's
        assert all(re.search(r"SSL enabled \(protocol=TLSv1\.[23],", ln) for ln in logins), logins
        blobs["server log"] = log.encode()
        blobs["pg_dump"] = pg_dump(state_backend)
    leaks = [(name, f) for name, data in blobs.items() for secret in secrets for f in forms(secret) if f.encode() in data]
    assert not leaks, f"a secret leaked: {leaks[:5]}"
    links = [name for name, data in blobs.items() if b"sig=" in data or b"expires=" in data]
    assert not links, f"a signed media link leaked into: {links[:5]}"
    # the export itself is right: skipped calls are listed with reasons, the rest verifies
    lines = [json.loads(ln) for ln in stderr.decode().splitlines() if ln.startswith("{")]
    assert any(ln["level"] == "debug" for ln in lines), "the run did not log at DEBUG"
    assert any("retry" in ln["message"] for ln in lines), "no fault was met: the sweep proves little"
    if proc.returncode == 0:
        root = next(p.parent for p in out.glob("*/portshift-manifest.txt"))
        assert sha256sum_check(root).returncode == 0
        assert "skipped" in stdout.decode()
