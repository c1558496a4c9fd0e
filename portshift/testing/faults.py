"""A TCP fault proxy for tests, and a meter that watches the bytes through it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: ``on_bytes(connection, upstream, data)``: called for every piece the proxy receives, before
#: it is forwarded; ``upstream`` is ``True`` for client->server bytes.
OnBytes = Callable[["Connection", bool, bytes], None]


@dataclass
class Connection:
    """One client connection through a :class:`FaultProxy`."""

    number: int  #: 0 for the first connection the proxy accepted
    faulty: bool  #: this connection may still get the fault
    up: int = 0  #: client->server bytes received so far
    down: int = 0  #: server->client bytes received so far
    _open: int = field(default=2, repr=False)  #: directions still forwarding


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that injects network faults between a client and a server.

    TLS passes through untouched (the client still validates the server's certificate), so it
    works in front of any HTTPS server a test starts. Use it as a context manager and point the
    plugin at ``proxy.port`` instead of the server's port::

        with FaultProxy(server_port, fault="reset", after_bytes=200_000, times=1) as proxy:
            ...  # the first connection that carries 200 kB upstream is reset

    ``fault``: ``"reset"`` (RST after ``after_bytes`` client->server bytes), ``"stall"`` (stop
    forwarding for ``stall_seconds`` after ``after_bytes``), ``"half-close"`` (shut the server
    side's write half after ``after_bytes``: the server sees EOF mid-request, the client's
    connection is dropped), or ``None``. ``times`` faults at most that many connections;
    ``connections`` and ``faults`` count them. ``fault`` and ``after_bytes`` may be changed while
    the proxy runs (they apply to what is forwarded from then on).

    ``on_bytes(connection, upstream, data)`` sees every piece before it is forwarded (see
    :class:`RequestMeter`); it runs in the proxy's threads, so keep it quick.

    Without a fault the proxy is transparent, half-closes included: when one side shuts down its
    write half, the other side sees EOF and can still answer; the connection is closed once both
    directions ended.
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
        on_bytes: OnBytes | None = None,
    ) -> None:
        if fault not in (None, "reset", "stall", "half-close"):
            raise ValueError(f"unknown fault {fault!r}: use 'reset', 'stall', 'half-close' or None")
        self.target = (target_host, target_port)
        self.fault = fault
        self.after_bytes = after_bytes
        self.times = times
        self.stall_seconds = stall_seconds
        self.on_bytes = on_bytes
        self.connections = 0
        self.faults = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._accept, name=f"fault-proxy-{self.port}", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        # Only the listener closes: connections already open run on (a stalled request still
        # reaches the server late, which is what some tests wait for).
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                conn = Connection(self.connections, faulty=self.fault is not None and self.faults < self.times)
                self.connections += 1
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                name = f"fault-proxy-{self.port}-{conn.number}-{'up' if up else 'down'}"
                threading.Thread(target=self._pipe, args=(conn, src, dst, up), name=name, daemon=True).start()

    def _take_fault(self, conn: Connection) -> str | None:
        """The fault to inject on ``conn`` now (counted), or ``None`` once ``times`` happened."""
        with self._lock:
            conn.faulty = False
            if self.fault is None or self.faults >= self.times:
                return None
            self.faults += 1
            return self.fault

    def _pipe(self, conn: Connection, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    # a half-close: pass it on, the other direction may still carry an answer
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                if upstream:
                    conn.up += len(data)
                else:
                    conn.down += len(data)
                if self.on_bytes is not None:
                    self.on_bytes(conn, upstream, data)
                if upstream and conn.faulty and self.fault is not None and conn.up >= self.after_bytes:
                    cut = max(0, len(data) - (conn.up - self.after_bytes))
                    dst.sendall(data[:cut])
                    data = data[cut:]
                    fault = self._take_fault(conn)
                    if fault is not None:
                        if fault == "reset":
                            self._reset(src, dst)
                            return
                        if fault == "half-close":
                            # the client's connection goes first: the server answers only once
                            # it sees EOF, and that answer must not reach the client (it did
                            # when the two steps ran the other way round and the answer won)
                            _drop(src)
                            with contextlib.suppress(OSError):
                                src.close()
                            with contextlib.suppress(OSError):
                                dst.shutdown(socket.SHUT_WR)  # the server sees EOF mid-request
                            break  # the server's answer (if any) is drained by the other direction
                        if fault == "stall":
                            time.sleep(self.stall_seconds)
                dst.sendall(data)
        except OSError:
            # one side failed: wake the other direction's thread and end the connection
            _drop(src)
            _drop(dst)
        finally:
            with self._lock:
                conn._open -= 1
                last = conn._open == 0
            if last:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()

    @staticmethod
    def _reset(src: socket.socket, dst: socket.socket) -> None:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                # wake the other direction's thread blocked in recv() on this socket (SHUT_RD
                # sends nothing), so the descriptor is really released and the RST goes out
                s.shutdown(socket.SHUT_RD)
            with contextlib.suppress(OSError):
                s.close()  # with SO_LINGER 0: an RST, to both sides


def _drop(s: socket.socket) -> None:
    """Shut both halves: a thread blocked in ``recv`` on ``s`` wakes up (``close`` alone would not)."""
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


class RequestMeter:
    """An ``on_bytes`` hook that finds where requests end on each connection.

    ``marks[i]`` lists, for connection ``i``, the client->server byte counts at which the server
    started answering, i.e. where each request ended (TLS handshake records included). Measure a
    clean upload with it, then put a fault a few bytes before such a mark::

        meter = RequestMeter()
        with FaultProxy(server_port, on_bytes=meter) as proxy:
            ...  # one clean put through proxy.port
        end_of_first_request = meter.marks[0][1]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_connection: dict[int, list[int]] = {}

    @property
    def marks(self) -> list[list[int]]:
        with self._lock:
            return [list(self._by_connection[n]) for n in sorted(self._by_connection)]

    def __call__(self, conn: Connection, upstream: bool, data: bytes) -> None:
        with self._lock:
            marks = self._by_connection.setdefault(conn.number, [])
            if not upstream and (not marks or marks[-1] != conn.up):
                marks.append(conn.up)


