"""Checks on what a ``portshift run`` exported, shared by the sink plugins' job-level tests: a run
through faults that left some recordings failed, a clean re-run that must write only what is
missing, and a manifest whose every entry must re-hash to its SHA-256."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .cli import CliResult, DoneFile, checked_failures, query_state

MANIFEST = "portshift-manifest.txt"


def complete_recordings(done: Mapping[str, DoneFile], files_per_recording: int = 2) -> set[str]:
    """The recordings with ``files_per_recording`` files recorded as done (the example source
    writes two: media and metadata)."""
    per_recording: dict[str, int] = {}
    for f in done.values():
        per_recording[f.recording_id] = per_recording.get(f.recording_id, 0) + 1
    return {rid for rid, n in per_recording.items() if n == files_per_recording}


def partial_run(result: CliResult, state: Path, recordings: int) -> tuple[str, str, dict[str, str]]:
    """For a ``portshift run --report json`` that should have exited 3 (some recordings failed):
    checks the exit code, that the state file holds one job, ``partial``, and that between 1 and
    ``recordings`` recordings failed, listed alike in the report, on stderr and in the state
    (:func:`checked_failures`). Returns the job id, its export root and the failed recordings."""
    assert result.exit_code == 3, str(result)
    ((job_id, root, status),) = query_state(state, "select id, export_root, status from jobs")
    assert status == "partial"
    failed = checked_failures(result, state)
    assert 1 <= len(failed) <= recordings
    return str(job_id), str(root), failed


def wrote_only_the_missing(
    before: Mapping[str, DoneFile], after: Mapping[str, DoneFile], failed: Iterable[str], files: int
) -> set[str]:
    """After a re-run: ``files`` files are done, those done ``before`` are unchanged, and every
    file added belongs to a recording of ``failed``. Returns the keys of the files added."""
    assert len(after) == files
    assert {k: v for k, v in after.items() if k in before} == dict(before), "the re-run changed what was done"
    added = set(after) - set(before)
    assert {after[k].recording_id for k in added} == set(failed), "the re-run wrote files of other recordings"
    return added


def verified_manifest(read: Callable[[str], bytes | None], entries: int) -> set[str]:
    """Reads the export's ``portshift-manifest.txt`` with ``read(path under the export root)``,
    checks that it has ``entries`` entries and that every file it lists reads back with its
    SHA-256. Returns every path the export holds by it: the entries and the manifest itself."""
    manifest = (read(MANIFEST) or b"").decode()
    listed = [line.split("  ", 1) for line in manifest.splitlines() if line and not line.startswith("#")]
    assert len(listed) == entries, manifest
    for digest, path in listed:
        data = read(path)
        assert data is not None and hashlib.sha256(data).hexdigest() == digest, f"{path}: differs from the manifest"
    return {path for _, path in listed} | {MANIFEST}
