"""The conformance kit: run any sink or source through the contract's required behaviour.

Subclass :class:`SinkContract` (or :class:`SourceContract`) in your plugin's tests and provide
the fixtures it asks for; every ``test_*`` method then runs against your plugin::

    from portshift.testing import SinkContract

    class TestMySink(SinkContract):
        @pytest.fixture
        def sink(self, my_server):
            return MySink(MySink.Options(...))

        @pytest.fixture
        def read_back(self, my_server):
            # bytes stored under key, or None when nothing is visible there
            return lambda key: my_server.get(key)
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .api import Artifact, PutResult, Sink, Source, Window
from .errors import SinkError
from .hashing import HashingStream


class SourceFailure(Exception):
    """Raised by :func:`failing_chunks` mid-stream, as a dropped download would."""


def pattern_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking test content of ``size`` bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def chunked(data: bytes, sizes: Iterator[int] | None = None) -> Iterator[bytes]:
    """``data`` in irregular chunks (1, 7, 4096, 65537, ... bytes), as a network would deliver it."""
    sizes = sizes or itertools.cycle([1, 7, 4096, 65537, 1000, 300_001])
    pos = 0
    for n in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + n]
        pos += n


def failing_chunks(data: bytes, fail_after: int) -> Iterator[bytes]:
    """Yield ``data`` up to ``fail_after`` bytes, then raise :class:`SourceFailure`."""
    yield from chunked(data[:fail_after])
    raise SourceFailure(f"connection dropped after {fail_after} bytes")


def put_bytes(sink: Sink, key: str, chunks: Iterator[bytes] | bytes, size: int | None = None) -> tuple[PutResult, HashingStream]:
    """Run one put the way the core does; return the sink's result and the (consumed) stream."""
    if isinstance(chunks, bytes):
        chunks = chunked(chunks)
    stream = HashingStream(chunks)
    result = sink.put(key, stream, size)
    return result, stream


