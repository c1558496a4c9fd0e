"""Benchmark 5 of issue 8: a rate-limited Chorus source.

The Chorus simulator enforces ``--rate`` R requests per second on its API (a token bucket, burst
2, answering 429 with ``Retry-After`` beyond it); ``portshift run`` exports ``--calls`` calls
(transcript, metadata, 64 KiB media: two API requests per call, plus the listing; the media host
is not limited) with ``requests_per_second = R`` in the job file and the other Chorus options at
their defaults. Figures, from the simulator's own counters:

- the achieved rate of API requests the simulator answered (not 429) per second, after the first
  ten seconds and over the whole job, divided by R (target >= 0.9);
- the 429s the simulator sent after the first ten seconds (target: none; the client-side limiter,
  not the server, must do the pacing), and in the first ten seconds.

``portshift chorus simulate`` prints only totals when it stops, so this script runs the simulator
from its Python API in a child process of its own (``--serve``) that samples the counters
(``Stats.api_times``, ``Stats.rate_limited``) every 50 ms and writes them out when stopped.

Runs the export twice, against a fresh simulator each time: with the Chorus source's default
``burst`` and with ``burst = 1`` (once only when the default is 1); ``--burst`` to choose.

    .venv/bin/python benchmarks/chorus_rate_limit.py [--rate 10] [--seconds 60] [--burst N ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chorus_common import child_env, manifest_digests, portshift_run  # noqa: E402

SEED = 0
START, END = "2024-01-01", "2024-04-01"
WARMUP = 10.0  #: seconds from the first API request that are not "steady state"


def serve(spec: dict[str, object]) -> None:
    """Child process: the simulator with a rate limit, its counters sampled until SIGTERM."""
    from datetime import datetime, timezone

    from portshift_source_chorus.simulator import ChorusSimulator, Faults, Paging, Tenant, TenantSpec

    work = Path(str(spec["work"]))
    tenant = Tenant(
        TenantSpec(
            calls=int(spec["engagements"]),
            seed=SEED,
            private_ratio=0.0,  # type: ignore[call-overload]
            media_size=int(spec["media_size"]),  # type: ignore[call-overload]
            start=datetime.fromisoformat(START).replace(tzinfo=timezone.utc),
            end=datetime.fromisoformat(END).replace(tzinfo=timezone.utc),
        )
    )
    sim = ChorusSimulator(
        tenant,
        faults=Faults(rate_limit=float(spec["rate"])),  # type: ignore[arg-type]
        paging=Paging(page_sizes=(100,)),
        ca_path=work / "sim-ca.pem",
    )
    sim.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fd = os.open(work / "sim-token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(sim.token + "\n")
    (work / "sim-info.tmp").write_text(json.dumps({"base_url": sim.base_url}))
    (work / "sim-info.tmp").replace(work / "sim-info.json")
    samples: list[tuple[float, int]] = []  # (monotonic time, 429s sent by the rate limit so far)
    while not stop.wait(0.05):
        samples.append((time.monotonic(), sim.stats.rate_limited))
    sim.stop()
    st = sim.stats
    out = {
        "api_times": st.api_times,
        "samples": samples,
        "rate_limited": st.rate_limited,
        "statuses": dict(st.statuses),
        "requests": dict(st.requests),
    }
    (work / "sim-stats.json").write_text(json.dumps(out))


def exportable_tenant(calls: int) -> int:
    from portshift_source_chorus.simulator import Tenant, TenantSpec

    total = int(calls * 1.3) + 50
    while True:
        ok = sorted(Tenant(TenantSpec(calls=total, seed=SEED, private_ratio=0.0)).exportable(), key=lambda c: c.index)
        if len(ok) >= calls:
            return ok[calls - 1].index + 1
        total *= 2


def default_burst() -> int:
    from portshift_source_chorus.options import ChorusOptions

    return int(ChorusOptions.model_fields["burst"].default)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=10.0, help="R: API requests per second the simulator allows")
    ap.add_argument("--seconds", type=float, default=60.0, help="about how long each export should last (sets --calls)")
    ap.add_argument("--calls", type=int, help="recorded calls to export (default: R x seconds / 2)")
    ap.add_argument(
        "--burst",
        type=int,
        action="append",
        help="the Chorus source's `burst` option; repeatable (default: the option's default, then 1 if that default is not 1)",
    )
    ap.add_argument("--transfers", type=int, default=4)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    rate = args.rate
    calls = args.calls or max(20, int(rate * args.seconds / 2))
    engagements = exportable_tenant(calls)
    bursts = args.burst or sorted({default_burst(), 1}, reverse=True)
    results = [run_once(rate, calls, engagements, b, args.transfers) for b in bursts]
    print()
    print(
        f"benchmark 5: rate-limited Chorus simulator, R = {rate:g} req/s (server bucket burst 2, 429 + Retry-After); "
        f"portshift requests_per_second = {rate:g}, --transfers {args.transfers}; {calls} calls "
        f"(transcript, metadata, 64 KiB media) per export; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores"
    )
    for r in results:
        print(r)


def run_once(rate: float, calls: int, engagements: int, burst: int, transfers: int) -> str:
    """One export against a fresh simulator; the figures as printable lines."""
    work = Path(tempfile.mkdtemp(prefix="portshift-bench-chorus5-"))
    spec = {"work": str(work), "engagements": engagements, "media_size": 64 * 1024, "rate": rate}
    sim = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)], env=child_env())
    label = f"burst = {burst}" + (" (the option's default)" if burst == default_burst() else "")
    try:
        deadline = time.monotonic() + 60
        while not (work / "sim-info.json").exists():
            if sim.poll() is not None or time.monotonic() > deadline:
                sys.exit("the simulator did not start")
            time.sleep(0.05)
        base_url = json.loads((work / "sim-info.json").read_text())["base_url"]
        out_dir = work / "export"
        job = work / "job.toml"
        job.write_text(
            f"[job]\ntransfers = {transfers}\nsince = {START}\nuntil = {END}\n\n"
            f'[source]\ntype = "chorus"\nbase_url = "{base_url}"\nca_bundle = "{work / "sim-ca.pem"}"\n'
            f'token_file = "{work / "sim-token"}"\nartifacts = ["media", "transcript", "metadata"]\n'
            f"requests_per_second = {rate}\nburst = {burst}\n\n"
            f'[sink]\ntype = "local"\npath = "{out_dir}"\nfsync = false\n'
        )
        print(
            f"{label}: exporting {calls} calls with requests_per_second = {rate:g} from a simulator enforcing "
            f"{rate:g} req/s (about {2 * calls / rate:.0f} s) ...",
            flush=True,
        )
        res = portshift_run(job, work / "state.db")
        files = sum(p.rsplit("/", 1)[-1].split(".")[0] in ("media", "transcript", "metadata") for p in manifest_digests(out_dir))
        if files != 3 * calls:
            sys.exit(f"{files} files exported, expected {3 * calls}")
    finally:
        if sim.poll() is None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
    stats = json.loads((work / "sim-stats.json").read_text())
    shutil.rmtree(work, ignore_errors=True)

    times = sorted(stats["api_times"])
    first, last = times[0], times[-1]
    steady_from = first + WARMUP

    def limited_at(t: float) -> int:
        n = 0
        for when, count in stats["samples"]:
            if when > t:
                break
            n = count
        return n

    total_429 = stats["rate_limited"]
    early_429 = limited_at(steady_from)
    late_429 = total_429 - early_429
    steady = [t for t in times if t >= steady_from]
    # every 429 is an API request too: answered = requests - 429s
    steady_ok = len(steady) - late_429
    steady_rate = steady_ok / (last - steady_from) if last > steady_from else float("nan")
    whole_rate = (len(times) - total_429) / (last - first)
    seen_by_client = len(re.findall(r"HTTP 429", res.stderr))
    lines = [
        f"  {label}: {calls} calls exported ({3 * calls} files) in {res.wall:.1f} s; {len(times)} API requests over "
        f"{last - first:.1f} s",
        f"    achieved rate after the first {WARMUP:.0f} s: {steady_rate:6.2f} req/s answered = {steady_rate / rate:.2f} x R"
        f"   (target >= 0.9: {'met' if steady_rate >= 0.9 * rate else 'MISSED'})",
        f"    achieved rate over the whole job:   {whole_rate:6.2f} req/s answered = {whole_rate / rate:.2f} x R",
        f"    429s after the first {WARMUP:.0f} s: {late_429}   (target 0: {'met' if late_429 == 0 else 'MISSED'}); "
        f"in the first {WARMUP:.0f} s: {early_429}; retries after a 429 logged by portshift: {seen_by_client}",
    ]
    print("\n".join(lines), flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
