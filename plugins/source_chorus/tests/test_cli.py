"""`portshift chorus simulate`: a real process, its flags, its files, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from portshift_source_chorus import ChorusOptions, ChorusSource
from portshift_source_chorus.cli import parse_size, parse_sizes

from portshift.errors import ArtifactMissing, RecordingPending, SkipRecording
from portshift.secrets import Secret
from portshift.testing import clean_env, run_portshift

from .conftest import CANARY, WINDOW, read


def start(tmp_path: Path, *flags: str, token: str | None = CANARY) -> tuple[subprocess.Popen[str], dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PORTSHIFT_LOAD_PLUGINS"] = "portshift-source-chorus"
    if token:
        env["PORTSHIFT_CHORUS_TOKEN"] = token
    info = tmp_path / "info.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portshift",
            "chorus",
            "simulate",
            "--info-out",
            str(info),
            "--ca-out",
            str(tmp_path / "ca.pem"),
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    while not info.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the simulator did not start: {out} {err}")
        time.sleep(0.05)
    return proc, json.loads(info.read_text())


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return out


def test_simulate_serves_until_sigterm(tmp_path: Path) -> None:
    proc, info = start(
        tmp_path,
        "--calls",
        "12",
        "--seed",
        "3",
        "--media-size",
        "10KiB-40KiB",
        "--media-mode",
        "json",
        "--not-found",
        "0.3",
        "--throttle",
        "0.5",
        "--retry-after",
        "none",
        "--page-size",
        "2,3",
    )
    try:
        assert info["ca_bundle"] == str((tmp_path / "ca.pem").resolve())
        source = ChorusSource(
            ChorusOptions(
                base_url=info["base_url"],
                token=Secret(CANARY, "token"),
                ca_bundle=info["ca_bundle"],
                requests_per_second=0,
                backoff_base=0.01,
            )
        )
        listed = list(source.recordings(WINDOW))
        # calls not processed yet or with nothing recorded are listed too, marked with their outcome
        recs = [r for r in listed if r.skipped is None]
        assert len(recs) == info["exportable"] > 0 and len(listed) > len(recs)
        skipped = exported = 0
        for rec in recs:
            try:
                for artifact in source.artifacts(rec):
                    data, opened = read(artifact)
                    if artifact.name == "media":
                        assert 10 * 1024 <= len(data) <= 40 * 1024
            except SkipRecording as e:
                assert e.reason == "not_found"
                skipped += 1
            else:
                exported += 1
        assert skipped and exported
    finally:
        out = stop(proc)
    assert f"base_url     {info['base_url']}" in out
    assert "token        from PORTSHIFT_CHORUS_TOKEN" in out
    assert CANARY not in out
    assert "answered 429" in out and "stopped:" in out


def test_simulate_switches_the_tenant_behaviours(tmp_path: Path) -> None:
    """The issue-22 behaviours from the command line: ignored date filters, media 404s with the
    transcript kept, unprocessed calls, a fixed-window rate limit; the export reads only."""
    proc, info = start(
        tmp_path,
        "--calls",
        "30",
        "--seed",
        "5",
        "--media-size",
        "1KiB",
        "--ignore-date-filters",
        "--media-missing",
        "0.3",
        "--unprocessed",
        "0.3",
        "--rate-window",
        "30/1",
    )
    try:
        source = ChorusSource(
            ChorusOptions(
                base_url=info["base_url"],
                token=Secret(CANARY, "token"),
                ca_bundle=info["ca_bundle"],
                backoff_base=0.05,
                requests_per_second=0,
            )
        )
        listed = list(source.recordings(WINDOW))
        pending = [r for r in listed if isinstance(r.skipped, RecordingPending)]
        missing = exported = 0
        for rec in listed:
            if rec.skipped is not None:
                continue
            try:
                arts = {a.name: a for a in source.artifacts(rec)}
            except SkipRecording:
                continue
            try:
                read(arts["media"])
            except ArtifactMissing as e:
                assert e.reason == "media_not_found"
                missing += 1
            read(arts["transcript"])
            exported += 1
        assert pending and missing and exported > missing
    finally:
        out = stop(proc)
    assert "0 requests that would have changed the tenant" in out


def test_simulate_makes_a_token_when_none_is_given(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    proc, info = start(tmp_path, "--calls", "3", "--token-out", str(token_file), token=None)
    try:
        token = token_file.read_text().strip()
        assert len(token) > 20
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        ChorusSource(ChorusOptions(base_url=info["base_url"], token_file=token_file, ca_bundle=info["ca_bundle"])).check()
    finally:
        out = stop(proc)
    assert f"token_file   {token_file}" in out and token not in out


@pytest.mark.parametrize(
    ("text", "size"), [("65536", 65536), ("512KiB", 512 * 1024), ("2GiB", 2 * 1024**3), ("1.5MB", 1_500_000)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_size_ranges() -> None:
    assert parse_sizes("1KiB-2KiB") == (1024, 2048)
    import click

    with pytest.raises(click.BadParameter):
        parse_sizes("2KiB-1KiB")
    with pytest.raises(click.BadParameter):
        parse_size("lots")


def test_the_demo_flow(tmp_path: Path) -> None:
    """What `make demo` does: simulate with --job-out, `portshift run` that job file, stop the
    simulator, `sha256sum -c` the export."""
    job, export = tmp_path / "demo" / "job.toml", tmp_path / "demo-export"
    proc, info = start(
        tmp_path, "--calls", "40", "--seed", "1", "--media-size", "64KiB-1MiB", "--job-out", str(job), "--export-to", str(export)
    )
    try:
        deadline = time.monotonic() + 10
        while not job.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = clean_env(PORTSHIFT_CHORUS_TOKEN=CANARY, PORTSHIFT_LOAD_PLUGINS="portshift-source-chorus")
        r = run_portshift("run", "--config", job, "--state", tmp_path / "state.db", "--no-progress", env=env, timeout=120)
    finally:
        stop(proc)
    assert r.exit_code == 0, r
    (root,) = [p.parent for p in export.glob("*/portshift-manifest.txt")]
    check = subprocess.run(["sha256sum", "-c", "portshift-manifest.txt"], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    names = {p.name.split(".")[0] for p in root.rglob("*") if p.is_file() and "portshift-manifest" not in p.name}
    assert names == {"media", "transcript", "captions", "metadata"}
    assert len(list(root.rglob("media.*"))) == info["exportable"]
