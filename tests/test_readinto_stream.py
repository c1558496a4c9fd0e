"""``HashingStream.readinto`` (issue 19): a sink that gathers parts in buffers of its own (S3
parts) gets the read-ahead's buffers copied straight into them while a thread of the stream
hashes the same buffers. Bytes, order, digest, observers, resume points, integrity checks and the
end of that thread, as with ``read``."""

from __future__ import annotations

import hashlib
import threading

import pytest

from portshift import hash_state
from portshift.errors import IntegrityError, Interrupted
from portshift.hashing import HashingStream
from portshift.pipeline import ReadAhead
from portshift.resume import ResumePoint

from .test_read_into_buffers import Body, _data

MiB = 1024 * 1024


def _hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("-hash")]


def _buffered(data: bytes, **kw: object) -> HashingStream:
    body = Body(data)
    return HashingStream(ReadAhead(body, threading.Event(), readinto=body.readinto), **kw)  # type: ignore[arg-type]


def _fill(s: HashingStream, size: int) -> bytes:
    buf = bytearray(size)
    view, pos = memoryview(buf), 0
    while pos < size and (got := s.readinto(view[pos:])):
        pos += got
    view.release()
    return bytes(buf[:pos])


@pytest.mark.parametrize("part", [8 * MiB, 3 * MiB + 12345, 1000])
def test_parts_filled_with_readinto_are_the_bytes_and_another_thread_hashes_them(part: int) -> None:
    data = _data(5 * 4 * MiB + 999) if part > 1000 else _data(3 * MiB + 7)
    s = _buffered(data, expect_size=len(data), expect_sha256=hashlib.sha256(data).hexdigest())
    seen: list[tuple[str, int]] = []
    s.observe(lambda chunk: seen.append((threading.current_thread().name, len(chunk))))
    parts = []
    while piece := _fill(s, part):
        parts.append(piece)
    assert b"".join(parts) == data and s.finished and s.bytes_read == len(data)
    assert all(len(p) == part for p in parts[:-1])
    assert s.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert sum(n for _, n in seen) == len(data)
    assert {name for name, _ in seen} == {threading.current_thread().name + "-hash"}, "hashed in the sink's thread"
    assert not _hash_threads(), "the hashing thread outlived the stream's end"


def test_read_and_readinto_mixed_give_the_bytes_in_order_and_one_digest() -> None:
    data = _data(4 * MiB + 321)
    s = _buffered(data, expect_size=len(data))
    out = bytearray()
    out += s.read(100)
    out += _fill(s, MiB + 5)  # starts the hashing thread
    out += s.read(7)  # settles it: the rest of the buffer being copied out comes first
    out += _fill(s, 2 * MiB)
    out += s.read(-1)
    assert bytes(out) == data and s.finished
    assert s.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert not _hash_threads()


def test_a_plain_stream_fills_the_buffer_from_its_chunks_and_keeps_what_is_left() -> None:
    s = HashingStream(iter([b"abc", b"defgh", b"ij"]))
    buf = bytearray(4)
    assert s.readinto(buf) == 4 and buf == b"abcd"
    assert s.read(2) == b"ef"
    assert s.readinto(buf) == 4 and buf == b"ghij"
    assert s.readinto(buf) == 0 and s.finished
    assert s.sha256_hex() == hashlib.sha256(b"abcdefghij").hexdigest()


@pytest.mark.skipif(hash_state.new("sha256") is None, reason="no saveable SHA-256 in this process")
def test_resume_points_taken_on_the_hashing_thread_continue_to_the_same_digest() -> None:
    data = _data(6 * MiB + 4321)
    part = 2 * MiB
    s = _buffered(data, expect_size=len(data))
    s.resume_info = {"recording": "r1", "artifact": "media", "ext": "mp4", "validator": None}
    assert s.keep_states(part)
    first, second = _fill(s, part), _fill(s, part)
    # asked at once, as a part worker asks when the store confirms a part: the point is there
    # even if the hashing thread is still behind the copy
    text = s.resume_point(2 * part)
    assert text is not None and first + second == data[: 2 * part]
    point = ResumePoint.decode(text)
    assert point is not None and point.offset == 2 * part
    resumed = HashingStream(iter([data[point.offset :]]), expect_size=len(data), resume=(point.offset, point.sha256_state))
    assert resumed.read() == data[point.offset :]
    assert resumed.sha256_hex() == hashlib.sha256(data).hexdigest()
    rest = _fill(s, len(data))
    assert first + second + rest == data and s.sha256_hex() == hashlib.sha256(data).hexdigest()


def test_a_wrong_declared_digest_or_size_fails_before_the_sink_sees_the_end() -> None:
    data = _data(3 * MiB + 5)
    s = _buffered(data, expect_sha256="0" * 64)
    got = 0
    with pytest.raises(IntegrityError):
        while n := len(_fill(s, MiB)):
            got += n
    assert got == 3 * MiB and not s.finished  # the short last part never came back
    s = _buffered(data, expect_size=len(data) - 1)
    with pytest.raises(IntegrityError, match="more than"):
        while _fill(s, MiB):
            pass
    assert not _hash_threads()


def test_a_sink_that_stops_half_way_or_a_cancel_leaves_no_hashing_thread() -> None:
    data = _data(5 * MiB)
    s = _buffered(data)
    assert _fill(s, MiB + 3) == data[: MiB + 3]
    assert _hash_threads()
    s.settle()  # what the core does when a transfer ends, whatever the sink did
    assert not _hash_threads()
    cancel = threading.Event()
    body = Body(data)
    s = HashingStream(ReadAhead(body, cancel, readinto=body.readinto), cancel=cancel)
    _fill(s, MiB)
    cancel.set()
    with pytest.raises(Interrupted):
        _fill(s, 4 * MiB)
    s.close()
    assert not _hash_threads()


@pytest.mark.parametrize("extra", [0, 1, 777])
def test_pieces_of_a_large_download_are_filled_on_the_sinks_thread_and_hashed_on_the_streams(extra: int) -> None:
    data = _data(3 * 2 * MiB + extra)
    s = _buffered(data, expect_size=len(data))
    threads: set[str] = set()
    s.observe(lambda chunk: threads.add(threading.current_thread().name))
    got = list(s.pieces(2 * MiB))
    assert b"".join(p for p, _ in got) == data
    assert [last for _, last in got] == [False] * (len(got) - 1) + [True]
    assert [len(p) for p, _ in got] == [2 * MiB] * 3 + ([extra] if extra else [])
    assert threads == {threading.current_thread().name + "-hash"}
    assert s.sha256_hex() == hashlib.sha256(data).hexdigest() and not _hash_threads()


def test_wait_hashed_returns_once_the_observers_took_in_the_bytes_handed_out() -> None:
    """A sink reading an observer's state at a piece boundary from another thread (the GCS sink's
    CRC32C/MD5 when the store confirms a chunk) waits for the stream's thread to get there."""
    import time

    data = _data(6 * MiB)
    s = _buffered(data, expect_size=len(data))
    seen = [0]

    def slow(chunk: bytes) -> None:
        time.sleep(0.01)  # an observer slower than the copy: it falls behind the bytes handed out
        seen[0] += len(chunk)

    s.observe(slow)
    assert _fill(s, 2 * MiB) == data[: 2 * MiB]
    behind = seen[0]
    s.wait_hashed(2 * MiB)
    assert seen[0] >= 2 * MiB, "returned before the observer had the bytes handed out"
    assert behind < 2 * MiB, "the observer kept up: this test shows nothing (make it slower)"
    assert _fill(s, len(data)) == data[2 * MiB :] and seen[0] == len(data)
