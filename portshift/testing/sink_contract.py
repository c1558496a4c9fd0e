"""``SinkContract``: the tests every sink must pass, run against the plugin's own fixtures.

Subclass it in your plugin's tests and provide ``sink`` and ``read_back``; every ``test_*`` method
then runs against your sink::

    from portshift.testing import SinkContract

    class TestMySink(SinkContract):
        @pytest.fixture
        def sink(self, my_server):
            return MySink(build_options(MySink.Options, {...}, "sink"))

        @pytest.fixture
        def read_back(self, my_server):
            # bytes stored under key, or None when nothing is visible there
            return lambda key: my_server.get(key)
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from ..api import PutResult, Sink
from ..errors import IntegrityError, SinkError
from ..hashing import HashingStream
from .data import SourceFailure, chunked, failing_chunks, pattern_bytes, put_bytes, unique_key
from .journal import RecordingJournal

ReadBack = Callable[[str], "bytes | None"]
MiB = 1024 * 1024


def confirmed_checksums_match(result: PutResult, data: bytes) -> None:
    """Every checksum the sink reports that the kit knows (``sha256``, ``md5``, ``crc32c``, hex or
    base64) matches ``data``; and the sink confirmed *something* (a checksum or ``verified``)."""
    assert result.checksums or result.verified, (
        "the PutResult confirms nothing: return the store's checksum in `checksums` or say in `verified` what was checked"
    )
    digests = {"sha256": hashlib.sha256(data).digest(), "md5": hashlib.md5(data, usedforsecurity=False).digest()}
    try:
        import google_crc32c

        digests["crc32c"] = google_crc32c.Checksum(data).digest()
    except ImportError:  # pragma: no cover - only GCS's dependency brings it
        pass
    for kind, value in result.checksums.items():
        if kind not in digests:
            continue
        expected = digests[kind]
        assert value in (expected.hex(), base64.b64encode(expected).decode()), f"checksums[{kind!r}] does not match the data"


def _distinct_chunks(total: int, size: int = MiB) -> Iterator[bytes]:
    """``total`` bytes as fresh ``size``-byte objects (a sink that keeps them all holds them all)."""
    block = pattern_bytes(size, seed=77)
    sent = 0
    n = 0
    while sent < total:
        piece = n.to_bytes(8, "big") + block[8 : min(size, total - sent)]
        n += 1
        sent += len(piece)
        yield piece


def _swallow(fn: Callable[[], object]) -> None:
    try:
        fn()
    except BaseException:  # noqa: BLE001 - the frozen put's end is not what is tested
        pass


class SinkContract:
    """Contract tests every sink must pass. Provide ``sink`` and ``read_back`` fixtures.

    ``read_back(key)`` returns the bytes stored under ``key`` (relative to the sink's prefix), or
    ``None`` when no object is visible there. Override ``many_size`` to exceed your part size.
    """

    #: a size that needs several parts/blocks/chunks in your sink's configuration
    many_size: int = 3 * 1024 * 1024 + 12345
    #: ``True``: a second put under a key replaces the object. ``False``: the sink never replaces
    #: one (a conditional create, e.g. GCS ``ifGenerationMatch=0``): the same content again must
    #: succeed without change, other content must fail with a non-retryable ``SinkError`` and leave
    #: the first object as it was. Either way the pipeline re-runs finish: the core writes the same
    #: bytes (manifests included) when it writes a key again.
    replaces_objects: bool = True
    #: puts run at once from as many threads in ``test_concurrent_puts`` (``[job] transfers``)
    threads: int = 4
    #: the stream stored by ``test_memory_stays_bounded``, and the most the put may hold at once
    #: (Python allocations, traced with tracemalloc). Keep the budget a few part sizes and the
    #: stream several times the budget, so that a sink buffering the whole file cannot pass.
    bounded_size: int = 32 * MiB
    memory_budget: int = 12 * MiB

    @pytest.fixture
    def sink(self) -> Sink:  # pragma: no cover - provided by the plugin's tests
        raise NotImplementedError("provide a `sink` fixture")

    @pytest.fixture
    def read_back(self) -> ReadBack:  # pragma: no cover
        raise NotImplementedError("provide a `read_back` fixture")

    def _check(self, sink: Sink, read_back: ReadBack, data: bytes, declare: bool, key: str | None = None) -> PutResult:
        key = key or unique_key(f"n{len(data)}")
        result, stream = put_bytes(sink, key, data, len(data) if declare else None)
        assert stream.finished, "the sink must read the stream to its end"
        assert stream.bytes_read == len(data)
        assert stream.sha256_hex() == hashlib.sha256(data).hexdigest()
        assert result.size == len(data), f"sink reported {result.size} bytes, {len(data)} were sent"
        assert result.key.endswith(key), f"result key {result.key!r} does not end with {key!r}"
        confirmed_checksums_match(result, data)
        stored = read_back(key)
        assert stored is not None, f"nothing visible under {key}"
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
        return result

    # --- what is stored --------------------------------------------------------------------------
    def test_zero_bytes(self, sink: Sink, read_back: ReadBack) -> None:
        self._check(sink, read_back, b"", declare=True)

    def test_zero_bytes_undeclared(self, sink: Sink, read_back: ReadBack) -> None:
        self._check(sink, read_back, b"", declare=False)

    def test_one_byte(self, sink: Sink, read_back: ReadBack) -> None:
        self._check(sink, read_back, b"\x00", declare=True)

    def test_many_chunks_declared(self, sink: Sink, read_back: ReadBack) -> None:
        self._check(sink, read_back, pattern_bytes(self.many_size, seed=1), declare=True)

    def test_many_chunks_undeclared_size(self, sink: Sink, read_back: ReadBack) -> None:
        self._check(sink, read_back, pattern_bytes(self.many_size, seed=2), declare=False)

    def test_concurrent_puts(self, sink: Sink, read_back: ReadBack) -> None:
        """``put`` runs in several worker threads at once on one sink object (``[job] transfers``)."""
        start = threading.Barrier(self.threads)
        errors: list[str] = []
        datas = [pattern_bytes(200_000 + i * 4099, seed=40 + i) for i in range(self.threads)]
        keys = [unique_key(f"thread-{i}") for i in range(self.threads)]

        def one(i: int) -> None:
            try:
                start.wait(10)
                put_bytes(sink, keys[i], datas[i], len(datas[i]))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"{type(e).__name__}: {e}")

        workers = [threading.Thread(target=one, args=(i,)) for i in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)
        assert not errors, f"{len(errors)} of {self.threads} puts from separate threads failed: {errors[0]}"
        for key, data in zip(keys, datas):
            stored = read_back(key)
            assert stored is not None and hashlib.sha256(stored).digest() == hashlib.sha256(data).digest(), key

    def test_memory_stays_bounded(self, sink: Sink, read_back: ReadBack) -> None:
        """Memory depends on part size and transfers, never on the file's size."""
        key = unique_key("large")
        expected = hashlib.sha256(b"".join(_distinct_chunks(self.bounded_size))).hexdigest()
        already = tracemalloc.is_tracing()
        if not already:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            stream = HashingStream(_distinct_chunks(self.bounded_size))
            result = sink.put(key, stream, self.bounded_size)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            if not already:
                tracemalloc.stop()
        assert stream.finished and result.size == self.bounded_size
        assert peak <= self.memory_budget, (
            f"storing {self.bounded_size} bytes held up to {peak} bytes at once (budget {self.memory_budget}): "
            "stream in parts instead of buffering the file"
        )
        stored = read_back(key)
        assert stored is not None and hashlib.sha256(stored).hexdigest() == expected

    # --- what fails, and how -------------------------------------------------------------------------
    def _refused(self, sink: Sink, read_back: ReadBack, stream: HashingStream, size: int, error: type[BaseException]) -> None:
        key = unique_key("refused")
        with pytest.raises(error):
            sink.put(key, stream, size)
        assert read_back(key) is None, f"a put that raised {error.__name__} left a visible object under its key"

    def test_failure_mid_stream_leaves_nothing(self, sink: Sink, read_back: ReadBack) -> None:
        """The stream's own error (the source's) propagates unchanged, and nothing is visible."""
        data = pattern_bytes(self.many_size, seed=3)
        self._refused(sink, read_back, HashingStream(failing_chunks(data, fail_after=len(data) - 10)), len(data), SourceFailure)

    def test_small_failure_mid_stream_leaves_nothing(self, sink: Sink, read_back: ReadBack) -> None:
        data = pattern_bytes(1000, seed=4)
        self._refused(sink, read_back, HashingStream(failing_chunks(data, fail_after=500)), len(data), SourceFailure)

    def test_size_mismatch_at_the_end_is_refused(self, sink: Sink, read_back: ReadBack) -> None:
        """The source declared one byte more than it sent: the stream raises IntegrityError
        before the sink sees its end; the sink must not commit."""
        data = pattern_bytes(self.many_size, seed=6)
        stream = HashingStream(chunked(data), expect_size=len(data) + 1)
        self._refused(sink, read_back, stream, len(data) + 1, IntegrityError)

    def test_sha256_mismatch_at_the_end_is_refused(self, sink: Sink, read_back: ReadBack) -> None:
        data = pattern_bytes(self.many_size, seed=7)
        stream = HashingStream(chunked(data), expect_size=len(data), expect_sha256=hashlib.sha256(b"other").hexdigest())
        self._refused(sink, read_back, stream, len(data), IntegrityError)

    def test_more_bytes_than_declared_is_refused(self, sink: Sink, read_back: ReadBack) -> None:
        data = pattern_bytes(5000, seed=8)
        self._refused(sink, read_back, HashingStream(chunked(data), expect_size=4000), 4000, IntegrityError)

    def test_retry_after_failure_reopens(self, sink: Sink, read_back: ReadBack) -> None:
        data = pattern_bytes(self.many_size, seed=5)
        key = unique_key("retried")
        with pytest.raises(SourceFailure):
            sink.put(key, HashingStream(failing_chunks(data, fail_after=len(data) // 2)), len(data))
        self._check(sink, read_back, data, declare=True, key=key)

    def test_overwrite_same_key(self, sink: Sink, read_back: ReadBack) -> None:
        key = unique_key("twice")
        first, _ = put_bytes(sink, key, b"first version", 13)
        if self.replaces_objects:
            put_bytes(sink, key, b"second", 6)
            assert read_back(key) == b"second"
            return
        again, _ = put_bytes(sink, key, b"first version", 13)
        assert again.size == first.size == 13, "the same content again must be accepted"
        with pytest.raises(SinkError) as refused:
            put_bytes(sink, key, b"second", 6)
        assert not refused.value.retryable, "other content under an existing key can never succeed: not retryable"
        assert read_back(key) == b"first version", "a refused put must leave the first object as it was"

    # --- the journal and recover() ----------------------------------------------------------------
    def _journal(self, sink: Sink) -> RecordingJournal:
        secrets = []
        for name in type(sink.options).model_fields:
            value = getattr(sink.options, name, None)
            if hasattr(value, "reveal"):
                secrets.append(str(value.reveal()))
        journal = RecordingJournal(secrets)
        sink.journal = journal
        return journal

    def test_journal_is_optional(self, sink: Sink, read_back: ReadBack) -> None:
        """Outside a run with a state DB, ``sink.journal`` is ``None``: puts still work."""
        sink.journal = None
        self._check(sink, read_back, pattern_bytes(self.many_size, seed=9), declare=True)

    def test_journal_entries_end_with_their_operation(self, sink: Sink, read_back: ReadBack) -> None:
        """Whatever a put begins in the journal it ends once committed or aborted; data is
        ``dict[str, str]`` without a credential."""
        journal = self._journal(sink)
        self._check(sink, read_back, pattern_bytes(self.many_size, seed=10), declare=True)
        self._check(sink, read_back, b"tiny", declare=False)
        assert journal.pending() == [], f"a successful put left journal entries: {journal.pending()}"
        data = pattern_bytes(self.many_size, seed=11)
        with pytest.raises(SourceFailure):
            sink.put(unique_key("aborted"), HashingStream(failing_chunks(data, len(data) - 100)), len(data))
        assert journal.pending() == [], f"an aborted put left journal entries: {journal.pending()}"
        assert journal.misuse == [], journal.misuse

    def test_recover_after_a_crash(self, sink: Sink, read_back: ReadBack) -> None:
        """A put frozen mid-stream stands for a killed process: what the journal holds then is
        what the next run passes to ``recover()``, which must clean up (twice is harmless), leave
        nothing visible, and let the same key be written again."""
        journal = self._journal(sink)
        data = pattern_bytes(self.many_size, seed=12)
        key = unique_key("crashed")
        frozen, release = threading.Event(), threading.Event()

        def frozen_source() -> Iterator[bytes]:
            cut = len(data) * 3 // 4
            yield from chunked(data[:cut])
            frozen.set()
            release.wait(120)
            raise SourceFailure("the process was killed")

        outcome: list[BaseException] = []

        def put() -> None:
            try:
                sink.put(key, HashingStream(frozen_source()), len(data))
            except BaseException as e:  # noqa: BLE001 - looked at below
                outcome.append(e)

        worker = threading.Thread(target=put, daemon=True)
        worker.start()
        try:
            deadline = time.monotonic() + 120
            while not frozen.wait(0.05):
                assert worker.is_alive(), f"the put failed before reading three quarters of the stream: {outcome[:1]}"
                assert time.monotonic() < deadline, "the sink did not read three quarters of the stream in 120 s"
            pending = journal.pending()
            assert journal.misuse == [], journal.misuse
            sink.recover(pending)
            sink.recover(pending)  # the run after a failed clean-up offers the same entries again
            for k, _ in pending:
                journal.end(k)  # what the core does once recover() returned
            assert read_back(key) is None, "after recover() an object is visible under the key of a put that never finished"
        finally:
            release.set()
            worker.join(120)
        assert outcome and isinstance(outcome[0], Exception), "the frozen put should have failed once released"
        self._check(sink, read_back, data, declare=True, key=key)
        assert journal.pending() == [] and journal.misuse == []

    def test_resume_after_a_crash(self, sink: Sink, read_back: ReadBack) -> None:
        """For a sink that implements ``resume()``: a put frozen mid-stream stands for a killed
        process; the resume point it journaled lets ``resume()`` finish the object from that
        offset, reading only the rest, and the result is what a fresh put gives."""
        from ..resume import Continuation, ResumePoint, ResumeRefused

        if type(sink).resume is Sink.resume:  # the default refuses: the core then sends the artifact again
            with pytest.raises(ResumeRefused):
                sink.resume("k", Continuation(key="k", data={}, offset=0, size=0, _open=lambda: HashingStream(iter(()))), 0)
            return
        journal = self._journal(sink)
        data = pattern_bytes(self.many_size, seed=21)
        key = unique_key("resumed")
        frozen, release = threading.Event(), threading.Event()

        def frozen_source() -> Iterator[bytes]:
            yield from chunked(data[: len(data) * 3 // 4])
            frozen.set()
            release.wait(120)
            raise SourceFailure("the process was killed")

        stream = HashingStream(frozen_source(), expect_size=len(data))
        stream.resume_info = {"recording": "r1", "artifact": "media", "ext": "bin", "validator": None}  # the core's part
        worker = threading.Thread(target=lambda: _swallow(lambda: sink.put(key, stream, len(data))), daemon=True)
        worker.start()
        try:
            deadline = time.monotonic() + 120
            while not frozen.wait(0.05):
                assert worker.is_alive() and time.monotonic() < deadline, "the put ended before three quarters of the stream"
            points: list[tuple[str, dict[str, str]]] = []
            waited = time.monotonic() + 10  # the parts read before the freeze are confirmed by then
            while not points and time.monotonic() < waited:
                pending = journal.pending()
                points = [(k, d) for k, d in pending if d.get("resume")]
                if not pending and time.monotonic() > waited - 8:  # journals nothing at all here
                    break
                time.sleep(0.05)
            if not points:
                pytest.skip("the sink journaled no resume point for this configuration (see its README)")
            (entry_key, entry), *_ = points
            point = ResumePoint.decode(entry["resume"])
            assert point is not None and 0 < point.offset < len(data), entry["resume"]
            asked: list[int] = []

            def rest() -> HashingStream:
                asked.append(point.offset)
                resumed = HashingStream(
                    chunked(data[point.offset :]), expect_size=len(data), resume=(point.offset, point.sha256_state)
                )
                resumed.resume_info = dict(stream.resume_info or {})
                return resumed

            cont = Continuation(key=entry_key, data=entry, offset=point.offset, size=len(data), _open=rest)
            result = sink.resume(entry_key, cont, len(data))
        finally:
            release.set()
            worker.join(120)
        assert asked == [point.offset], "resume() must read the rest of the artifact once, from the offset"
        assert result.size == len(data), f"resume() reported {result.size} bytes, the artifact has {len(data)}"
        confirmed_checksums_match(result, data)
        stored = read_back(key)
        assert stored is not None and hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()

    # --- check(), close(), location() ---------------------------------------------------------------
    def test_check_reaches_the_destination(self, sink: Sink) -> None:
        assert sink.check() is None

    def test_close_twice(self, sink: Sink) -> None:
        sink.close()
        sink.close()

    def test_location_has_no_secret(self, sink: Sink) -> None:
        loc = sink.location()
        assert "?" not in loc and "@" not in loc, f"location {loc!r} may carry credentials"
