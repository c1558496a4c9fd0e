"""Connection exhaustion without a login: idle and slow connections, event streams.

A bounded load generator on loopback (asyncio, real TLS) holds 1,000 idle or slow connections
against a server whose file limit is 1,024 while a new client asks for /api/health; the
handshake, header and keep-alive deadlines are checked on their own; event streams are capped
per job and per client, and the change feed reads the database once per interval however many
streams follow."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
import pytest
from portshift_server.events import ChangeFeed, StreamLimits, StreamRefused

from .conftest import Certs, Server, ServerStarter, canary_job, canary_value, start_job, wait_status

HOLD = 1000


@pytest.fixture(scope="module")
def limited(module_server: ServerStarter) -> Server:
    return module_server("limits", "--header-timeout", "2", "--max-jobs-per-client", "4", "--rate-jobs", "1000/60", nofile=1024)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


LOAD_GENERATOR = r"""
import asyncio, json, resource, ssl, sys

port, ca, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * hold), hard))
stats = {"opened": 0, "closed_by_server": 0, "errors": 0}


async def keep_one(ctx, kind, stop, gate):
    # keep one connection of this kind open: reconnect whenever the server closes it
    while not stop.is_set():
        writer = None
        try:
            async with gate:
                if kind == "no-handshake":
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                else:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 30)
            stats["opened"] += 1
            if kind == "slow":
                writer.write(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while not stop.is_set():
                if kind == "slow":
                    writer.write(b"X-Slow: 1\r\n")
                try:
                    data = await asyncio.wait_for(reader.read(1024), 0.5)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    stats["closed_by_server"] += 1
                    break
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):
            stats["errors"] += 1
            await asyncio.sleep(0.05)
        finally:
            if writer is not None:
                writer.close()


async def main():
    ctx = ssl.create_default_context(cafile=ca)
    stop, gate = asyncio.Event(), asyncio.Semaphore(64)  # at most 64 connections being opened at once
    kinds = ["idle"] * (hold * 6 // 10) + ["slow"] * (hold * 3 // 10) + ["no-handshake"] * (hold // 10)
    tasks = [asyncio.create_task(keep_one(ctx, k, stop, gate)) for k in kinds]
    while stats["opened"] < hold:
        await asyncio.sleep(0.1)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks)
    print(json.dumps(stats), flush=True)


