"""The conformance kit and the test scaffolding of portshift and its plugins.

- Contracts: subclass :class:`SinkContract`, :class:`SourceContract` or :class:`ReaderContract` in
  your plugin's tests and provide the fixtures each asks for; every ``test_*`` method then runs
  against your plugin (see docs/plugins.md, "The conformance kit").
- Content: :func:`pattern_bytes`, :func:`chunked`, :func:`failing_chunks` (raises
  :class:`SourceFailure`), :func:`put_bytes`, :func:`unique_key`, :func:`env_flag`, and
  :class:`RecordingJournal` (an in-memory :class:`portshift.Journal`).
- Network: :class:`FaultProxy` (resets, stalls, half-closes) with an ``on_bytes`` metering hook
  (:class:`RequestMeter`), :class:`LocalCA` (a throw-away CA, ``trustme``), :class:`TLSServer`,
  :class:`PlainListener`, :func:`free_port`, :func:`wait_port`, :func:`stop_process`.
- The command line: :func:`run_portshift` returns a :class:`CliResult` (exit code, stdout, stderr,
  the JSON report, the failed recordings); :func:`clean_env`; :func:`interrupt_run` (Ctrl-C a
  running ``portshift run``) returns :class:`Interrupted`.
- A run's export: :func:`partial_run`, :func:`complete_recordings`, :func:`wrote_only_the_missing`,
  :func:`verified_manifest`.
"""

from __future__ import annotations

from ..api import Artifact, PutResult, Sink, Source, Window  # noqa: F401 - importable from here before the split
from ..errors import SinkError  # noqa: F401
from ..hashing import HashingStream  # noqa: F401
from .cli import (
    PORTSHIFT,
    CliResult,
    DoneFile,
    Interrupted,
    checked_failures,
    clean_env,
    done_files,
    failed_in_state,
    failed_on_stderr,
    interrupt_run,
    query_state,
    run_portshift,
)
from .data import (
    SourceFailure,
    chunked,
    env_flag,
    failing_chunks,
    pattern_bytes,
    put_bytes,
    read_artifact,
    read_back_folder,
    unique_key,
)
from .exports import complete_recordings, partial_run, verified_manifest, wrote_only_the_missing
from .faults import FAULTS, Connection, FaultProxy, RequestMeter, fault_cases, faults_in_turn
from .journal import RecordingJournal
from .reader_contract import ReaderContract
from .rendering import raised_by, renderings
from .servers import (
    LocalCA,
    PlainListener,
    Request,
    TLSServer,
    free_port,
    http_response,
    server_context,
    stop_process,
    wait_port,
)
from .sink_contract import SinkContract, confirmed_checksums_match
from .source_contract import SourceContract

__all__ = [
    "CliResult",
    "Connection",
    "DoneFile",
    "FAULTS",
    "FaultProxy",
    "Interrupted",
    "LocalCA",
    "PORTSHIFT",
    "PlainListener",
    "ReaderContract",
    "RecordingJournal",
    "Request",
    "RequestMeter",
    "SinkContract",
    "SourceContract",
    "SourceFailure",
    "TLSServer",
    "checked_failures",
    "chunked",
    "clean_env",
    "complete_recordings",
    "confirmed_checksums_match",
    "done_files",
    "env_flag",
    "failed_in_state",
    "failed_on_stderr",
    "failing_chunks",
    "fault_cases",
    "faults_in_turn",
    "free_port",
    "http_response",
    "interrupt_run",
    "partial_run",
    "pattern_bytes",
    "put_bytes",
    "query_state",
    "raised_by",
    "read_artifact",
    "read_back_folder",
    "renderings",
    "run_portshift",
    "server_context",
    "stop_process",
    "unique_key",
    "verified_manifest",
    "wait_port",
    "wrote_only_the_missing",
]
