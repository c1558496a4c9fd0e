"""What `portshift run` tells people and machines: the JSON report (its schema is the table in
docs/cli.md), JSON log records with fields, a dry run that writes nothing, `jobs show` by prefix
or suffix, and `check` refusing a job file whose window is empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

from portshift.errors import ExitCode

from .test_cli import portshift, write_job

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _documented_report_fields() -> set[str]:
    text = DOCS.read_text()
    table = text[text.index("### The JSON report") :]
    table = table[: table.index("\n## ")]
    first_cells = {m for row in re.findall(r"^\| ([^|]+) \|", table, re.M) for m in re.findall(r"`(\w+)`", row)}
    return first_cells | set(re.findall(r"`(\w+)`", table))


def test_the_json_report_carries_what_the_docs_promise(tmp_path: Path) -> None:
    job = write_job(tmp_path, count=3)
    r = portshift("run", "--config", str(job), "--state", str(tmp_path / "s.db"), "--no-progress", "--report", "json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)  # stdout is the JSON document and nothing else
    assert report["status"] == "complete" and report["exit_code"] == 0 and report["report_version"] == 1
    assert report["recordings"] == {"exported": 3, "already_exported": 0, "skipped": 0, "pending": 0, "failed": 0}
    assert report["files"] == 6 and report["bytes"] > 0 and report["duration_seconds"] >= 0
    root = tmp_path / "out" / report["export_root"]
    assert (root / "portshift-manifest.txt").exists()
    assert report["manifest"]["key"] == f"{report['export_root']}/portshift-manifest.txt"
    assert f"job {report['job_id']}: complete" in r.stderr  # the human summary moved to stderr
    text = DOCS.read_text()
    rows = text[text.index("### The JSON report") :]
    top = {m for row in re.findall(r"^\| ([^|]+) \|", rows[: rows.index("\n## ")], re.M) for m in re.findall(r"`(\w+)`", row)}
    assert set(report) <= top, set(report) - top  # every top-level key has its own row
    assert set(report["recordings"]) <= _documented_report_fields()

    again = portshift("run", "--config", str(job), "--state", str(tmp_path / "s.db"), "--no-progress", "--report", "json")
    assert json.loads(again.stdout)["status"] == "up-to-date"


def test_a_bad_job_file_still_gets_a_json_report_and_a_json_fatal_record(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[source]\ntype = "example"\ncount = -1\n\n[sink]\ntype = "local"\npath = "out"\n')
    r = portshift("--log-format", "json", "run", "--config", str(job), "--report", "json", "--state", str(tmp_path / "s.db"))
    assert r.returncode == ExitCode.USAGE
    report = json.loads(r.stdout)
    assert report["status"] == "error" and report["exit_code"] == ExitCode.USAGE and "count" in report["message"]
    records = [json.loads(line) for line in r.stderr.splitlines()]
    assert records[-1]["event"] == "fatal" and records[-1]["exit_code"] == ExitCode.USAGE
    assert "Traceback" not in r.stderr and not (tmp_path / "s.db").exists()


def test_json_log_records_carry_the_job_the_phase_and_end_with_job_finished(tmp_path: Path) -> None:
    job = write_job(tmp_path, count=2)
    r = portshift("--log-format", "json", "run", "--config", str(job), "--state", str(tmp_path / "s.db"), "--no-progress")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stderr.splitlines()]
    started = next(i for i, rec in enumerate(records) if "exporting" in rec["message"])
    job_id = records[-1]["job"]
    assert all(rec.get("job") == job_id and rec.get("phase") for rec in records[started + 1 :]), records
    final = records[-1]
    assert final["event"] == "job finished" and final["status"] == "complete" and final["manifest_sha256"]
    assert final["recordings"]["exported"] == 2 and final["files"] == 4


def test_a_dry_run_writes_nothing_and_lists_what_would_be_exported(tmp_path: Path) -> None:
    job = write_job(tmp_path, count=3)
    state = tmp_path / "state" / "s.db"
    state.parent.mkdir()
    r = portshift("run", "--config", str(job), "--state", str(state), "--dry-run", "--report", "json")
    assert r.returncode == 0, r.stderr
    assert list(state.parent.iterdir()) == [] and not (tmp_path / "out").exists()
    report = json.loads(r.stdout)
    assert report["status"] == "dry-run" and [i["recording_id"] for i in report["dry_run"]] == [
        "ex0000000000",
        "ex0000000001",
        "ex0000000002",
    ]
    assert report["dry_run"][0]["size"] == 5000 and report["dry_run"][0]["started_at"].startswith("2024-01-01")
    assert "3 to export" in r.stderr and "ex0000000002" in r.stderr


def test_jobs_show_takes_a_prefix_or_a_suffix_and_lists_the_candidates_when_ambiguous(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    for n in (2, 3):
        job = write_job(tmp_path, count=n)
        assert portshift("run", "--config", str(job), "--state", db, "--no-progress", "--new").returncode == 0
    listed = json.loads(portshift("jobs", "--state", db, "--json").stdout)
    ids = [j["id"] for j in listed]
    assert len(ids) == 2
    by_suffix = portshift("jobs", "show", ids[0][-6:], "--state", db, "--json")
    assert by_suffix.returncode == 0 and json.loads(by_suffix.stdout)["id"] == ids[0]
    by_prefix = portshift("jobs", "show", ids[1][:17] if ids[0][:17] != ids[1][:17] else ids[1], "--state", db, "--json")
    assert by_prefix.returncode == 0 and json.loads(by_prefix.stdout)["id"] == ids[1]
    common = ids[0][:4]  # the year: both match
    ambiguous = portshift("jobs", "show", common, "--state", db)
    assert ambiguous.returncode == ExitCode.USAGE
    assert "matches 2 jobs" in ambiguous.stderr and ids[0] in ambiguous.stderr and ids[1] in ambiguous.stderr


def test_check_refuses_a_job_file_whose_window_is_in_the_wrong_order(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nsince = 2026-02-01\nuntil = 2026-01-01\n\n[source]\ntype = "example"\n\n'
        f'[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n'
    )
    r = portshift("check", "--config", str(job))
    assert r.returncode == ExitCode.USAGE
    assert "since (2026-02-01) is not before until (2026-01-01)" in r.stderr and "ok" not in r.stdout
