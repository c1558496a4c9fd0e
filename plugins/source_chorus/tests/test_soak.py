"""Fault soak: every kind of source fault at once, plus SIGKILLs, until the job is complete.

A real `portshift run` subprocess exports a simulated tenant over HTTPS into a local folder while
the simulator injects 429s, 500s, resets and truncations mid-body, slow answers and expired media
links; the run is SIGKILLed after a seeded number of files has landed, and re-run (a run that ends
with exit 3, some calls failed after their retries, is re-run as an operator would) until it ends
with exit 0. Then: GNU `sha256sum -c --strict` passes, every visible call's four files are exactly
the tenant's bytes, each listed once, nothing else lies under the export root, hidden calls are
absent, and `PRAGMA integrity_check` is ok.

`make test` runs a small version (one tenant of 60 calls, 3 kills); `make soak`
(PORTSHIFT_SOAK=1) runs 3,000 calls with 20 kills: thousands of faults. It prints one line of
figures, which docs/reliability.md records.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from portshift_source_chorus.options import DEFAULT_FIELDS
from portshift_source_chorus.simulator import ChorusSimulator, Fault, Faults

from .conftest import CANARY, EXT, WINDOW, tenant

SOAK = os.environ.get("PORTSHIFT_SOAK", "") not in ("", "0")
CALLS = 3000 if SOAK else 60
KILLS = 20 if SOAK else 3
SEED = 20261129
ARTIFACTS = ("media", "transcript.json", "metadata.json", "captions.vtt")


def faults() -> Faults:
    """Each kind hits its share of the resources once (a resource faulted on every try could never
    finish: that case is `test_a_media_that_always_arrives_truncated_is_never_recorded_as_done`)."""
    return Faults(
        throttle=Fault(ratio=0.1, times=1),
        retry_after="garbage",  # backoff instead of a 1 s Retry-After per 429
        server_error=Fault(ratio=0.1, times=1),
        reset=Fault(ratio=0.15, times=1, on=("media", "conversation")),
        truncate=Fault(ratio=0.15, times=1, on=("media", "conversation")),
        slow=Fault(ratio=0.03, times=1, on=("media", "conversation")),
        slow_seconds=0.3,
        expired_link=Fault(ratio=0.2, times=1, on=("media_api",)),
    )


def command(job: Path, state: Path) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env.update(PORTSHIFT_LOAD_PLUGINS="portshift-source-chorus", PORTSHIFT_RETRY_BASE="0.01", PORTSHIFT_CHORUS_TOKEN=CANARY)
    return [sys.executable, "-m", "portshift", "run", "--config", str(job), "--state", str(state), "--no-progress"], env


def files_in(out: Path) -> int:
    n = 0
    stack = [str(out)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif not entry.name.endswith(".part"):
                        n += 1
        except FileNotFoundError:
            pass
    return n


def run_until_killed(job: Path, state: Path, out: Path, after_files: int) -> int | None:
    """Start a run and SIGKILL it once ``after_files`` files landed; its exit code if it ended first."""
    argv, env = command(job, state)
    log = job.with_name("stderr.txt")
    with log.open("w") as sink:  # a file, not a pipe nobody reads while waiting (a full pipe blocks the run)
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if files_in(out) >= after_files:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        raise AssertionError("a run neither finished nor reached its kill point in 10 minutes")
    err = log.read_text()
    assert proc.returncode in (0, 3), f"run ended with {proc.returncode}: {err[-3000:]}"
    return proc.returncode


def test_an_export_through_every_source_fault_and_repeated_sigkills_completes_exactly(tmp_path: Path) -> None:
    with ChorusSimulator(tenant(calls=CALLS, seed=SEED % 1000, media_size=(1, 200_000)), token=CANARY) as sim:
        sim.configure(faults=faults())
        out, state, job = tmp_path / "export", tmp_path / "state.db", tmp_path / "job.toml"
        job.write_text(
            "[job]\ntransfers = 4\nretries = 2\n"
            f'since = "{WINDOW.start.date().isoformat()}"\nuntil = "{WINDOW.end.date().isoformat()}"\n\n'
            '[source]\ntype = "chorus"\n'
            f'base_url = "{sim.base_url}"\nca_bundle = "{sim.ca_path}"\n'
            "requests_per_second = 0\nretries = 2\nbackoff_base = 0.01\nbackoff_cap = 0.05\nread_timeout = 2\n"
            "window_days = 20\n\n"
            f'[sink]\ntype = "local"\npath = "{out}"\nfsync = false\n'
        )
        t = sim.tenant
        expected = t.exportable(WINDOW.start, WINDOW.end)
        visible = [c for c in expected if not c.hidden]
        total = 4 * len(visible)
        rng = random.Random(SEED)
        kill_at = sorted(rng.randint(1, total - 1) for _ in range(KILLS))

        started = time.monotonic()
        kills = runs = partial = 0
        for n in kill_at:
            code = run_until_killed(job, state, out, n)
            if code is None:
                kills += 1
            else:
                partial += code == 3
            runs += 1
        for _ in range(8):  # then run without kills until complete (calls that failed are retried)
            argv, env = command(job, state)
            r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            assert r.returncode in (0, 3), r.stdout[-2000:] + r.stderr[-3000:]
            runs += 1
            if r.returncode == 0:
                break
            partial += 1
        assert r.returncode == 0, "the job did not complete in 8 runs after the kills"
        elapsed = time.monotonic() - started
        injected = sim.injected()

    assert kills >= 1, "no run was killed: the kill points all came after the end"
    (root,) = [p for p in out.iterdir() if p.is_dir()]
    check = subprocess.run(["sha256sum", "--strict", "-c", "portshift-manifest.txt"], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr
    lines = [ln for ln in (root / "portshift-manifest.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    listed = [ln.split("  ", 1)[1] for ln in lines]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert len(listed) == total + 1  # and portshift-manifest.json
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert on_disk == set(listed) | {"portshift-manifest.txt"}, "files the manifest does not list, or missing files"
    lost = 0
    for c in visible:
        d = c.started_at
        folder = root / f"{d:%Y}/{d:%m}/{d:%d}/{c.engagement_id}"
        media = folder / f"media.{EXT[c.content_type]}"
        lost += hashlib.sha256(media.read_bytes()).hexdigest() != t.media_sha256(c.engagement_id)
        lost += (folder / "transcript.json").read_bytes() != t.conversation_bytes(c.engagement_id, set(DEFAULT_FIELDS))
        lost += json.loads((folder / "metadata.json").read_bytes()) != t.engagement(c)
        lost += not (folder / "captions.vtt").read_bytes().startswith(b"WEBVTT\n")
    assert lost == 0, f"{lost} files differ from the tenant's"
    hidden = {c.engagement_id for c in expected if c.hidden}
    assert not {Path(p).parent.name for p in listed} & hidden
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("select status from jobs").fetchall() == [("complete",)]
    faults_total = sum(injected.values()) + kills
    for kind in ("throttle", "server_error", "reset", "truncate", "expired_link"):
        assert injected[kind] > 0, f"no {kind} fault was met: the soak proves nothing about it"
    print(
        f"\nsoak: {len(visible)} calls, {faults_total} faults injected ({kills} SIGKILL, "
        + ", ".join(f"{n} {k}" for k, n in sorted(injected.items()))
        + f"), {runs - 1} resumed runs ({partial} ended partial), {len(listed)} files verified by sha256sum -c, "
        f"0 lost, {elapsed:.0f} s"
    )
