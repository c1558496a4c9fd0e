"""The pipeline's read-ahead for large artifacts (and HashingStream's copy-free read): bytes and
order unchanged, bounded, source errors passed through unchanged, and a close or cancel ends the
thread without a hang, also when the source has gone silent."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portshift.api import Artifact, Opened, Recording, Source, Window
from portshift.errors import ExitCode, Interrupted
from portshift.hashing import HashingStream
from portshift.options import PluginOptions
from portshift.pipeline import READ_AHEAD_CHUNKS, READ_AHEAD_FROM, ReadAhead

from .support import plugin, run_job, sha256sum_check

MiB = 1024 * 1024


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-read-ahead")]


def _wait_no_read_ahead_threads(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _read_ahead_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _read_ahead_threads(), "a read-ahead thread outlived its artifact"


class Recorder:
    """A source iterator that records which thread produced each chunk and how far ahead of
    the consumer it ever got."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.threads: set[str] = set()
        self.produced = 0
        self.consumed = 0
        self.max_ahead = 0
        self.closed = False

    def gen(self) -> Iterator[bytes]:
        try:
            for i, c in enumerate(self.chunks):
                if self.fail_after is not None and i == self.fail_after:
                    raise ConnectionResetError("the peer reset the connection")
                self.threads.add(threading.current_thread().name)
                self.produced += 1
                self.max_ahead = max(self.max_ahead, self.produced - self.consumed)
                yield c
        finally:
            self.closed = True


def test_read_ahead_keeps_bytes_and_order_and_stays_within_its_bound() -> None:
    chunks = [bytes([i]) * 64 * 1024 for i in range(200)]
    rec = Recorder(chunks)
    ahead = ReadAhead(rec.gen(), threading.Event())
    got = []
    for c in ahead:
        time.sleep(0.0005)  # a slower sink: the thread runs ahead as far as it may
        rec.consumed += 1
        got.append(c)
    assert got == chunks
    assert rec.threads == {threading.current_thread().name + "-read-ahead"}, "chunks were not received in a thread"
    # the queue, the chunk being handed over and the one the consumer holds
    assert rec.max_ahead <= READ_AHEAD_CHUNKS + 2
    assert ahead.join(5)
    assert rec.closed


