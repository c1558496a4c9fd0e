"""Benchmarks 1 and 2 of issue 8 (and the big-recording figure of issue 19): one large Chorus
recording over HTTPS into the local sink, against ``curl | tee | openssl dgst && sync``.

Starts the Chorus simulator that ships with the Chorus plugin (``portshift chorus simulate``, a
real HTTPS server on 127.0.0.1 with a throw-away CA) with one call whose media is ``--size``
bytes, then runs ``--pairs`` pairs, the order alternating pair by pair:

- **baseline**: ``curl -L --cacert CA -H @header-file`` fetching that call's
  ``/api/v1/conversations/{id}/media`` (the API answers with a redirect to a signed link on the
  media host, which curl follows), piped through ``tee FILE`` into ``openssl dgst -sha256``,
  then ``sync FILE`` (fsync: the local sink fsyncs every file before it counts as written);
- **portshift**: a ``portshift run`` subprocess exporting that call (artifact ``media``) into the
  ``local`` sink with its defaults (fsync on) and ``requests_per_second = --rate`` (default 0, no
  pacing: the simulator has no limit; portshift makes 3 API requests where curl makes 1), timed
  from process start to exit (interpreter start, plugin loading, listing, state DB and manifests
  included), and from the job's first log line to exit ("job phase").

Each figure is printed with the 1-minute load average when it was taken (the machine is shared).
The ratio is baseline time / portshift time per pair, and the median of the pairs (target >= 1.0).
Peak RSS (``wait4``) of the portshift runs is compared with one run of a ``--small`` recording
(default 64 MiB) from a simulator of its own, run first (it also fills Python's bytecode cache,
as a pip install would have): flat memory means big / small <= 1.25.

Benchmark 2 (hashing ceiling): the machine's single-core SHA-256 rate from
``openssl speed -evp sha256 -bytes 16384`` and from ``hashlib`` over 1 MiB buffers, measured in
the same run, and portshift's throughput as a fraction of it.

Every copy is checked: curl's digest, the portshift manifest's digest and the simulator's own
SHA-256 of the media must agree. CPU seconds of each side (and of the simulator) are printed,
so that what bounds the figure is visible.

    .venv/bin/python benchmarks/chorus_throughput.py [--size 1GiB] [--pairs 3] [--small 64MiB] [--rate 0] [--profile DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chorus_common import MIB, RunResult, Simulator, child_env, children_cpu, manifest_digests, portshift_run

ROOT = Path(__file__).resolve().parents[1]


def fmt_rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:7.1f} MB/s"


def runs(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


# --- benchmark 2: the machine's SHA-256 ceiling ----------------------------------------------


def openssl_sha256_rate(seconds: int = 3) -> float | None:
    """Bytes/s of ``openssl speed -evp sha256 -bytes 16384`` (one core)."""
    try:
        out = subprocess.run(
            ["openssl", "speed", "-evp", "sha256", "-bytes", "16384", "-seconds", str(seconds)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        m = re.match(r"(?i)\s*sha2?-?256\s+([\d.]+)k\s*$", line)
        if m:
            return float(m.group(1)) * 1000
    return None


def hashlib_sha256_rate(seconds: float = 2.0) -> float:
    buf = os.urandom(MIB)
    h = hashlib.sha256()
    n = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(16):
            h.update(buf)
        n += 16 * MIB
    return n / elapsed


# --- benchmark 1 -----------------------------------------------------------------------------


def pick_seed() -> tuple[int, object]:
    """A seed whose one-call tenant has an exportable recorded call (with --private 0)."""
    from portshift_source_chorus.simulator import Tenant, TenantSpec

    for seed in range(100):
        tenant = Tenant(TenantSpec(calls=1, seed=seed, private_ratio=0.0))
        if tenant.exportable():
            return seed, tenant.calls[0]
    raise SystemExit("no seed with an exportable call")


def media_sha256(seed: int, call_id: str, size: int) -> str:
    from portshift_source_chorus.simulator import media_chunks

    h = hashlib.sha256()
    for piece in media_chunks(seed, call_id, size):
        h.update(piece)
    return h.hexdigest()


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(|KiB|MiB|GiB)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError("a size such as 1GiB, 256MiB")
    return int(m.group(1)) * {"": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}[m.group(2)]


def job_file(work: Path, sim: Simulator, call: object, out_dir: Path, rate: float = 0) -> Path:
    day = call.started_at.date()  # type: ignore[attr-defined]
    job = work / "job.toml"
    job.write_text(
        f"[job]\ntransfers = 1\nsince = {day}\nuntil = {day.fromordinal(day.toordinal() + 1)}\n\n"
        f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca}"\n'
        f'token_file = "{sim.token_file}"\nartifacts = ["media"]\nrequests_per_second = {rate}\n'
        f'engagement_types = ["{call.engagement_type}"]\n\n'  # type: ignore[attr-defined]
        f'[sink]\ntype = "local"\npath = "{out_dir}"\n'
    )
    return job


def exported(
    work: Path, sim: Simulator, call: object, size: int, expected: str, run: int, prof: Path | None, rate: float
) -> RunResult:
    """One ``portshift run`` of the call into a fresh folder, its digest checked."""
    out_dir = work / "export"
    res = portshift_run(job_file(work, sim, call, out_dir, rate), work / f"state-{run}.db", profile=prof)
    media = [d for p, d in manifest_digests(out_dir).items() if "/media." in p]
    if media != [expected]:
        sys.exit(f"portshift: the manifest's media SHA-256 {media} is not the simulator's {expected}")
    shutil.rmtree(out_dir)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=1024 * MIB, help="media size (default 1GiB)")
    ap.add_argument("--pairs", "--rounds", type=int, default=3, help="pairs of baseline + portshift (default 3)")
    ap.add_argument("--small", type=parse_size, default=64 * MIB, help="the small recording for peak RSS (default 64MiB)")
    ap.add_argument(
        "--rate",
        type=float,
        default=0,
        help="the Chorus source's requests_per_second (default 0: no pacing; the product default, auto, starts at 1 "
        "request a second: about 2 s for the 3 API requests portshift makes, where curl makes 1)",
    )
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy record each portshift run into DIR")
    args = ap.parse_args()
    size: int = args.size
    for tool in ("curl", "tee", "openssl", "sync", "bash"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")

    seed, call = pick_seed()
    cid = call.engagement_id  # type: ignore[attr-defined]
    print(f"SHA-256 of the {size // MIB} MiB media (simulator's generator) ...", flush=True)
    expected = media_sha256(seed, cid, size)

    print("hashing ceiling: openssl speed -evp sha256 -bytes 16384 -seconds 3; hashlib, 1 MiB buffers", flush=True)
    ossl = openssl_sha256_rate()
    hl = hashlib_sha256_rate()

    # first, so that it also warms the bytecode cache for the pairs
    small: RunResult | None = None
    if args.small:
        work = Path(tempfile.mkdtemp(prefix="portshift-bench-chorus1-small-"))
        sim = Simulator.start(work, "--calls", "1", "--seed", str(seed), "--private", "0", "--big", f"0={args.small}")
        try:
            small = exported(work, sim, call, args.small, media_sha256(seed, cid, args.small), 0, None, args.rate)
            print(
                f"  {args.small // MIB} MiB recording: portshift run {fmt_rate(args.small, small.wall)}  ({small.wall:.2f} s; "
                f"peak RSS {small.peak_rss / MIB:.1f} MiB; {load()})",
                flush=True,
            )
        finally:
            sim.stop()
            shutil.rmtree(work, ignore_errors=True)

    work = Path(tempfile.mkdtemp(prefix="portshift-bench-chorus1-"))
    sim = Simulator.start(work, "--calls", "1", "--seed", str(seed), "--private", "0", "--big", f"0={size}")
    base: list[float] = []
    base_cpu: list[float] = []
    ps: list[RunResult] = []
    ratios: list[float] = []
    sim_cpu: dict[str, list[float]] = {"baseline": [], "portshift": []}
    try:
        header = work / "auth-header"
        fd = os.open(header, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"Authorization: {sim.token_file.read_text().strip()}\n")
        url = f"{sim.base_url}/api/v1/conversations/{cid}/media"
        copy = work / "curl-copy.bin"
        shell = (
            'set -o pipefail; curl -sS --fail -L --cacert "$CA" -H @"$HDR" "$URL" | tee "$OUT" | openssl dgst -sha256'
            ' && sync "$OUT"'
        )

        def baseline() -> None:
            c0, s0, t0 = children_cpu(), sim.cpu(), time.perf_counter()
            res = subprocess.run(
                ["bash", "-c", shell],
                capture_output=True,
                text=True,
                env=child_env(CA=str(sim.ca), HDR=str(header), URL=url, OUT=str(copy)),
            )
            elapsed = time.perf_counter() - t0
            if res.returncode != 0:
                sys.exit(f"baseline failed: {res.stderr[-2000:]}")
            got = res.stdout.strip().rsplit(" ", 1)[-1]
            if got != expected or copy.stat().st_size != size:
                sys.exit("baseline: the downloaded bytes differ from the simulator's media")
            copy.unlink()
            base.append(elapsed)
            base_cpu.append(children_cpu() - c0)
            sim_cpu["baseline"].append(sim.cpu() - s0)
            print(
                f"  pair {r + 1}: baseline  curl | tee | openssl dgst  {fmt_rate(size, elapsed)}  ({elapsed:.2f} s; {load()})",
                flush=True,
            )

        def pipeline() -> None:
            s0 = sim.cpu()
            prof = args.profile / f"portshift-pair{r + 1}.speedscope.json" if args.profile else None
            res = exported(work, sim, call, size, expected, r, prof, args.rate)
            sim_cpu["portshift"].append(sim.cpu() - s0)
            ps.append(res)
            print(
                f"  pair {r + 1}: portshift run                    {fmt_rate(size, res.wall)}  ({res.wall:.2f} s; "
                f"job phase {res.job:.2f} s; peak RSS {res.peak_rss / MIB:.1f} MiB; {load()})",
                flush=True,
            )

        for r in range(args.pairs):
            for step in (baseline, pipeline) if r % 2 == 0 else (pipeline, baseline):
                step()
            ratios.append(base[-1] / ps[-1].wall)
            print(f"  pair {r + 1}: ratio portshift / baseline {ratios[-1]:.2f}", flush=True)
    finally:
        counts = sim.stop()
        shutil.rmtree(work, ignore_errors=True)

    b = statistics.median(base)
    p = statistics.median(r.wall for r in ps)
    pj = statistics.median(r.job for r in ps)
    ratio = statistics.median(ratios)
    print()
    print(
        f"benchmark 1: one {size // MIB} MiB Chorus recording, simulator over HTTPS on 127.0.0.1, "
        f"{args.pairs} alternating pairs ({load()} on {os.cpu_count()} cores at the end)"
    )
    print(
        f"  baseline curl -L | tee | openssl dgst; sync  {fmt_rate(size, b)}   (runs: "
        + ", ".join(f"{t:.2f}" for t in base)
        + " s)"
    )
    print(
        f"  portshift run (whole process)                {fmt_rate(size, p)}   (runs: "
        + ", ".join(f"{r.wall:.2f}" for r in ps)
        + " s)"
    )
    print(f"  portshift run (job phase)                    {fmt_rate(size, pj)}")
    print(
        "  ratio portshift / baseline per pair: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + f"; median {ratio:.2f} (job phase {b / pj:.2f})   (target >= 1.0: {'met' if ratio >= 1.0 else 'MISSED'})"
    )
    gib = size / (1024 * MIB)
    print(
        f"  CPU seconds per GiB: baseline (curl+tee+openssl+sync) {statistics.median(base_cpu) / gib:.2f}, "
        f"portshift {statistics.median(r.cpu for r in ps) / gib:.2f}; simulator while serving them "
        f"{statistics.median(sim_cpu['baseline']) / gib:.2f} / {statistics.median(sim_cpu['portshift']) / gib:.2f}"
    )
    big_rss = max(r.peak_rss for r in ps)
    if small is not None:
        rss = big_rss / small.peak_rss
        print(
            f"  peak RSS: {args.small // MIB} MiB recording {small.peak_rss / MIB:.1f} MiB, {size // MIB} MiB recording "
            f"{big_rss / MIB:.1f} MiB (highest of {len(ps)}): ratio {rss:.3f}   "
            f"(target <= 1.25: {'met' if rss <= 1.25 else 'MISSED'})"
        )
    print("  every copy checked: curl's digest = portshift manifest = the simulator's SHA-256")
    print(f"  simulator {counts.removeprefix('stopped: ')}")
    print()
    print("benchmark 2: single-core SHA-256 ceiling, same run")
    rate_p = size / p
    for name, rate in (("openssl speed -evp sha256 (16 KiB blocks)", ossl), ("hashlib.sha256, 1 MiB buffers", hl)):
        if rate is None:
            print(f"  {name:42s} unavailable")
            continue
        print(f"  {name:42s} {rate / 1e6:7.1f} MB/s   portshift = {rate_p / rate:.2f} of it (job phase {size / pj / rate:.2f})")


if __name__ == "__main__":
    main()
