"""Benchmarks 1 and 2 of issue 8: one large Chorus recording over HTTPS into the local sink.

Starts the Chorus simulator that ships with the Chorus plugin (``portshift chorus simulate``, a
real HTTPS server on 127.0.0.1 with a throw-away CA) with one call whose media is ``--size``
bytes, then, in the same run and round by round in alternating order:

- **baseline**: ``curl -L --cacert CA -H @header-file`` fetching that call's
  ``/api/v1/conversations/{id}/media`` (the API answers with a redirect to a signed link on the
  media host, which curl follows), piped through ``tee FILE`` into ``openssl dgst -sha256``,
  then ``sync FILE`` (fsync: the local sink fsyncs every file before it counts as written);
- **portshift**: a ``portshift run`` subprocess exporting that call (artifact ``media``) into the
  ``local`` sink with its defaults (fsync on), timed from process start to exit (interpreter
  start, plugin loading, listing, state DB and manifests included), and from the job's first log
  line to exit ("job phase").

Benchmark 2 (hashing ceiling): the machine's single-core SHA-256 rate from
``openssl speed -evp sha256 -bytes 16384`` and from ``hashlib`` over 1 MiB buffers, measured in
the same run, and portshift's throughput as a fraction of it.

Every copy is checked: curl's digest, the portshift manifest's digest and the simulator's own
SHA-256 of the media must agree. CPU seconds of each side (and of the simulator) are printed,
so that what bounds the figure is visible. Target: portshift / baseline >= 0.8.

    .venv/bin/python benchmarks/chorus_throughput.py [--size 1GiB] [--rounds 2] [--profile DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from portshift.testing import PORTSHIFT

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- shared by the three Chorus benchmarks ---------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: no token, no CA or proxy variables from this machine,
    and only the Chorus plugin loaded (a Chorus -> local install)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PORTSHIFT_")
        and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
        and not k.lower().endswith("_proxy")
    }
    env["PORTSHIFT_LOAD_PLUGINS"] = "portshift-source-chorus"
    env.update(extra)
    return env


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Simulator:
    """``portshift chorus simulate`` as a subprocess (the way a user starts it)."""

    proc: subprocess.Popen[str]
    work: Path
    base_url: str
    ca: Path
    token_file: Path
    info: dict[str, object] = field(default_factory=dict)

    @classmethod
    def start(cls, work: Path, *args: str) -> Simulator:
        work.mkdir(parents=True, exist_ok=True)
        info_file, token_file, ca = work / "sim-info.json", work / "sim-token", work / "sim-ca.pem"
        proc = subprocess.Popen(
            [*PORTSHIFT, "chorus", "simulate", *args, "--ca-out", str(ca), "--token-out", str(token_file)]
            + ["--info-out", str(info_file)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=work,
        )
        deadline = time.monotonic() + 60
        while not info_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read() if proc.stdout else ""
                sys.exit(f"the Chorus simulator did not start: {out[-2000:]}")
            time.sleep(0.05)
        info = json.loads(info_file.read_text())
        return cls(proc, work, str(info["base_url"]), ca, token_file, info)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> str:
        """Stop it (Ctrl-C) and return its last line (its request counts)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                out, _ = self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
        else:
            out = self.proc.stdout.read() if self.proc.stdout else ""
        lines = [line for line in (out or "").splitlines() if line.startswith("stopped:")]
        return lines[-1] if lines else ""


@dataclass
class RunResult:
    wall: float  #: process start to exit
    job: float  #: the job's first log line ("exporting ...") to exit
    cpu: float  #: user + system seconds of the portshift process
    stderr: str