def test_an_unknown_size_passes_its_first_bytes_inline_and_the_rest_through_the_thread() -> None:
    chunks = [b"x" * MiB for _ in range(12)]
    rec = Recorder(chunks)
    ahead = ReadAhead(rec.gen(), threading.Event(), start_after=READ_AHEAD_FROM)
    first = [next(ahead) for _ in range(READ_AHEAD_FROM // MiB)]
    assert rec.threads == {threading.current_thread().name}
    rest = list(ahead)
    assert first + rest == chunks
    assert threading.current_thread().name + "-read-ahead" in rec.threads


def test_a_source_error_reaches_the_reader_unchanged_after_the_chunks_before_it() -> None:
    chunks = [bytes([i]) * 1000 for i in range(10)]
    rec = Recorder(chunks, fail_after=6)
    ahead = ReadAhead(rec.gen(), threading.Event())
    got = []
    with pytest.raises(ConnectionResetError, match="reset the connection"):
        for c in ahead:
            got.append(c)
    assert got == chunks[:6]
    assert ahead.join(5)


def test_stop_ends_a_thread_blocked_on_a_full_queue_and_closes_the_source_in_it() -> None:
    rec = Recorder([b"y" * 1000] * 1000)
    ahead = ReadAhead(rec.gen(), threading.Event())
    assert next(ahead) == b"y" * 1000
    deadline = time.monotonic() + 5
    while rec.produced < READ_AHEAD_CHUNKS + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert rec.produced <= READ_AHEAD_CHUNKS + 2, "the thread did not stop at the bound"
    ahead.stop()
    assert ahead.join(5)
    assert rec.closed, "the source's generator was not closed"
    with pytest.raises(StopIteration):
        next(ahead)


def test_cancel_is_noticed_while_the_source_is_silent() -> None:
    release = threading.Event()

    def silent() -> Iterator[bytes]:
        yield b"a"
        release.wait(30)  # a server that stopped sending
        yield b"b"

    cancel = threading.Event()
    ahead = ReadAhead(silent(), cancel)
    assert next(ahead) == b"a"
    threading.Timer(0.2, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted):
        next(ahead)
    assert time.monotonic() - t0 < 2
    ahead.stop()
    release.set()  # what closing the download does to a blocked receive
    assert ahead.join(5)


def test_hashing_stream_hands_a_chunk_of_the_size_asked_for_through_without_a_copy() -> None:
    a, b = b"1" * 4096, b"2" * 4096
    s = HashingStream(iter([a, b, b"3" * 5000]))
    assert s.read(4096) is a
    assert s.read(4096) is b
    assert s.read(4096) == b"3" * 4096
    assert s.read(4096) == b"3" * 904
    assert s.read(4096) == b""
    assert s.sha256_hex() == hashlib.sha256(a + b + b"3" * 5000).hexdigest()


# --- through the pipeline -------------------------------------------------------------------------


class BigSource(Source):
    """One or more recordings of 20 MiB in 1 MiB chunks; the first open of r0 breaks mid-way;
    with ``stall`` r0 goes silent after 3 MiB until it is closed."""

    class Options(PluginOptions):
        section = "source"
        count: int = 2
        declare_size: bool = True

    stall = False
    attempts: dict[str, int] = {}
    threads: set[str] = set()
    closed: list[str] = []

    def location(self) -> str:
        return "big:"

    def recordings(self, window: Window) -> Iterator[Recording]:
        from portshift.config import parse_when

        for i in range(self.options.count):
            yield Recording(id=f"r{i}", started_at=parse_when("2024-03-01T10:00:00", "t"))

    def artifacts(self, rec: Recording) -> Iterator[Artifact]:
        def open_() -> Opened:
            n = BigSource.attempts.get(rec.id, 0)
            BigSource.attempts[rec.id] = n + 1
            woken = threading.Event()

            def gen() -> Iterator[bytes]:
                try:
                    for i in range(20):
                        BigSource.threads.add(threading.current_thread().name)
                        if rec.id == "r0" and n == 0 and i == 9 and not BigSource.stall:
                            raise ConnectionResetError("reset mid-way")
                        if rec.id == "r0" and i == 3 and BigSource.stall:
                            woken.wait(60)
                            raise ConnectionResetError("closed while waiting")
                        yield _piece(rec.id, i)
                finally:
                    BigSource.closed.append(rec.id)

            return Opened(chunks=gen(), size=20 * MiB if self.options.declare_size else None, close=woken.set)

        yield Artifact(name="media", open=open_, extension="bin")


def _piece(rid: str, i: int) -> bytes:
    return hashlib.sha256(f"{rid}/{i}".encode()).digest() * (MiB // 32)


@pytest.fixture
def big():
    BigSource.attempts, BigSource.threads, BigSource.closed, BigSource.stall = {}, set(), [], False
    with plugin("test-big", sources={"big": BigSource}):
        yield BigSource


@pytest.mark.parametrize("declare_size", [True, False])
def test_large_artifacts_are_read_ahead_retried_after_a_source_error_and_verified(
    tmp_path: Path,
    big,
    declare_size: bool,  # noqa: ANN001
) -> None:
    doc = {
        "job": {"transfers": 2, "retries": 2},
        "source": {"type": "big", "count": 2, "declare_size": declare_size},
        "sink": {"type": "local", "path": str(tmp_path / "out")},
    }
    result = run_job(doc, tmp_path / "s.db")
    assert result.status == "complete", result.failed
    assert big.attempts == {"r0": 2, "r1": 1}
    assert any(name.endswith("-read-ahead") for name in big.threads)
    root = tmp_path / "out" / result.export_root
    assert sha256sum_check(root).returncode == 0
    for rid in ("r0", "r1"):
        (path,) = [p for p in root.rglob("*") if p.is_file() and rid in p.as_posix() and "media" in p.name]
        assert path.read_bytes() == b"".join(_piece(rid, i) for i in range(20))
    assert sorted(big.closed) == ["r0", "r0", "r1"]
    _wait_no_read_ahead_threads()


def test_cancel_during_a_silent_large_download_ends_the_job_promptly_without_a_leftover_thread(
    tmp_path: Path,
    big,  # noqa: ANN001
) -> None:
    big.stall = True
    doc = {
        "job": {"transfers": 1, "retries": 0},
        "source": {"type": "big", "count": 1},
        "sink": {"type": "local", "path": str(tmp_path / "out")},
    }
    cancel = threading.Event()
    out: dict[str, object] = {}

    def run() -> None:
        out["result"] = run_job(doc, tmp_path / "s.db", cancel=cancel)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 20
    while not any(name.endswith("-read-ahead") for name in big.threads) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # r0 is now silent after 3 MiB
    t0 = time.monotonic()
    cancel.set()
    worker.join(15)
    assert not worker.is_alive(), "the job hung on a silent source after cancel"
    assert time.monotonic() - t0 < 5
    result = out["result"]
    assert result.status == "interrupted" and result.exit_code == ExitCode.INTERRUPTED  # type: ignore[attr-defined]
    assert big.closed == ["r0"]
    assert not list((tmp_path / "out").rglob("*.part"))
    _wait_no_read_ahead_threads()
