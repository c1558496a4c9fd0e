"""The conformance kit fails the sinks it exists to catch, and passes a right one.

``kit_broken/contract_runs.py`` runs the kit against each sink of ``kit_broken/broken_sinks.py``
in a real pytest subprocess; its JUnit report says which kit test failed for which sink.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portshift.default_plugins.local_sink import LocalOptions, LocalReader, LocalSink
from portshift.testing import (
    CliResult,
    ReaderContract,
    checked_failures,
    clean_env,
    done_files,
    failed_in_state,
    put_bytes,
    query_state,
    run_portshift,
)

HERE = Path(__file__).resolve().parent
RUNS = HERE / "kit_broken" / "contract_runs.py"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """class name -> kit test -> "passed" / "failed" / "skipped"."""
    report = tmp_path_factory.mktemp("kit") / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(RUNS), "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         f"--junitxml={report}", f"--rootdir={HERE / 'kit_broken'}", f"--confcutdir={HERE / 'kit_broken'}",
         "-o", "addopts=--import-mode=prepend"],
        capture_output=True, text=True, cwd=HERE / "kit_broken", timeout=600,
    )  # fmt: skip
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    out: dict[str, dict[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        cls = case.get("classname", "").rsplit(".", 1)[-1]
        state = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            state = "failed"
        elif case.find("skipped") is not None:
            state = "skipped"
        out.setdefault(cls, {})[case.get("name", "")] = state
    assert out, done.stdout[-3000:]
    return out


def failed(outcomes: dict[str, dict[str, str]], cls: str) -> set[str]:
    return {name for name, state in outcomes[cls].items() if state != "passed"}


def test_a_right_sink_passes_every_kit_test(outcomes: dict[str, dict[str, str]]) -> None:
    assert len(outcomes["TestFolderSink"]) >= 20
    assert failed(outcomes, "TestFolderSink") == set()


def test_a_sqlite_connection_shared_across_threads_fails_the_concurrency_test(outcomes: dict[str, dict[str, str]]) -> None:
    bad = failed(outcomes, "TestSharedSqliteSink")
    assert "test_concurrent_puts" in bad
    assert "test_many_chunks_declared" not in bad, "one thread at a time works: the kit must name the real defect"


def test_buffering_whole_files_fails_the_memory_test(outcomes: dict[str, dict[str, str]]) -> None:
    assert failed(outcomes, "TestBufferingSink") == {"test_memory_stays_bounded"}


def test_a_sink_that_confirms_nothing_fails(outcomes: dict[str, dict[str, str]]) -> None:
    bad = failed(outcomes, "TestNoChecksumSink")
    assert {"test_zero_bytes", "test_one_byte", "test_many_chunks_declared", "test_journal_is_optional"} <= bad
    assert "test_failure_mid_stream_leaves_nothing" not in bad


def test_a_put_that_always_crashes_fails_the_failure_tests(outcomes: dict[str, dict[str, str]]) -> None:
    bad = failed(outcomes, "TestCrashingSink")
    assert {
        "test_failure_mid_stream_leaves_nothing",
        "test_small_failure_mid_stream_leaves_nothing",
        "test_size_mismatch_at_the_end_is_refused",
        "test_sha256_mismatch_at_the_end_is_refused",
        "test_more_bytes_than_declared_is_refused",
        "test_retry_after_failure_reopens",
    } <= bad


def test_assuming_a_journal_fails(outcomes: dict[str, dict[str, str]]) -> None:
    bad = failed(outcomes, "TestJournalAssumedSink")
    assert {"test_journal_is_optional", "test_zero_bytes", "test_many_chunks_declared"} <= bad
    assert "test_journal_entries_end_with_their_operation" not in bad


def test_journal_entries_never_ended_fail(outcomes: dict[str, dict[str, str]]) -> None:
    assert failed(outcomes, "TestJournalLeakSink") == {
        "test_journal_entries_end_with_their_operation",
        "test_recover_after_a_crash",
    }


def test_a_reader_that_returns_whole_objects_fails(outcomes: dict[str, dict[str, str]]) -> None:
    assert failed(outcomes, "TestWholeObjectReader") == {"test_open_streams_what_was_stored"}


class TestLocalReaderContract(ReaderContract):
    """The built-in local reader passes the reader contract."""

    @pytest.fixture
    def reader(self, tmp_path: Path) -> Iterator[LocalReader]:
        reader = LocalReader(LocalOptions(path=tmp_path / "dest"))
        yield reader
        reader.close()

    @pytest.fixture
    def store(self, tmp_path: Path) -> Callable[[str, bytes], None]:
        sink = LocalSink(LocalOptions(path=tmp_path / "dest"))
        return lambda key, data: None if put_bytes(sink, key, data, len(data)) else None


def test_every_name_of_the_former_module_is_still_importable() -> None:
    """portshift.testing was one module; plugins import these names from it."""
    import portshift.testing as kit

    for name in (
        "SourceFailure", "pattern_bytes", "chunked", "failing_chunks", "put_bytes", "unique_key", "SinkContract",
        "SourceContract", "env_flag", "FaultProxy", "Artifact", "PutResult", "Sink", "Source", "Window", "SinkError",
        "HashingStream",
    ):  # fmt: skip
        assert hasattr(kit, name), name
    for name in kit.__all__:
        assert hasattr(kit, name), name


def test_the_cli_runner_runs_the_real_command_and_reads_its_json_report(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[source]\ntype = "example"\ncount = 2\nmedia_size = 1000\n\n[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n'
    )
    args = ("run", "--config", job, "--state", tmp_path / "state.db", "--no-progress")
    done = run_portshift(*args, env=clean_env(HOME=str(tmp_path)))
    assert done.exit_code == 0, done
    assert done.report is None and done.failed_recordings() == {}
    again = run_portshift(*args, "--new", "--report", "json", env=clean_env(HOME=str(tmp_path)))
    assert again.exit_code == 0, again
    assert again.report is not None and again.report["status"] == "complete" and again.report["failed"] == []
    assert again.failed_recordings() == {} and checked_failures(again, tmp_path / "state.db") == {}
    jobs = dict(query_state(tmp_path / "state.db", "select id, status from jobs"))
    assert set(jobs.values()) == {"complete"} and len(jobs) == 2 and again.report["job_id"] in jobs
    assert len(done_files(tmp_path / "state.db", again.report["job_id"])) == 4  # 2 recordings x 2 files
    assert failed_in_state(tmp_path / "state.db") == {}
    bad = run_portshift("run", "--config", tmp_path / "missing.toml", "--report", "json", env=clean_env())
    assert bad.exit_code == 2 and bad.report is not None and "does not exist" in bad.report["message"]


def test_failed_recordings_come_from_the_json_report_when_there_is_one() -> None:
    """The human summary lists ``  <id>  <reason>  <message>``; the report carries the same."""
    stderr = "failed 2 recordings (re-run the same command to retry them):\n  ex01  error  put: reset\n  ex02  error  put: x y\n"
    assert CliResult(["run"], 3, "", stderr).failed_recordings() == {"ex01": "put: reset", "ex02": "put: x y"}
    report = '{"job_id": "j", "failed": [{"recording_id": "ex03", "reason": "error", "message": "from the report"}]}'
    assert CliResult(["run"], 3, report, stderr).failed_recordings() == {"ex03": "from the report"}
