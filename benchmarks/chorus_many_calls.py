"""Benchmark 4 of issue 8: many small calls from the Chorus simulator into the local sink.

A simulated tenant with exactly ``--calls`` (2,000) recorded calls, each exported as three files
(``transcript``: the conversation document, ``metadata``: the engagement, ``media``: 256 KiB
behind a redirect to a signed link on the media host), all over HTTPS on 127.0.0.1. In the same
run, for each ``--transfers`` setting (1, 2, 4, 8, 16):

- **portshift**: a ``portshift run`` subprocess as cron would run it (no terminal: a progress
  log line every 10 s), ``requests_per_second = 0`` (no client-side ceiling), the local sink
  with ``fsync = false`` (the figure is portshift's own cost, not the disk's; ``--fsync`` to turn
  it on); calls per second from process start to exit and over the job phase (first log line to
  exit);
- **plain client** (the simulator's capacity): a thread pool of the same size in this process,
  httpx with keep-alive, doing only the downloads: the same listing, then for each call the
  conversation document and the media (the redirect followed), bodies read and thrown away.

Every portshift export is checked: 6,000 files in the manifest and every media SHA-256 equal to
the simulator's. Target: at the best setting, portshift >= 0.7 x the best plain-client rate.

    .venv/bin/python benchmarks/chorus_many_calls.py [--calls 2000] [--transfers 1,2,4,8,16]
        [--fsync] [--no-progress] [--profile DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chorus_common import Simulator, manifest_digests, portshift_run  # noqa: E402

KIB = 1024
SEED = 0
START, END = "2024-01-01", "2024-04-01"  # the simulator's default tenant window
FIELDS = "name,status,language,private,owner,participants,recording,recording.duration,recording.start_time,recording.utterances"


def tenant_with(calls: int) -> tuple[int, list[tuple[str, str]]]:
    """The smallest tenant (seed 0, nothing private) with exactly ``calls`` exportable calls:
    (engagements to generate, [(id, type)] of the exportable ones)."""
    from portshift_source_chorus.simulator import Tenant, TenantSpec

    total = int(calls * 1.3) + 50
    while True:
        tenant = Tenant(TenantSpec(calls=total, seed=SEED, private_ratio=0.0))
        ok = sorted(tenant.exportable(), key=lambda c: c.index)
        if len(ok) >= calls:
            n = ok[calls - 1].index + 1
            exact = Tenant(TenantSpec(calls=n, seed=SEED, private_ratio=0.0)).exportable()
            assert len(exact) == calls
            return n, [(c.engagement_id, c.engagement_type) for c in exact]
        total *= 2


def media_digests(ids: list[str], size: int) -> dict[str, str]:
    import hashlib

    from portshift_source_chorus.simulator import media_chunks

    out = {}
    for cid in ids:
        h = hashlib.sha256()
        for piece in media_chunks(SEED, cid, size):
            h.update(piece)
        out[cid] = h.hexdigest()
    return out


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def plain_client(sim: Simulator, threads: int, expect: int, limit: int | None = None) -> tuple[float, float]:
    """(seconds, CPU seconds) for a thread pool of ``threads`` to list the tenant and download
    every call's conversation document and media (nothing hashed or stored)."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(sim.ca))
    token = sim.token_file.read_text().strip()
    local = threading.local()

    def client() -> httpx.Client:
        if not hasattr(local, "c"):
            local.c = httpx.Client(verify=ctx, timeout=60, trust_env=False, follow_redirects=False)
        return local.c

    def get(url: str, **kw: object) -> httpx.Response:
        r = client().get(url, **kw)  # type: ignore[arg-type]
        if r.status_code not in (200, 302):
            raise RuntimeError(f"plain client: HTTP {r.status_code}")
        return r

    auth = {"Authorization": token}
    cpu0 = self_cpu()
    started = time.perf_counter()
    ids: list[str] = []
    with httpx.Client(verify=ctx, timeout=60, trust_env=False) as lister:
        lo = datetime.fromisoformat(START).replace(tzinfo=timezone.utc) - timedelta(seconds=1)
        hi = datetime.fromisoformat(END).replace(tzinfo=timezone.utc) + timedelta(days=1)
        for etype in ("meeting", "dialer"):
            params = {
                "min_date": lo.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "max_date": hi.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "engagement_type": etype,
            }
            while True:
                doc = lister.get(
                    f"{sim.base_url}/v3/engagements", params=params, headers={**auth, "Accept": "application/json"}
                ).json()
                for e in doc.get("engagements") or []:
                    if e["processing_state"] == "done" and e["duration"] > 0:  # recorded no-shows are exported too
                        ids.append(e["engagement_id"])
                key = doc.get("continuation_key")
                if not doc.get("engagements") or not isinstance(key, str) or not key.strip():
                    break
                params["continuation_key"] = key
    if len(ids) != expect:
        sys.exit(f"plain client listed {len(ids)} calls, expected {expect}")

    def one(cid: str) -> int:
        base = f"{sim.base_url}/api/v1/conversations/{cid}"
        # the same request portshift makes: without skip_summary_generation Chorus would generate a summary
        params = {"fields": FIELDS, "skip_summary_generation": "true"}
        n = len(get(base, params=params, headers={**auth, "Accept": "application/vnd.api+json"}).content)
        r = get(base + "/media", headers=auth)
        r = get(r.headers["location"])
        return n + len(r.content)

    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(one, ids[:limit]))
    elapsed = time.perf_counter() - started
    assert total > 0
    return elapsed, self_cpu() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--media-kib", type=int, default=256)
    ap.add_argument("--transfers", default="1,2,4,8,16", help="comma list (default 1,2,4,8,16)")
    ap.add_argument("--fsync", action="store_true", help="the local sink fsyncs every file (its default)")
    ap.add_argument("--no-progress", action="store_true", help="run portshift with --no-progress (no log lines)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy record each portshift run into DIR")
    ap.add_argument(
        "--dest",
        type=Path,
        metavar="DIR",
        help="make the export folder under DIR (default: the run's temporary folder); e.g. /dev/shm to leave "
        "out the file system's own cost of creating 6,000 files",
    )
    ap.add_argument(
        "--workers",
        default="",
        help="comma list of worker processes (portshift run --workers W, each with the first --transfers value); "
        "the plain client then uses W x transfers threads",
    )
    args = ap.parse_args()
    settings = [int(t) for t in args.transfers.split(",")]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    per_worker = settings[0]
    if workers:  # one row per worker count: W processes x per_worker transfers, against as many client threads
        settings = [w * per_worker for w in workers]
    of = dict(zip(settings, workers)) if workers else {}
    size = args.media_kib * KIB

    engagements, calls = tenant_with(args.calls)
    ids = [cid for cid, _ in calls]
    print(f"tenant: {engagements} engagements, {len(calls)} recorded calls; media {args.media_kib} KiB each", flush=True)
    expected_media = media_digests(ids, size)

    work = Path(tempfile.mkdtemp(prefix="portshift-bench-chorus4-"))
    sim = Simulator.start(
        work,
        "--calls",
        str(engagements),
        "--seed",
        str(SEED),
        "--private",
        "0",
        "--media-size",
        str(size),
        "--page-size",
        "100",
        "--start",
        START,
        "--end",
        END,
    )
    dest = Path(tempfile.mkdtemp(prefix="portshift-bench-chorus4-", dir=args.dest)) if args.dest else work
    out_dir = dest / "export"
    job = work / "job.toml"
    job.write_text(
        f"[job]\nsince = {START}\nuntil = {END}\n\n"
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca}"\n'
        f'token_file = "{sim.token_file}"\nartifacts = ["media", "transcript", "metadata"]\n'
        "requests_per_second = 0\n\n"
        f'[sink]\ntype = "local"\npath = "{out_dir}"\nfsync = {"true" if args.fsync else "false"}\n'
    )
    plain: dict[int, float] = {}
    cpu: dict[str, dict[int, float]] = {"plain": {}, "portshift": {}, "sim-plain": {}, "sim-portshift": {}}
    kernel: dict[int, float] = {}  # portshift's system CPU seconds (file creation, sockets)
    ps_wall: dict[int, float] = {}
    ps_job: dict[int, float] = {}
    try:
        plain_client(sim, 4, len(ids), limit=100)  # warm up (imports, TLS sessions)
        for i, t in enumerate(settings):
            order = ("plain", "portshift") if i % 2 == 0 else ("portshift", "plain")
            for what in order:
                s0 = sim.cpu()
                if what == "plain":
                    plain[t], cpu["plain"][t] = plain_client(sim, t, len(ids))
                    cpu["sim-plain"][t] = sim.cpu() - s0
                    print(
                        f"  transfers {t:2d}: plain client     {len(ids) / plain[t]:7.1f} calls/s  ({plain[t]:.1f} s; "
                        f"CPU {cpu['plain'][t]:.1f} s, simulator {cpu['sim-plain'][t]:.1f} s)",
                        flush=True,
                    )
                    continue
                prof = args.profile / f"portshift-t{t}.speedscope.json" if args.profile else None
                res = portshift_run(
                    job,
                    work / f"state-{t}.db",
                    transfers=per_worker if of else t,
                    profile=prof,
                    progress=not args.no_progress,
                    workers=of.get(t),
                )
                cpu["sim-portshift"][t] = sim.cpu() - s0
                cpu["portshift"][t] = res.cpu
                kernel[t] = res.sys_cpu
                digests = manifest_digests(out_dir)
                media = {p.split("/")[-2]: d for p, d in digests.items() if "/media." in p}
                files = sum(p.rsplit("/", 1)[-1].split(".")[0] in ("media", "transcript", "metadata") for p in digests)
                if files != 3 * len(ids) or media != expected_media:
                    sys.exit(
                        f"transfers {t}: {files} files in the manifest (expected {3 * len(ids)}), "
                        f"{sum(media.get(c) == d for c, d in expected_media.items())} media digests match"
                    )
                # set aside, removed at the end: files deleted now would make the next run's file
                # creations slower (ext4 skips inodes deleted in the last minutes: kernel CPU that
                # was charged to the next portshift run, up to ~1 ms per call)
                out_dir.rename(dest / f"export-done-{t}")
                ps_wall[t] = res.wall
                ps_job[t] = res.job
                print(
                    f"  transfers {t:2d}: portshift run    {len(ids) / res.wall:7.1f} calls/s  ({res.wall:.1f} s; "
                    f"job phase {res.job:.1f} s; CPU {res.cpu:.1f} s, of it kernel {res.sys_cpu:.1f} s, "
                    f"simulator {cpu['sim-portshift'][t]:.1f} s)",
                    flush=True,
                )
    finally:
        counts = sim.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)

    n = len(ids)
    capacity = max(n / s for s in plain.values())
    best = max(settings, key=lambda t: n / ps_wall[t])
    print()
    print(
        f"benchmark 4: {n} calls x (transcript, metadata, {args.media_kib} KiB media), Chorus simulator over HTTPS on "
        f"127.0.0.1, local sink fsync {'on' if args.fsync else 'off'}{f' under {args.dest}' if args.dest else ''}, "
        f"{'--no-progress' if args.no_progress else 'progress log lines every 10 s'} (load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores)"
    )
    head = "  workers x transfers" if of else "  transfers"
    print(f"{head}   portshift calls/s (job phase)   MB/s   CPU ms/call (kernel)   plain client calls/s   portshift / plain")
    for t in settings:
        label = f"{of[t]:>7d} x {per_worker:<9d}" if of else f"{t:9d}"
        mbs = n * (size + 4 * KIB) / ps_wall[t] / 1e6  # media plus about 4 KiB of JSON a call
        print(
            f"  {label}   {n / ps_wall[t]:17.1f} ({n / ps_job[t]:7.1f})   {mbs:5.1f}   "
            f"{1000 * cpu['portshift'][t] / n:11.1f} ({1000 * kernel[t] / n:4.1f})"
            f"   {n / plain[t]:20.1f}   {plain[t] / ps_wall[t]:5.2f}"
        )
    ratio = (n / ps_wall[best]) / capacity
    print(
        f"  simulator capacity (best plain client): {capacity:.1f} calls/s; portshift best: {n / ps_wall[best]:.1f} calls/s "
        f"at --transfers {best}"
    )
    print(f"  ratio best portshift / capacity: {ratio:.2f}   (target >= 0.7: {'met' if ratio >= 0.7 else 'MISSED'})")
    ms = {k: 1000 * min(v.values()) / n for k, v in cpu.items()}
    print(
        f"  CPU ms per call (lowest setting): portshift {ms['portshift']:.1f} (simulator serving it "
        f"{ms['sim-portshift']:.1f}), plain client {ms['plain']:.1f} (simulator serving it {ms['sim-plain']:.1f})"
    )
    print(f"  every export checked: {3 * n} files in the manifest, every media SHA-256 = the simulator's")
    print(f"  simulator {counts.removeprefix('stopped: ')}")


if __name__ == "__main__":
    main()
