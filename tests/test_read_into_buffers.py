"""A source read into reused buffers (``Opened.readinto``): the read-ahead fills a few buffers to
the brim in its thread, ``HashingStream.views`` hands them to the sink while another thread hashes
them, ``read(n)`` copies straight out of them; bytes, order, bounds and errors as with chunks."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from portshift.api import Artifact, Opened, Recording
from portshift.hashing import HashingStream
from portshift.pipeline import ReadAhead

from .support import plugin, run_job, sha256sum_check
from .test_read_ahead import BigSource, MiB, _piece, _wait_no_read_ahead_threads


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
