"""HashingStream: one pass, exact byte count and SHA-256 over any chunking, bounded buffering,
declared size/hash enforced before the sink sees the end, cancellation."""

from __future__ import annotations

import hashlib
import threading
import tracemalloc
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portshift.errors import IntegrityError, Interrupted
from portshift.hashing import HashingStream

KiB = 1024
MiB = 1024 * KiB


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        out.append(data[pos : pos + n])
        pos += n
    out.append(data[pos:])
    return out


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=5000),
    sizes=st.lists(st.integers(0, 700), max_size=30),
    reads=st.lists(st.integers(1, 900), min_size=1, max_size=20),
    as_type=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_read_n_over_irregular_chunks_gives_exact_bytes_count_and_sha256(
    data: bytes, sizes: list[int], reads: list[int], as_type: type
) -> None:
    chunks = [as_type(c) for c in _split(data, sizes)]  # empty chunks included
    s = HashingStream(iter(chunks))
    got = bytearray()
    i = 0
    while True:
        n = reads[i % len(reads)]
        i += 1
        piece = s.read(n)
        assert len(piece) <= n
        if not piece:
            break
        got += piece
    assert bytes(got) == data
    assert s.bytes_read == len(data)
    assert s.finished
    assert s.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert s.sha256_digest() == hashlib.sha256(data).digest()
    assert s.read(10) == b"" and s.read() == b""  # stays at the end


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=4000), sizes=st.lists(st.integers(0, 500), max_size=20), piece=st.integers(1, 1000))
def test_chunks_are_fixed_size_with_a_short_last_one_and_observers_see_every_byte_once(
    data: bytes, sizes: list[int], piece: int
) -> None:
    s = HashingStream(iter(_split(data, sizes)))
    md5 = hashlib.md5()
    crc = [0]
    seen = bytearray()
    s.observe(md5.update)
    s.observe(lambda b: crc.__setitem__(0, zlib.crc32(b, crc[0])))
    s.observe(seen.extend)
    pieces = list(s.chunks(piece))
    assert all(len(p) == piece for p in pieces[:-1])
    if pieces:
        assert 0 < len(pieces[-1]) <= piece
    assert b"".join(pieces) == data == bytes(seen)
    assert md5.hexdigest() == hashlib.md5(data).hexdigest()
    assert crc[0] == zlib.crc32(data)
    assert s.sha256_hex() == hashlib.sha256(data).hexdigest()


def test_read_all_and_read_exactly() -> None:
    data = bytes(range(256)) * 100
    s = HashingStream(iter(_split(data, [1, 2, 3, 5000, 7])))
    assert s.read_exactly(10) == data[:10]
    assert s.read(-1) == data[10:]
    assert s.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert HashingStream(iter([])).read() == b""
    empty = HashingStream(iter([b"", b""]))
    assert list(empty.chunks(4)) == [] and empty.finished and empty.bytes_read == 0
    assert empty.sha256_hex() == hashlib.sha256(b"").hexdigest()


def test_observe_after_the_first_read_is_refused() -> None:
    s = HashingStream(iter([b"abc", b"def"]))
    s.read(1)
    with pytest.raises(RuntimeError):
        s.observe(lambda b: None)


def test_a_source_that_sends_more_than_max_bytes_raises_integrity_error_at_the_overflowing_chunk() -> None:
    pulled: list[int] = []

    def source() -> Iterator[bytes]:
        for i in range(10):
            pulled.append(i)
            yield b"x" * 100

    s = HashingStream(source(), max_bytes=250)
    assert s.read(200) == b"x" * 200
    with pytest.raises(IntegrityError, match="more than the 250 bytes"):
        s.read(100)
    assert pulled == [0, 1, 2]  # stopped at the first chunk past the limit, not after draining


def test_declared_size_is_an_upper_bound_too() -> None:
    s = HashingStream(iter([b"a" * 60, b"a" * 60]), expect_size=100)
    with pytest.raises(IntegrityError):
        s.read()


def test_a_short_stream_fails_before_the_sink_sees_the_end() -> None:
    s = HashingStream(iter([b"a" * 50, b"b" * 40]), expect_size=100)
    assert s.read(50) == b"a" * 50
    # the read that would hand over the last bytes (and then the end) raises instead
    with pytest.raises(IntegrityError, match="90 bytes received, 100 declared"):
        s.read(64)
    assert not s.finished
    with pytest.raises(IntegrityError):  # and it keeps refusing
        list(s.chunks(10))


def test_a_wrong_declared_sha256_fails_before_the_end() -> None:
    data = b"payload" * 100
    ok = HashingStream(iter([data]), expect_sha256=hashlib.sha256(data).hexdigest().upper())
    assert ok.read() == data and ok.finished
    bad = HashingStream(iter([data[:300], data[300:]]), expect_sha256="0" * 64)
    got = []
    with pytest.raises(IntegrityError, match="SHA-256"):
        for piece in bad.chunks(256):
            got.append(piece)
    assert sum(map(len, got)) < len(data)  # the sink never received every byte and then EOF
    assert not bad.finished


def test_cancel_event_raises_interrupted_on_the_next_pull() -> None:
    cancel = threading.Event()
    produced = []

    def source() -> Iterator[bytes]:
        for i in range(1000):
            produced.append(i)
            yield b"z" * 1000

    s = HashingStream(source(), cancel=cancel)
    assert len(s.read(2500)) == 2500
    cancel.set()
    with pytest.raises(Interrupted):
        s.read(2000)
    assert len(produced) == 3  # nothing more was pulled from the source once cancelled
    already = HashingStream(iter([b"a"]), cancel=cancel)
    with pytest.raises(Interrupted):
        already.read(1)


def test_close_closes_the_source_generator() -> None:
    closed = []

    def source() -> Iterator[bytes]:
        try:
            while True:
                yield b"q" * 10
        finally:
            closed.append(True)

    s = HashingStream(source())
    s.read(15)
    s.close()
    assert closed == [True]


def _generated(total: int, chunk: int) -> Iterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (chunk // 32)
    sent = 0
    n = 0
    while sent < total:
        piece = n.to_bytes(8, "big") + block[8 : min(chunk, total - sent)]
        n += 1
        sent += len(piece)
        yield piece


def test_buffering_is_bounded_by_one_piece_plus_one_chunk_on_a_64_mib_stream() -> None:
    """Reading 1 MiB pieces from a source of 64 KiB chunks never holds more than a piece plus a
    chunk: checked on the internal buffer at every pull, and by tracemalloc's peak."""
    total, chunk, piece = 64 * MiB, 64 * KiB, 1 * MiB
    s = HashingStream(_generated(total, chunk))
    biggest = [0]

    def watch(b: bytes) -> None:  # runs before the chunk is appended to the buffer
        biggest[0] = max(biggest[0], len(s._buf) + len(b))

    s.observe(watch)
    expect = hashlib.sha256()
    for data in _generated(total, chunk):
        expect.update(data)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        n = 0
        for p in s.chunks(piece):
            assert len(p) <= piece
            assert len(s._buf) < chunk  # what stays buffered between reads
            n += len(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == total == s.bytes_read
    assert s.sha256_hex() == expect.hexdigest()
    assert biggest[0] <= piece + chunk
    # the piece being returned, its copies while slicing, the previous piece still referenced
    # by the caller, and one chunk: a few MiB whatever the stream's length
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB while streaming 64 MiB"
