"""The canary sweep: credentials sent to the service appear in no file, log, argv or environment.

Canary credentials go to the source (token) and the sink (key) of real jobs, through the API.
While the workers run, /proc/<pid>/cmdline and /proc/<pid>/environ of the server and of every
worker are read; afterwards every file under the service's folders (service DB and its -wal/-shm,
job files, worker state DBs, exports), and the server's stdout and stderr, are searched for each
canary in raw, URL-encoded, JSON-escaped, hex and base64 (every alignment) form.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from portshift_server.db import ServiceDB

from .conftest import Server, canary_value, encoded_forms, find_canary, start_job, wait_status

SECRET_NAMES = ("TOKEN", "SECRET", "KEY", "SAS", "PASSWORD", "CREDENTIAL")


def proc_texts(pid: int) -> dict[str, bytes]:
    out = {}
    for name in ("cmdline", "environ"):
        try:
            out[f"{pid}/{name}"] = Path(f"/proc/{pid}/{name}").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def all_files(*roots: Path) -> list[Path]:
    files = []
    for root in roots:
        files += [p for p in root.rglob("*") if p.is_file()]
    return files


def test_canary_credentials_appear_nowhere(server: Server) -> None:
    c = server.client()
    token, key = canary_value("token"), canary_value("sinkkey")
    canaries = [token, key]
    jobs = [
        c.post(
            "/api/jobs",
            json={
                "source": {"type": "canary", "token": token, "count": 6, "media_size": 30_000, "delay": 0.3},
                "sink": {"type": "canarylocal", "key": key},
            },
        ).json(),
        c.post(
            "/api/jobs", json={"source": {"type": "canary", "token": token, "count": 4, "delay": 0.3}, "sink": {"type": "local"}}
        ).json(),
    ]
    # a refused credential, and requests the service rejects, carry canaries too
    refused = "refused-" + canary_value("refused")
    canaries.append(refused)
    jobs.append(start_job(c, {"source": {"type": "canary", "token": refused}, "sink": {"type": "local"}}))
    for body in (
        {"source": {"type": "canary", "token": token, "count": token}, "sink": {"type": "local"}},
        {"source": {"type": "canary", "token": token}, "sink": {"type": "local"}, "since": key},
        {"source": {"type": "canary", "token": token, "nope": key}, "sink": {"type": "local"}},
    ):
        assert c.post("/api/jobs", json=body).status_code == 400

    # while the workers run: argv and environment of the server and of each worker
    proc: dict[str, bytes] = proc_texts(server.pid)
    worker_pids = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = [c.get(f"/api/jobs/{j['id']}").json()["status"] for j in jobs]
        for pid in server.workers():
            worker_pids.add(pid)
            proc.update(proc_texts(pid))
            env = dict(kv.split(b"=", 1) for kv in proc.get(f"{pid}/environ", b"").split(b"\0") if b"=" in kv)
            named = [k for k in env if any(s.encode() in k.upper() for s in SECRET_NAMES)]
            assert not named, f"secret-looking variables in a worker's environment: {named}"
            assert env.get(b"HOME", b"").startswith(str(server.data_dir / "jobs").encode())
        if all(s not in ("starting", "running") for s in states):
            break
        time.sleep(0.05)
    assert len(worker_pids) >= 2, "the workers were seen running"
    assert any(k.endswith("/environ") and k.split("/")[0] != str(server.pid) for k in proc), "a worker environment was read"

    done = [wait_status(c, j["id"], ("complete", "failed")) for j in jobs]
    assert [d["status"] for d in done] == ["complete", "complete", "failed"], done
    assert len(list(server.canary_out.rglob("portshift-manifest.txt"))) >= 1, "the canarylocal sink wrote the export"

    hits = {name: find_canary(data, canaries) for name, data in proc.items()}
    assert not any(hits.values()), hits

    time.sleep(0.3)  # let the server's last writes land
    root = server.data_dir.parent
    files = all_files(root)
    names = {p.name for p in files}
    assert {"service.db", "job.toml", "state.db"} <= names and "service.db-wal" in names
    assert server.stdout in files and server.stderr in files
    leaks = {str(p): h for p in files if (h := find_canary(p.read_bytes(), canaries))}
    assert not leaks, leaks
    # and the server did log the requests (so the sweep searched real log text)
    assert b"POST /api/jobs 201" in server.stderr.read_bytes()


def test_the_service_db_keeps_only_metadata(server: Server) -> None:
    conn = sqlite3.connect(f"file:{server.data_dir / 'service.db'}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
        assert tables == {"jobs", "signups", "rate_limits"}
        cols = {r[1] for r in conn.execute("pragma table_info(jobs)")}
        assert not {c for c in cols if any(s.lower() in c for s in ("token", "secret", "key", "sas", "credential", "path"))}
        assert not {c for c in cols if c in ("bucket", "prefix", "region", "ip", "client")}
    finally:
        conn.close()


def test_deleted_rows_are_zeroed_on_disk(tmp_path: Path) -> None:
    """secure_delete: an expired rate-limit counter (an address's HMAC) leaves no bytes behind."""
    db = ServiceDB(tmp_path / "service.db")
    marker = canary_value("deleted")
    db.hit(marker, "jobs", 5, 0.05)
    time.sleep(0.1)
    db.hit("someone-else", "jobs", 5, 0.05)  # removes the expired counter
    db.close()  # checkpoints the WAL into the file
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert not any(f in data for f in encoded_forms(marker))
    assert b"someone-else" in data  # the control: live rows are there to be found


def test_workers_get_credentials_only_through_the_handover(server: Server) -> None:
    """The argv of a worker names files, and those files hold no credential."""
    c = server.client()
    token = canary_value("argv")
    job = c.post(
        "/api/jobs", json={"source": {"type": "canary", "token": token, "count": 3, "delay": 0.4}, "sink": {"type": "local"}}
    ).json()
    pid = server.worker_of(job["id"])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--secrets-from-stdin" in argv and b"--config" in argv
    job_file = Path(argv[argv.index(b"--config") + 1].decode())
    assert job_file.parent == server.work_dir(job["id"])
    assert 'type = "canary"' in job_file.read_text() and not find_canary(job_file.read_bytes(), [token])
    # fd 0 was the handover socket (never a pipe: /proc/<pid>/fd/0 of a socket cannot be opened);
    # once the credentials are in, it is /dev/null in the worker and in its relaying parent
    assert os.readlink(f"/proc/{pid}/fd/0") in ("/dev/null",) or os.readlink(f"/proc/{pid}/fd/0").startswith("socket:")
    assert wait_status(c, job["id"], ("complete", "failed"))["status"] == "complete"


def test_the_sweep_finds_planted_canaries() -> None:
    """Control for the sweeps above: each encoding of a canary inside a larger text is found."""
    import base64
    import json
    import urllib.parse

    value = canary_value("planted")
    doc = json.dumps({"source": {"token": value}}).encode()
    for blob in (
        doc,
        base64.b64encode(b"x" + doc),
        base64.urlsafe_b64encode(b"xy" + doc),
        urllib.parse.quote(doc.decode()).encode(),
        b"token=" + urllib.parse.quote_plus(value).encode(),
        doc.hex().encode(),
    ):
        assert find_canary(b"...log line... " + blob + b" ...", [value]), blob[:40]
    assert not find_canary(doc.replace(b"canary", b"kanary"), [value])
