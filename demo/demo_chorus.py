"""The Chorus half of `make demo`: start the simulator (a real HTTPS server on 127.0.0.1 with
its own throw-away CA), export it through the real Chorus plugin into ./demo-export, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CALLS = 36


def run_chorus_demo(out: Path, state: Path, env: dict[str, str], run_job: Callable[[str, dict[str, str], Path], None]) -> None:
    work = Path(tempfile.mkdtemp(prefix="portshift-demo-sim-"))
    info_file, token_file, ca_file = work / "info.json", work / "token", work / "ca.pem"
    sim_env = {k: v for k, v in env.items() if k != "PORTSHIFT_CHORUS_TOKEN"}
    print(f"$ portshift chorus simulate --calls {CALLS} --media-size 64KiB-1MiB ...   (HTTPS on 127.0.0.1)", flush=True)
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portshift",
            "chorus",
            "simulate",
            "--calls",
            str(CALLS),
            "--media-size",
            "64KiB-1MiB",
            "--private",
            "0",
            "--ca-out",
            str(ca_file),
            "--token-out",
            str(token_file),
            "--info-out",
            str(info_file),
        ],
        env=sim_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not info_file.exists():
            if sim.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"demo: the Chorus simulator did not start: {sim.stderr.read() if sim.stderr else ''}")
            time.sleep(0.1)
        time.sleep(0.1)
        info = json.loads(info_file.read_text())
        job = (
            "[job]\ntransfers = 4\nsince = 2024-01-01\nuntil = 2024-04-02\n\n"
            f'[source]\ntype = "chorus"\nbase_url = "{info["base_url"]}"\nca_bundle = "{ca_file}"\n'
            f'token_file = "{token_file}"\nartifacts = ["media", "transcript", "captions", "metadata"]\n'
            "requests_per_second = 50\n\n"
            f'[sink]\ntype = "local"\npath = "{out}"\n'
        )
        run_job(job, env, state)
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
        for f in (info_file, token_file, ca_file):
            if f.exists():
                f.unlink()
        os.rmdir(work)
        print("demo: simulator stopped", flush=True)
