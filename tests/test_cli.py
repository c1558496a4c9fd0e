"""The command line, as real subprocesses: exit codes, one-line errors, jobs, verify, plugins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portshift.errors import ExitCode

from .support import PORTSHIFT, sha256sum_check


def portshift(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("PORTSHIFT_DEBUG", None)
    return subprocess.run([*PORTSHIFT, *args], capture_output=True, text=True, env=full_env, input=input, cwd=cwd, timeout=120)


def write_job(tmp_path: Path, count: int = 4, extra_source: str = "", media_size: int = 5000) -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 2\n\n[source]\ntype = "example"\ncount = {count}\nmedia_size = {media_size}\n{extra_source}\n'
        f'[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n'
    )
    return job


def export_root(tmp_path: Path) -> Path:
    roots = sorted((tmp_path / "out").glob("*/portshift-manifest.txt"))
    assert roots, "no manifest written"
    return roots[-1].parent


def test_run_then_jobs_then_verify(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    state = tmp_path / "state.db"
    r = portshift("run", "--config", str(job), "--state", str(state))
    assert r.returncode == 0, r.stderr
    assert "complete — 8 files" in r.stdout and "manifest sha256:" in r.stdout
    root = export_root(tmp_path)
    assert sha256sum_check(root).returncode == 0

    jobs = portshift("jobs", "--state", str(state), "--json")
    rows = json.loads(jobs.stdout)
    assert len(rows) == 1 and rows[0]["status"] == "complete" and rows[0]["file_count"] == 8
    show = portshift("jobs", "show", rows[0]["id"][:12], "--state", str(state), "--json")
    assert json.loads(show.stdout)["manifest_sha256"] in r.stdout
    human = portshift("jobs", "show", rows[0]["id"], "--state", str(state))
    assert "manifest sha256" in human.stdout and "8 done" not in human.stdout and "4 done" in human.stdout

    ok = portshift("verify", str(root))
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK: 9 ok, 0 differ, 0 missing, 0 extra")


def test_verify_reports_differ_missing_extra_and_a_hand_edited_manifest(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    assert portshift("run", "--config", str(job), "--state", str(tmp_path / "s.db")).returncode == 0
    root = export_root(tmp_path)
    media = sorted(root.rglob("media.mp3"))
    media[0].write_bytes(media[0].read_bytes() + b"!")
    media[1].unlink()
    (root / "stray.txt").write_text("not exported by portshift")
    r = portshift("verify", str(root), "--json")
    assert r.returncode == ExitCode.VERIFY_FAILED
    report = json.loads(r.stdout)
    assert report["differ"] == [media[0].relative_to(root).as_posix()]
    assert report["missing"] == [media[1].relative_to(root).as_posix()]
    assert report["extra"] == ["stray.txt"]
    manifest = root / "portshift-manifest.txt"
    manifest.write_text(manifest.read_text() + "not a checksum line\n")
    edited = portshift("verify", str(root))
    assert edited.returncode == ExitCode.VERIFY_FAILED and "is not a valid entry" in edited.stdout


def test_bad_input_is_one_line_with_a_documented_exit_code(tmp_path: Path) -> None:
    cases = [
        (["run", "--config", str(tmp_path / "missing.toml")], "does not exist"),
        (["run", "--config", str(write_job(tmp_path)), "--transfers", "0"], "between 1 and 64"),
        (["run", "--config", str(write_job(tmp_path)), "--since", "yesterday-ish"], "is not a date"),
        (["run", "--config", str(write_job(tmp_path)), "--since", "2024-02-01", "--until", "2024-01-01"], "before"),
        (["run", "--config", str(write_job(tmp_path)), "--state", str(tmp_path / "no" / "such" / "s.db")], "does not exist"),
        (["verify", str(tmp_path)], "no portshift-manifest.txt"),
    ]
    for args, needle in cases:
        r = portshift(*args)
        assert r.returncode == ExitCode.USAGE, (args, r.returncode, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 2, r.stderr


def test_a_secret_in_the_job_file_is_refused_and_never_echoed(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[source]\ntype = "example"\n\n[sink]\ntype = "local"\npath = "x"\nfsynk = true\n')
    r = portshift("check", "--config", str(job))
    assert r.returncode == ExitCode.USAGE and "unknown key 'fsynk'" in r.stderr and "valid keys: fsync, path" in r.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = portshift("run", "--config", str(tmp_path / "nope.toml"), env={"PORTSHIFT_DEBUG": "1"})
    assert r.returncode == ExitCode.USAGE
    r2 = subprocess.run(
        [*PORTSHIFT, "run", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        env={**os.environ, "PORTSHIFT_DEBUG": "1"},
    )
    assert "Traceback" in r2.stderr and "does not exist" in r2.stderr


def test_plugins_json_lists_builtins_with_option_schemas() -> None:
    r = portshift("plugins", "--json")
    info = json.loads(r.stdout)
    assert {"example"} <= set(info["sources"]) and {"local"} <= set(info["sinks"])
    assert info["sinks"]["local"]["options"]["properties"]["path"]["description"]
    assert "sha256sum" in info["manifest_writers"]


def _fake_distribution(site: Path, dist: str, module: str, code: str, entry: str) -> None:
    (site / f"{module}.py").write_text(code)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[portshift]\n{entry} = {module}\n")


DUP_SINK = """
from portshift import hookimpl
from portshift.default_plugins.local_sink import LocalSink