def unique_key(name: str = "object") -> str:
    return f"conformance/{uuid.uuid4().hex[:12]}/{name}.bin"


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

    @pytest.fixture
    def sink(self) -> Sink:  # pragma: no cover - provided by the plugin's tests
        raise NotImplementedError("provide a `sink` fixture")

    @pytest.fixture
    def read_back(self) -> Callable[[str], bytes | None]:  # pragma: no cover
        raise NotImplementedError("provide a `read_back` fixture")

    def _check(self, sink: Sink, read_back: Callable[[str], bytes | None], data: bytes, declare: bool) -> PutResult:
        key = unique_key(f"n{len(data)}")
        result, stream = put_bytes(sink, key, data, len(data) if declare else None)
        assert stream.finished, "the sink must read the stream to its end"
        assert stream.bytes_read == len(data)
        assert stream.sha256_hex() == hashlib.sha256(data).hexdigest()
        assert result.size == len(data), f"sink reported {result.size} bytes, {len(data)} were sent"
        assert result.key.endswith(key), f"result key {result.key!r} does not end with {key!r}"
        if "sha256" in result.checksums:
            assert result.checksums["sha256"] == hashlib.sha256(data).hexdigest()
        stored = read_back(key)
        assert stored is not None, f"nothing visible under {key}"
        assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data).hexdigest()
        return result

    def test_zero_bytes(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        self._check(sink, read_back, b"", declare=True)

    def test_zero_bytes_undeclared(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        self._check(sink, read_back, b"", declare=False)

    def test_one_byte(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        self._check(sink, read_back, b"\x00", declare=True)

    def test_many_chunks_declared(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        self._check(sink, read_back, pattern_bytes(self.many_size, seed=1), declare=True)

    def test_many_chunks_undeclared_size(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        self._check(sink, read_back, pattern_bytes(self.many_size, seed=2), declare=False)

    def test_failure_mid_stream_leaves_nothing(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        data = pattern_bytes(self.many_size, seed=3)
        key = unique_key("broken")
        stream = HashingStream(failing_chunks(data, fail_after=len(data) - 10))
        with pytest.raises(Exception):  # noqa: B017,PT011 - any error, as long as it is raised
            sink.put(key, stream, len(data))
        assert read_back(key) is None, "a failed put left a visible object under its key"

    def test_small_failure_mid_stream_leaves_nothing(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        data = pattern_bytes(1000, seed=4)
        key = unique_key("broken-small")
        stream = HashingStream(failing_chunks(data, fail_after=500))
        with pytest.raises(Exception):  # noqa: B017,PT011
            sink.put(key, stream, len(data))
        assert read_back(key) is None, "a failed put left a visible object under its key"

    def test_retry_after_failure_reopens(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
        data = pattern_bytes(self.many_size, seed=5)
        key = unique_key("retried")
        with pytest.raises(Exception):  # noqa: B017,PT011
            sink.put(key, HashingStream(failing_chunks(data, fail_after=len(data) // 2)), len(data))
        result, stream = put_bytes(sink, key, data, len(data))
        assert result.size == len(data)
        stored = read_back(key)
        assert stored is not None and hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()

    def test_overwrite_same_key(self, sink: Sink, read_back: Callable[[str], bytes | None]) -> None:
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

    def test_location_has_no_secret(self, sink: Sink) -> None:
        loc = sink.location()
        assert "?" not in loc and "@" not in loc, f"location {loc!r} may carry credentials"


class SourceContract:
    """Contract tests every source must pass. Provide ``source`` and ``window`` fixtures."""

    @pytest.fixture
    def source(self) -> Source:  # pragma: no cover
        raise NotImplementedError("provide a `source` fixture")

    @pytest.fixture
    def window(self) -> Window:  # pragma: no cover
        raise NotImplementedError("provide a `window` fixture")

    def _read(self, artifact: Artifact) -> bytes:
        opened = artifact.open()
        try:
            data = b"".join(opened.chunks)
        finally:
            if opened.close:
                opened.close()
        if opened.size is not None:
            assert len(data) == opened.size, f"{artifact.name}: declared {opened.size}, got {len(data)}"
        if artifact.size is not None:
            assert len(data) == artifact.size
        if artifact.sha256 is not None:
            assert hashlib.sha256(data).hexdigest() == artifact.sha256
        return data

    def test_recordings_are_listed_once(self, source: Source, window: Window) -> None:
        ids = [r.id for r in source.recordings(window)]
        assert ids, "the test window should hold at least one recording"
        assert len(ids) == len(set(ids)), "a recording was listed twice"

    def test_recordings_are_in_window(self, source: Source, window: Window) -> None:
        for rec in source.recordings(window):
            if rec.started_at is not None:
                assert window.start <= rec.started_at < window.end

    def test_artifacts_reopen_identically(self, source: Source, window: Window) -> None:
        rec = next(iter(source.recordings(window)))
        artifacts = list(source.artifacts(rec))
        assert artifacts, "a recording should have at least one artifact"
        names = [a.name for a in artifacts]
        assert len(names) == len(set(names)), "artifact names must be unique within a recording"
        for artifact in artifacts:
            first = self._read(artifact)
            again = self._read(artifact)
            assert first == again, f"{artifact.name}: re-opening gave different bytes"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that injects network faults between a client and a server.

    TLS passes through untouched (the client still validates the server's certificate), so it
    works in front of any HTTPS server a test starts. Use it as a context manager and point the
    plugin at ``proxy.port`` instead of the server's port::

        with FaultProxy(server_port, fault="reset", after_bytes=200_000, times=1) as proxy:
            ...  # the first connection that carries 200 kB upstream is reset

    ``fault``: ``"reset"`` (RST after ``after_bytes`` client->server bytes), ``"stall"`` (stop
    forwarding for ``stall_seconds`` after ``after_bytes``), ``"half-close"`` (shut the server
    side's write half after ``after_bytes``: the server sees EOF mid-request), or ``None``.
    ``times`` faults at most that many connections; ``connections`` and ``faults`` count them.
    """

    def __init__(
        self,
        target_port: int,
        *,
        fault: str | None = None,
        after_bytes: int = 0,
        times: int = 1,
        stall_seconds: float = 5.0,
        target_host: str = "127.0.0.1",
    ) -> None:
        import socket
        import threading

        self.target = (target_host, target_port)
        self.fault = fault
        self.after_bytes = after_bytes
        self.times = times
        self.stall_seconds = stall_seconds
        self.connections = 0
        self.faults = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FaultProxy:
        import threading

        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                faulty = self.fault is not None and self.faults < self.times
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            state = {"armed": faulty}
            threading.Thread(target=self._pipe, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, state, False), daemon=True).start()

    def _pipe(self, src: Any, dst: Any, state: dict[str, bool], upstream: bool) -> None:
        import socket
        import struct
        import time

        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and state["armed"] and sent + len(data) >= self.after_bytes:
                    cut = max(0, self.after_bytes - sent)
                    dst.sendall(data[:cut])
                    with self._lock:
                        if self.faults >= self.times:
                            state["armed"] = False
                        else:
                            self.faults += 1
                    if state["armed"]:
                        state["armed"] = False
                        if self.fault == "reset":
                            for s in (src, dst):
                                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                                try:
                                    # wake the other direction's thread blocked in recv() on this
                                    # socket, so the descriptor is really released and the RST goes out
                                    s.shutdown(socket.SHUT_RD)
                                except OSError:
                                    pass
                                s.close()
                            return
                        if self.fault == "half-close":
                            dst.shutdown(socket.SHUT_WR)
                            return
                        if self.fault == "stall":
                            time.sleep(self.stall_seconds)
                    dst.sendall(data[cut:])
                    sent += len(data)
                    continue
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
