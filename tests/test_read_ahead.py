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


# --- a source read into reused buffers (Opened.readinto) ------------------------------------------


class Body:
    """A body served in irregular pieces of at most ``piece`` bytes per ``readinto`` (as TLS
    records arrive), recording the threads that received it; optionally failing after ``fail_at``."""

    def __init__(self, data: bytes, piece: int = 16 * 1024 + 7, fail_at: int | None = None) -> None:
        self.data, self.piece, self.fail_at = data, piece, fail_at
        self.pos = 0
        self.threads: set[str] = set()

    def readinto(self, buf: memoryview) -> int:
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise ConnectionResetError("the peer reset the connection")
        n = min(len(buf), self.piece, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        raise AssertionError("a source read with readinto is not iterated")


def _data(size: int) -> bytes:
    return b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size // 32 + 1))[:size]


def test_a_readinto_source_fills_a_few_reused_buffers_to_the_brim_in_a_thread() -> None:
    from portshift.pipeline.readahead import READ_BUFFER_SIZE, READ_BUFFERS

    data = _data(9 * READ_BUFFER_SIZE + 12345)
    body = Body(data)
    ahead = ReadAhead(body, threading.Event(), readinto=body.readinto)
    assert ahead.buffered
    got, sizes, buffers = [], [], set()
    while (view := ahead.next_buffer()) is not None:
        assert view.readonly
        got.append(bytes(view))
        sizes.append(len(view))
        buffers.add(id(view.obj))
        ahead.release(view)
    assert b"".join(got) == data
    assert sizes == [READ_BUFFER_SIZE] * 9 + [12345], "a buffer was handed over before it was full"
    assert len(buffers) <= READ_BUFFERS, "buffers were allocated instead of reused"
    assert body.threads == {threading.current_thread().name + "-read-ahead"}
    assert ahead.join(5)


def test_views_hand_out_the_buffers_while_another_thread_hashes_them() -> None:
    data = _data(5 * 4 * MiB + 999)
    body = Body(data)
    ahead = ReadAhead(body, threading.Event(), readinto=body.readinto)
    s = HashingStream(ahead, expect_size=len(data), expect_sha256=hashlib.sha256(data).hexdigest())
    observed: list[tuple[str, int]] = []
    s.observe(lambda chunk: observed.append((threading.current_thread().name, len(chunk))))
    out = bytearray()
    for view in s.views():
        out += view
    assert out == data and s.finished and s.bytes_read == len(data)
    assert s.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert sum(n for _, n in observed) == len(data)
    assert {name for name, _ in observed} == {threading.current_thread().name + "-hash"}
    assert not [t for t in threading.enumerate() if t.name.endswith("-hash")]


def test_views_fail_a_wrong_declared_sha256_before_the_end_and_pass_a_source_error_in_order() -> None:
    from portshift.errors import IntegrityError

    data = _data(3 * 4 * MiB + 5)
    body = Body(data)
    s = HashingStream(ReadAhead(body, threading.Event(), readinto=body.readinto), expect_sha256="0" * 64)
    seen = 0
    with pytest.raises(IntegrityError):
        for view in s.views():
            seen += len(view)
    assert seen == len(data) and not s.finished  # every byte seen, the end never reached
    body = Body(data, fail_at=2 * 4 * MiB + 100)
    s = HashingStream(ReadAhead(body, threading.Event(), readinto=body.readinto))
    seen = 0
    with pytest.raises(ConnectionResetError):
        for view in s.views():
            assert bytes(view) == data[seen : seen + len(view)]
            seen += len(view)
    assert seen >= 2 * 4 * MiB


def test_views_of_a_plain_stream_are_its_chunks_and_a_read_before_comes_first() -> None:
    s = HashingStream(iter([b"ab", b"cdef", b"g"]))
    assert s.read(1) == b"a"
    assert [bytes(v) for v in s.views()] == [b"b", b"cdef", b"g"]
    assert s.finished and s.sha256_hex() == hashlib.sha256(b"abcdefg").hexdigest()


class ReadintoSource(BigSource):
    """BigSource's recordings offered through ``Opened.readinto`` (the first open of r0 breaks)."""

    bodies: list[Body] = []

    def artifacts(self, rec: Recording) -> Iterator[Artifact]:
        def open_() -> Opened:
            n = BigSource.attempts.get(rec.id, 0)
            BigSource.attempts[rec.id] = n + 1
            data = b"".join(_piece(rec.id, i) for i in range(20))
            body = Body(data, fail_at=9 * MiB if rec.id == "r0" and n == 0 else None)
            ReadintoSource.bodies.append(body)
            return Opened(chunks=body, size=len(data), readinto=body.readinto, close=lambda: BigSource.closed.append(rec.id))

        yield Artifact(name="media", open=open_, extension="bin")


def test_a_readinto_source_goes_through_the_pipeline_into_the_local_sink_and_is_retried(tmp_path: Path) -> None:
    BigSource.attempts, BigSource.threads, BigSource.closed, ReadintoSource.bodies = {}, set(), [], []
    doc = {
        "job": {"transfers": 2, "retries": 2},
        "source": {"type": "readinto", "count": 2},
        "sink": {"type": "local", "path": str(tmp_path / "out")},
    }
    with plugin("test-readinto", sources={"readinto": ReadintoSource}):
        result = run_job(doc, tmp_path / "s.db")
    assert result.status == "complete", result.failed
    assert BigSource.attempts == {"r0": 2, "r1": 1}
    assert all(b.threads and all(t.endswith("-read-ahead") for t in b.threads) for b in ReadintoSource.bodies)
    root = tmp_path / "out" / result.export_root
    assert sha256sum_check(root).returncode == 0
    for rid in ("r0", "r1"):
        (path,) = [p for p in root.rglob("*") if p.is_file() and rid in p.as_posix() and "media" in p.name]
        assert path.read_bytes() == b"".join(_piece(rid, i) for i in range(20))
    assert sorted(BigSource.closed) == ["r0", "r0", "r1"]
    assert not [t for t in threading.enumerate() if t.name.endswith("-hash")], "a hashing thread outlived its stream"
    _wait_no_read_ahead_threads()


@pytest.mark.parametrize("n", [1000, 512 * 1024, 3 * MiB + 7])
def test_read_n_from_reused_buffers_gives_exact_bytes_and_fails_a_wrong_sha256_before_the_end(n: int) -> None:
    from portshift.errors import IntegrityError

    data = _data(7 * MiB + 3)
    body = Body(data)
    s = HashingStream(ReadAhead(body, threading.Event(), readinto=body.readinto), expect_size=len(data))
    seen: list[int] = []
    s.observe(lambda chunk: seen.append(len(chunk)))
    out = b"".join(s.chunks(n))
    assert out == data and s.finished and s.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)
    body = Body(data)
    s = HashingStream(ReadAhead(body, threading.Event(), readinto=body.readinto), expect_sha256="0" * 64)
    got = 0
    with pytest.raises(IntegrityError):
        while piece := s.read(n):
            got += len(piece)
    assert got < len(data) or n > len(data)