@hookimpl
def register_sinks(register):
    register("local", LocalSink.__class__("Other", (LocalSink,), {}))
"""


def test_plugin_loading_broken_duplicate_and_allow_list(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(site, "portshift-broken", "portshift_broken", "raise ImportError('needs libfoo')\n", "broken")
    _fake_distribution(site, "portshift-dupe", "portshift_dupe", DUP_SINK, "dupe")
    env = {"PYTHONPATH": str(site)}
    r = portshift("plugins", env={**env, "PORTSHIFT_LOAD_PLUGINS": "portshift-broken"})
    assert r.returncode == 0
    assert "portshift-broken" in r.stderr and "failed to load" in r.stderr and "Traceback" not in r.stderr
    job = write_job(tmp_path)
    dup = portshift("check", "--config", str(job), env={**env, "PORTSHIFT_LOAD_PLUGINS": "portshift-dupe"})
    assert dup.returncode == ExitCode.USAGE
    assert "two plugins register the sink 'local'" in dup.stderr and "portshift-dupe" in dup.stderr
    assert "portshift.default_plugins.local_sink" in dup.stderr
    none = portshift("plugins", "--json", env={**env, "PORTSHIFT_LOAD_PLUGINS": ""})
    names = {p["name"] for p in json.loads(none.stdout)["plugins"]}
    assert names == {
        "portshift.default_plugins.local_sink",
        "portshift.default_plugins.example_source",
        "portshift.default_plugins.sha256sum_manifest",
        "portshift.default_plugins.bagit_manifest",
        "portshift.default_plugins.key_file",
    }


LAZY_PLUGIN = """
from portshift import hookimpl

@hookimpl
def register_sinks(register):
    register("lazy", "portshift_lazy_impl:LazySink")
    register("missing", "portshift_lazy_gone:Nothing")
"""

LAZY_IMPL = """
import sys
from portshift.default_plugins.local_sink import LocalSink

sys.stderr.write("LAZY-IMPL-IMPORTED\\n")


class LazySink(LocalSink):
    description = "a sink registered by reference"
"""


def test_a_class_registered_by_reference_is_imported_only_when_a_job_uses_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(site, "portshift-lazy", "portshift_lazy", LAZY_PLUGIN, "lazy")
    (site / "portshift_lazy_impl.py").write_text(LAZY_IMPL)
    env = {"PYTHONPATH": str(site), "PORTSHIFT_LOAD_PLUGINS": "portshift-lazy"}
    other = portshift("run", "--config", str(write_job(tmp_path)), "--state", str(tmp_path / "a.db"), "--no-progress", env=env)
    assert other.returncode == 0, other.stderr
    assert "LAZY-IMPL-IMPORTED" not in other.stderr  # a job with another sink never imports it
    lazy_job = tmp_path / "lazy.toml"
    lazy_job.write_text(write_job(tmp_path).read_text().replace('type = "local"', 'type = "lazy"'))
    used = portshift("run", "--config", str(lazy_job), "--state", str(tmp_path / "b.db"), "--no-progress", env=env)
    assert used.returncode == 0, used.stderr
    assert used.stderr.count("LAZY-IMPL-IMPORTED") == 1
    missing_job = tmp_path / "missing.toml"
    missing_job.write_text(write_job(tmp_path).read_text().replace('type = "local"', 'type = "missing"'))
    gone = portshift("check", "--config", str(missing_job), env=env)
    assert gone.returncode == ExitCode.USAGE and "Traceback" not in gone.stderr
    assert "the sink 'missing' could not be loaded from portshift_lazy_gone:Nothing (ModuleNotFoundError" in gone.stderr
    assert "reinstall the plugin" in gone.stderr
    listed = portshift("plugins", env=env)  # lists what loads and names what does not, without failing
    assert listed.returncode == 0 and "a sink registered by reference" in listed.stdout
    assert "FAILED TO LOAD: the sink 'missing' could not be loaded" in listed.stdout


def test_secrets_from_stdin_must_be_json(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    r = portshift("check", "--config", str(job), "--secrets-from-stdin", input="not json")
    assert r.returncode == ExitCode.USAGE and "not a JSON document" in r.stderr


def test_sigterm_stops_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    job = write_job(tmp_path, count=30, media_size=8_000_000, extra_source="chunk_size = 4096\n")
    state = tmp_path / "s.db"
    proc = subprocess.Popen(
        [*PORTSHIFT, "run", "--config", str(job), "--state", str(state), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = list((tmp_path / "out").rglob("media.mp3")) if (tmp_path / "out").exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "interrupted" in err and "Traceback" not in err
    assert not list((tmp_path / "out").rglob("*.part")), "a temporary file was left behind"
    assert not list((tmp_path / "out").rglob("portshift-manifest.txt"))
    r = portshift("run", "--config", str(job), "--state", str(state), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming job" in r.stderr and "recordings already exported" in r.stderr
    assert sha256sum_check(export_root(tmp_path)).returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="prctl is Linux-only")
def test_help_of_every_command_works() -> None:
    for cmd in (
        ["--help"],
        ["run", "--help"],
        ["check", "--help"],
        ["jobs", "--help"],
        ["jobs", "show", "--help"],
        ["plugins", "--help"],
        ["verify", "--help"],
    ):
        r = portshift(*cmd)
        assert r.returncode == 0 and "Usage:" in r.stdout, cmd