def portshift_run(
    job: Path,
    state: Path,
    *,
    transfers: int | None = None,
    profile: Path | None = None,
    log_level: str = "info",
    env: dict[str, str] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> RunResult:
    """One ``portshift run`` subprocess, timed; exits the benchmark if the job is not complete.

    Run as cron or a Kubernetes Job would: no terminal, so ``portshift run`` logs a progress
    line every 10 s (its default without a TTY); ``progress=False`` passes ``--no-progress``."""
    argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--log-level", log_level]
    argv += [] if progress else ["--no-progress"]
    if transfers is not None:
        argv += ["--transfers", str(transfers)]
    if workers is not None:
        argv += ["--workers", str(workers)]  # CPU: wait4 counts the worker processes it waited for
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or "py-spy"
        argv = [spy, "record", "--rate", "100", "--format", "speedscope", "-o", str(profile), "--", *argv]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_started = None
    err: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        if job_started is None and ": exporting " in line:
            job_started = time.perf_counter()
        err.append(line)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = "".join(err)
    if proc.returncode != 0 or "complete" not in out:
        sys.exit(f"portshift run failed ({proc.returncode}):\n{out[-1500:]}\n{text[-3000:]}")
    return RunResult(ended - started, ended - (job_started or started), usage.ru_utime + usage.ru_stime, text)


def manifest_digests(root: Path) -> dict[str, str]:
    """path -> SHA-256 from every portshift-manifest.txt under root."""
    out: dict[str, str] = {}
    for manifest in root.rglob("portshift-manifest.txt"):
        for line in manifest.read_text().splitlines():
            digest, _, path = line.partition("  ")
            out[path] = digest
    return out


def fmt_rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:7.1f} MB/s"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=1024 * MIB, help="media size (default 1GiB)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of baseline + portshift (default 2)")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy record each portshift run into DIR")
    args = ap.parse_args()
    size: int = args.size
    for tool in ("curl", "tee", "openssl", "sync", "bash"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")

    seed, call = pick_seed()
    cid = call.engagement_id  # type: ignore[attr-defined]
    day = call.started_at.date()  # type: ignore[attr-defined]
    print(f"SHA-256 of the {size // MIB} MiB media (simulator's generator) ...", flush=True)
    expected = media_sha256(seed, cid, size)

    print("hashing ceiling: openssl speed -evp sha256 -bytes 16384 -seconds 3; hashlib, 1 MiB buffers", flush=True)
    ossl = openssl_sha256_rate()
    hl = hashlib_sha256_rate()

    work = Path(tempfile.mkdtemp(prefix="portshift-bench-chorus1-"))
    sim = Simulator.start(work, "--calls", "1", "--seed", str(seed), "--private", "0", "--big", f"0={size}")
    base: list[float] = []
    base_cpu: list[float] = []
    ps: list[RunResult] = []
    sim_cpu: dict[str, list[float]] = {"baseline": [], "portshift": []}
    try:
        header = work / "auth-header"
        fd = os.open(header, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"Authorization: {sim.token_file.read_text().strip()}\n")
        url = f"{sim.base_url}/api/v1/conversations/{cid}/media"
        job = work / "job.toml"
        out_dir = work / "export"
        job.write_text(
            f"[job]\ntransfers = 1\nsince = {day}\nuntil = {day.fromordinal(day.toordinal() + 1)}\n\n"
            f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca}"\n'
            f'token_file = "{sim.token_file}"\nartifacts = ["media"]\n'
            f'engagement_types = ["{call.engagement_type}"]\n\n'  # type: ignore[attr-defined]
            f'[sink]\ntype = "local"\npath = "{out_dir}"\n'
        )
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
                f"  round {r + 1}: baseline  curl | tee | openssl dgst   {fmt_rate(size, elapsed)}  ({elapsed:.2f} s)", flush=True
            )

        def pipeline() -> None:
            s0 = sim.cpu()
            prof = args.profile / f"portshift-round{r + 1}.speedscope.json" if args.profile else None
            res = portshift_run(job, work / f"state-{r}.db", profile=prof)
            sim_cpu["portshift"].append(sim.cpu() - s0)
            digests = manifest_digests(out_dir)
            media = [d for p, d in digests.items() if "/media." in p]
            if media != [expected]:
                sys.exit(f"portshift: the manifest's media SHA-256 {media} is not the simulator's {expected}")
            shutil.rmtree(out_dir)
            ps.append(res)
            print(
                f"  round {r + 1}: portshift run                     {fmt_rate(size, res.wall)}  ({res.wall:.2f} s; "
                f"job phase {res.job:.2f} s)",
                flush=True,
            )

        for r in range(args.rounds):
            for step in (baseline, pipeline) if r % 2 == 0 else (pipeline, baseline):
                step()
    finally:
        counts = sim.stop()
        shutil.rmtree(work, ignore_errors=True)

    b = statistics.median(base)
    p = statistics.median(r.wall for r in ps)
    pj = statistics.median(r.job for r in ps)
    print()
    print(
        f"benchmark 1: one {size // MIB} MiB Chorus recording, simulator over HTTPS on 127.0.0.1, "
        f"median of {args.rounds} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
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
    ratio = b / p
    print(
        f"  ratio portshift / baseline: {ratio:.2f} whole process, {b / pj:.2f} job phase   "
        f"(target >= 0.8: {'met' if ratio >= 0.8 else 'MISSED'})"
    )
    gib = size / (1024 * MIB)
    print(
        f"  CPU seconds per GiB: baseline (curl+tee+openssl+sync) {statistics.median(base_cpu) / gib:.2f}, "
        f"portshift {statistics.median(r.cpu for r in ps) / gib:.2f}; simulator while serving them "
        f"{statistics.median(sim_cpu['baseline']) / gib:.2f} / {statistics.median(sim_cpu['portshift']) / gib:.2f}"
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