asyncio.run(main())
"""


def test_a_new_client_is_served_while_1000_idle_or_slow_connections_are_held(limited: Server, certs: Certs) -> None:
    gen = subprocess.Popen(
        [sys.executable, "-c", LOAD_GENERATOR, str(limited.port), str(certs.ca_pem), str(HOLD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert gen.stdin is not None and gen.stdout is not None
    try:
        assert gen.stdout.readline().strip() == "ready"
        latencies, peak_fds = [], 0
        with httpx.Client(verify=certs.client_context(), trust_env=False, timeout=30) as fresh:
            for _ in range(10):
                peak_fds = max(peak_fds, open_fds(limited.pid))
                started = time.monotonic()
                resp = fresh.get(f"{limited.url}/api/health", headers={"Connection": "close"})
                latencies.append(time.monotonic() - started)
                assert resp.status_code == 200
                time.sleep(0.3)
        gen.stdin.write("stop\n")
        gen.stdin.flush()
        stats = json.loads(gen.stdout.readline())
    finally:
        gen.stdin.close()
        gen.wait(60)
    print(f"health under {HOLD} held connections: {[round(x, 3) for x in latencies]} s; {stats}; server fds peak {peak_fds}")
    assert statistics.median(latencies) < 1.0, latencies
    assert max(latencies) < 5.0, latencies
    assert stats["opened"] >= HOLD and stats["closed_by_server"] > 0, "idle and slow connections were cut off"
    assert peak_fds < 1024, "the server stayed under its file limit"


def test_handshake_header_and_keep_alive_deadlines(limited: Server, certs: Certs) -> None:
    # a TCP connection that never starts TLS, and a TLS connection that never finishes its head
    raw = socket.create_connection(("127.0.0.1", limited.port))
    slow = certs.client_context().wrap_socket(socket.create_connection(("127.0.0.1", limited.port)), server_hostname="127.0.0.1")
    slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for s in (raw, slow):
        s.settimeout(8)
    started = time.monotonic()
    assert raw.recv(1024) == b""
    assert slow.recv(1024) == b""
    assert time.monotonic() - started < 6, "closed after the 2 s deadline (plus scheduling)"
    raw.close()
    slow.close()
    # a kept-alive connection with no next request is closed after the keep-alive time (5 s)
    kept = certs.client_context().wrap_socket(socket.create_connection(("127.0.0.1", limited.port)), server_hostname="127.0.0.1")
    kept.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    kept.settimeout(10)
    first = b""
    while b'{"ok":true}' not in first:
        first += kept.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert kept.recv(1024) == b""
    assert time.monotonic() - started < 8
    kept.close()


def test_health_does_not_tell_how_busy_the_service_is_only_the_operator_sees_it(limited: Server) -> None:
    c = limited.client()
    job = start_job(c, canary_job(canary_value("busy"), count=3, delay=1.0))
    assert c.get("/api/health").json() == {"ok": True}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PORTSHIFT_LOAD_PLUGINS"] = "portshift-server"
    out = subprocess.run(
        [sys.executable, "-m", "portshift", "serve", "--data-dir", str(limited.data_dir), "status"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "running: 1" in out.stdout.splitlines() or "starting: 1" in out.stdout.splitlines(), out.stdout
    c.post(f"/api/jobs/{job['id']}/cancel")
    wait_status(c, job["id"], ("cancelled", "complete", "failed"))


def _open_stream(client: httpx.Client, job_id: str) -> httpx.Response:
    req = client.build_request("GET", f"/api/jobs/{job_id}/events")
    return client.send(req, stream=True)


def test_event_streams_are_capped_per_job_and_per_client(limited: Server) -> None:
    c = limited.client()
    jobs = [start_job(c, canary_job(canary_value("sse-cap"), count=4, delay=1.0)) for _ in range(3)]
    opened = [_open_stream(c, jobs[0]["id"]) for _ in range(4)]
    assert all(r.status_code == 200 for r in opened)
    fifth = _open_stream(c, jobs[0]["id"])
    assert fifth.status_code == 429 and "this job" in fifth.read().decode()
    fifth.close()
    opened += [_open_stream(c, jobs[1]["id"]) for _ in range(4)]
    assert all(r.status_code == 200 for r in opened)
    ninth = _open_stream(c, jobs[2]["id"])
    assert ninth.status_code == 429 and "event streams open" in ninth.read().decode()
    ninth.close()
    for r in opened:
        r.close()
    # closed streams give their slots back
    deadline = time.monotonic() + 10
    while True:
        again = _open_stream(c, jobs[2]["id"])
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        again.close()
        time.sleep(0.2)
    assert again.status_code == 200
    again.close()
    for job in jobs:
        c.post(f"/api/jobs/{job['id']}/cancel")
        wait_status(c, job["id"], ("cancelled", "complete", "failed"))


def test_one_change_feed_reads_the_database_once_per_interval_for_every_stream() -> None:
    calls: list[list[str]] = []

    def snapshots(ids: list[str]) -> dict[str, dict]:
        calls.append(sorted(ids))
        return {i: {"id": i, "status": "running", "files": len(calls)} for i in ids}

    async def scenario() -> int:
        feed = ChangeFeed(snapshots, 0.1, StreamLimits(total=100, per_job=40, per_client=100))
        subs = [feed.subscribe(f"job-{n % 3}", f"client-{n}", {"id": f"job-{n % 3}", "status": "running"}) for n in range(60)]
        with pytest.raises(StreamRefused):
            for n in range(41):
                feed.subscribe("job-0", f"x-{n}", {"id": "job-0", "status": "running"})
        await asyncio.sleep(1.05)
        for sub in subs:
            assert sub.latest is not None and sub.latest["files"] >= 5
        polls = feed.polls
        for sub in subs:
            feed.unsubscribe(sub)
        return polls

    polls = asyncio.run(scenario())
    # 60 streams (plus the refused extras) for 1 s at 0.1 s: about 10 reads, each of the 3 jobs at once
    assert 5 <= polls <= 12, polls
    assert all(ids == ["job-0", "job-1", "job-2"] for ids in calls[:polls]), calls[:3]
