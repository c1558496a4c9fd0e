"""Issue 19: ``requests_per_second = "auto"`` against a limit it is not told.

The Chorus simulator (HTTPS, loopback) enforces a hidden limit of L requests per second on its API:
a token bucket (``--burst``, default 2, the simulator's default) answering 429 with ``Retry-After``
or without it (``--no-retry-after``); with ``--halve-after S`` the limit halves S seconds in. It
runs in a child process of its own (``--serve``: no GIL shared with the client) that writes the
time of every request and every 429 out when stopped. The Chorus source's own client
(``requests_per_second = "auto"``, the other options at their defaults) is driven by ``--threads``
threads that list a page again and again for ``--seconds``, so the limiter, not the work, is the
bottleneck: the request path of an export (limiter, 429 handling, the ``Retry-After`` pause
shared by every thread), without the sink.

Printed, from ``--warmup`` seconds on (figures from the simulator's own counters):

- ``achieved/L``: requests the simulator accepted per second, each divided by the limit in force
  when it came (target >= 0.9);
- ``429/min``: the simulator's rate-limit 429s per minute (target <= 1); for a halving limit also
  from 30 s after the halving;
- ``longest above``: the longest run of 429s (429s less than 5 s apart, from the first to the
  last), the time the client kept going past the limit; target: at most one back-off step (the
  pause the client takes after a 429: ``Retry-After`` 1 s here, or the backoff of ``backoff_base``
  1 s without it);
- the rate the client ended at, and the limit it found.

With ``--workers N`` the client is N processes of ``--threads`` threads each, sharing one request
budget in a real SQLite job state as the workers of a job do (the core's ``share_source_rate``):
one leads the search, the others follow; the client rate printed is the budget's.

    .venv/bin/python benchmarks/chorus_auto_rate.py --limit 5 [--seconds 180] [--no-retry-after]
    .venv/bin/python benchmarks/chorus_auto_rate.py --limit 20 --halve-after 120 --seconds 240
    .venv/bin/python benchmarks/chorus_auto_rate.py --limit 20 --workers 4 --threads 4
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "source_chorus"))

from portshift_source_chorus import ChorusOptions, ChorusSource  # noqa: E402
from portshift_source_chorus.listing import query_for  # noqa: E402
from portshift_source_chorus.simulator import ChorusSimulator, Faults  # noqa: E402

from portshift import Secret  # noqa: E402


def episodes(times: list[float], gap: float = 5.0) -> list[tuple[float, float, int]]:
    """Runs of 429s less than ``gap`` apart: (first, last, count)."""
    out: list[tuple[float, float, int]] = []
    for t in sorted(times):
        if out and t - out[-1][1] < gap:
            first, _, n = out[-1]
            out[-1] = (first, t, n + 1)
        else:
            out.append((t, t, 1))
    return out


def serve(spec: dict[str, Any], work: Path) -> None:
    """The simulator's process: serve until SIGTERM, then write every request's and 429's time."""
    faults = Faults(
        rate_limit=spec["limit"],
        rate_limit_burst=spec["burst"],
        rate_limit_retry_after=spec["retry_after"],
        rate_limit_halve_after=spec["halve"],
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ChorusSimulator(faults=faults, calls=40, seed=3) as sim:
        sim.reset()  # the limit's clock starts now
        info = {"base_url": sim.base_url, "token": sim.token, "ca": str(sim.ca_path), "limit_since": time.monotonic()}
        (work / "sim-info.tmp").write_text(json.dumps(info))
        (work / "sim-info.tmp").replace(work / "sim-info.json")
        stop.wait()
        with sim.stats.lock:
            out = {"api_times": list(sim.stats.api_times), "limited_times": list(sim.stats.rate_limited_times)}
    (work / "sim-stats.json").write_text(json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=float, required=True, help="the simulator's hidden limit L, requests/s")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--warmup", type=float, default=60.0)
    ap.add_argument("--halve-after", type=float, default=0.0, help="the limit halves this long after the start")
    ap.add_argument("--no-retry-after", action="store_true", help="429s without Retry-After")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--burst", type=float, default=2.0, help="the simulator's bucket size (1: no two requests closer than 1/L)")
    ap.add_argument("--start", type=float, default=0.0, help="a remembered rate to start from (0: none, search)")
    ap.add_argument("--trace", type=Path, help="write the client's rate every 0.25 s and the time of every 429 here (JSON)")
    ap.add_argument("--workers", type=int, default=0, help="N client processes sharing the budget in a job state")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(json.loads(args.serve), Path(args.work))
        return 0
    if args.client:
        return client(json.loads(args.client), Path(args.work))

    with tempfile.TemporaryDirectory(prefix="auto-rate-") as tmp:
        work = Path(tmp)
        spec = {"limit": args.limit, "burst": args.burst, "retry_after": not args.no_retry_after, "halve": args.halve_after}
        child = subprocess.Popen([sys.executable, __file__, "--limit", "0", "--serve", json.dumps(spec), "--work", tmp])
        info_path = work / "sim-info.json"
        while not info_path.exists():
            if child.poll() is not None:
                raise SystemExit("the simulator did not start")
            time.sleep(0.05)
        info = json.loads(info_path.read_text())
        started = time.monotonic()
        halving = info["limit_since"] + args.halve_after - started if args.halve_after else None
        stop = started + args.seconds
        samples: list[tuple[float, float]] = []  # (t, client rate)
        if args.workers:
            state_path = work / "state.db"
            from portshift.state import State

            State.open(state_path).close()  # created and migrated once, before the workers open it
            spec = {"info": info, "state": str(state_path), "threads": args.threads, "stop_in": args.seconds, "start": args.start}
            clients = [
                subprocess.Popen([sys.executable, __file__, "--limit", "0", "--client", json.dumps(spec), "--work", tmp])
                for _ in range(args.workers)
            ]
            while time.monotonic() < stop:
                time.sleep(0.25)
                samples.append((time.monotonic() - started, budget_rate(state_path)))
            for c in clients:
                c.wait(120)
            ends = [json.loads(line) for line in (work / "clients.jsonl").read_text().splitlines()]
            lead = sorted((e for e in ends if e["found"] is not None), key=lambda e: -e["led"])
            found = lead[0]["found"] if lead else None
            ended_at = samples[-1][1] if samples else 0.0
        else:
            source = ChorusSource(chorus_options(info))
            pacing = source.client.pacing
            if args.start:
                pacing.resume(args.start)  # type: ignore[union-attr]
            threads = [threading.Thread(target=work_loop, args=(source, stop), daemon=True) for _ in range(args.threads)]
            for t in threads:
                t.start()
            while time.monotonic() < stop:
                time.sleep(0.25)
                samples.append((time.monotonic() - started, pacing.rate))
            for t in threads:
                t.join()
            source.close()
            found, ended_at, ends = pacing.auto.found, pacing.rate, []  # type: ignore[union-attr]
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        stats = json.loads((work / "sim-stats.json").read_text())
    sent = sorted(t - started for t in stats["api_times"])
    refused = sorted(t - started for t in stats["limited_times"])

    def limit_at(t: float) -> float:
        return args.limit / 2 if halving is not None and t >= halving else args.limit

    warm = args.warmup
    span = args.seconds - warm
    # every request is in ``sent``, a 429 of the limit in ``refused`` too (timed a moment later)
    ratio = (sum(1.0 / limit_at(t) for t in sent if t >= warm) - sum(1.0 / limit_at(t) for t in refused if t >= warm)) / span
    per_min = sum(1 for t in refused if t >= warm) / (span / 60)
    runs = episodes([t for t in refused if t >= warm])
    if args.trace is not None:
        args.trace.write_text(json.dumps({"rate": samples, "refused": refused, "limit": args.limit, "halving": halving}))
    longest = max((b - a for a, b, _ in runs), default=0.0)
    mode = "no Retry-After" if args.no_retry_after else "Retry-After"
    who = f"{args.workers} workers x {args.threads} threads" if args.workers else f"{args.threads} threads"
    halves = f", halving at {args.halve_after:g} s" if args.halve_after else ""
    print(
        f"L = {args.limit:g} req/s (burst {args.burst:g}, {mode}{halves}), {who}, {args.seconds:g} s, "
        f"load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    print(f"  from {warm:g} s on: achieved/L = {ratio:.3f} (target >= 0.9)")
    print(f"  429/min = {per_min:.2f} (target <= 1); 429s in the first {warm:g} s: {sum(1 for t in refused if t < warm)}")
    if halving is not None:
        after = halving + 30
        n = sum(1 for t in refused if t >= after)
        print(f"  429/min from {after:g} s on = {n / ((args.seconds - after) / 60):.2f}")
        hs = [a for a, _, _ in runs if a >= halving]
        if hs:
            first = hs[0]
            below = next((t for t, r in samples if t > first and r <= args.limit / 2), None)
            under = "never" if below is None else f"{below:.1f} s"
            print(f"  limit halved at {halving:.1f} s: first 429 at {first:.1f} s, client rate under the new limit at {under}")
    print(
        f"  longest run of 429s = {longest:.2f} s ({len(runs)} runs, {max((n for *_, n in runs), default=0)} 429s at most "
        "in one; target <= one back-off step, 1 s)"
    )
    print(f"  client ended at {ended_at:.3g} req/s; limit found {found if found is None else round(found, 3)}")
    if ends:
        led = ", ".join(f"{e['led']:.2f}" for e in ends)
        print(
            f"  workers: share of the run each led: {led} (one at a time: sum {sum(e['led'] for e in ends):.2f}); "
            f"{sum(e['requests'] for e in ends)} requests sent"
        )
    return 0


FILTERS = query_for(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 4, 1, tzinfo=timezone.utc), "meeting")


def chorus_options(info: dict[str, Any]) -> ChorusOptions:
    return ChorusOptions(
        base_url=info["base_url"], token=Secret(info["token"], "token"), ca_bundle=info["ca"], requests_per_second="auto"
    )


def work_loop(source: ChorusSource, stop: float) -> int:
    n = 0
    while time.monotonic() < stop:
        source.client.list_page(dict(FILTERS))
        n += 1
    return n


def budget_rate(path: Path) -> float:
    """The shared budget's rate in the job state (0 before any worker set it)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("select rate from rate_slots where key = 'source:bench'").fetchone()
        return float(row[0]) if row and row[0] is not None else 0.0
    except sqlite3.Error:
        return 0.0


def client(spec: dict[str, Any], work: Path) -> int:
    """One worker: the Chorus client's limiter shared through the job state, as the core shares it."""
    from concurrent.futures import ThreadPoolExecutor

    from portshift.pipeline.shared_rate import share_source_rate
    from portshift.state import State

    stop = time.monotonic() + spec["stop_in"]
    if os.environ.get("AUTO_RATE_LOG"):  # each worker's rate decisions on stderr
        import logging

        logging.basicConfig(level=logging.INFO, format=f"%(relativeCreated)7.0f ms {os.getpid()} %(name)s: %(message)s")
    with State.open(Path(spec["state"])) as state:
        source = ChorusSource(chorus_options(spec["info"]))
        share_source_rate(source, state, "source:bench")
        pacing = source.client.pacing
        if spec["start"]:
            pacing.resume(spec["start"])  # type: ignore[union-attr]
        led = 0
        with ThreadPoolExecutor(spec["threads"] + 1) as pool:
            loops = [pool.submit(work_loop, source, stop) for _ in range(spec["threads"])]
            while time.monotonic() < stop - 1:  # how long this worker led (the lead may pass as workers end)
                time.sleep(0.5)
                led += pacing.leads()  # type: ignore[union-attr]
            requests = sum(f.result() for f in loops)
        leads = pacing.leads()  # type: ignore[union-attr]
        share = led / max(1, int((spec["stop_in"] - 1) / 0.5))
        end = {"leads": leads, "led": share, "found": pacing.auto.found if leads else None, "requests": requests}  # type: ignore[union-attr]
        source.client.close()
    with (work / "clients.jsonl").open("a") as f:
        f.write(json.dumps(end) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