@contextlib.contextmanager
def faults_in_turn(
    target_port: int, plan: list[tuple[str, int, int]], *, stall_seconds: float = 5.0
) -> Iterator[tuple[FaultProxy, Callable[[], None]]]:
    """One :class:`FaultProxy` whose fault moves on along ``plan`` as faults happen.

    ``plan`` is ``[(fault, after_bytes, total faults once this step is done), ...]``, in order;
    the proxy faults ``plan[-1][2]`` connections in all (a step may take one fault more: it moves
    on a few milliseconds late). Yields ``(proxy, calm)``; ``calm()`` ends the faults. One proxy
    rather than a chain: every fault reaches the server directly."""
    fault, after, _ = plan[0]
    proxy = FaultProxy(target_port, fault=fault, after_bytes=after, times=plan[-1][2], stall_seconds=stall_seconds)
    stop = threading.Event()

    def advance() -> None:
        step = 0
        while step + 1 < len(plan) and not stop.wait(0.002):
            if proxy.faults >= plan[step][2]:
                step += 1
                proxy.fault, proxy.after_bytes, _ = plan[step]

    mover = threading.Thread(target=advance, name=f"fault-plan-{proxy.port}", daemon=True)

    def calm() -> None:
        """No more faults from here on."""
        stop.set()
        if mover.is_alive():
            mover.join(5)
        proxy.fault = None

    with proxy:
        mover.start()
        try:
            yield proxy, calm
        finally:
            calm()


#: every fault a :class:`FaultProxy` injects
FAULTS = ("reset", "stall", "half-close")


def fault_cases(shapes: Iterable[str], *, late: str | None = None, reason: str = "") -> list[Any]:
    """``pytest.param(fault, shape)`` for every fault and shape (ids ``"<fault>-<shape>"``), for
    ``@pytest.mark.parametrize(("fault", "shape"), ...)``. ``("stall", late)`` is a strict xfail
    with ``reason``: a request stalled past the client's timeout still reaches the store."""
    import pytest

    def marks(fault: str, shape: str) -> Any:
        if late is not None and (fault, shape) == ("stall", late):
            return pytest.mark.xfail(strict=True, reason=reason)
        return ()

    return [pytest.param(f, s, marks=marks(f, s), id=f"{f}-{s}") for f in FAULTS for s in shapes]
