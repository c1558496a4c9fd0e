"""Connection limits in front of the app, so that idle or slow clients cannot exhaust the service.

Every accepted TCP connection is counted from the moment it is accepted, TLS handshake included:
the listener accepts plain TCP and upgrades each connection with ``loop.start_tls`` itself, so a
connection that never finishes (or never starts) its handshake holds a counted slot and can be
closed like any other.

- The TLS handshake must finish within ``handshake_timeout`` (asyncio's default is 60 s).
- A request head must arrive within ``header_timeout`` of the handshake (or of the end of the
  previous response on a kept-alive connection): a client trickling header bytes is cut off.
- An idle kept-alive connection is closed after ``keep_alive`` seconds (uvicorn's own timer).
- At most ``max_connections`` connections are open at once. A new connection over the cap closes
  the oldest connection that has no request in progress (still in its handshake, idle, or
  half-sent), so a new client always gets in while the slots are held by idle connections; when
  every slot has a request in progress, the new connection is closed instead.
- The process's file limit is raised to its hard limit at start, and the cap kept below it, so
  the listening socket never fails to accept for lack of descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("portshift.server.connections")

#: descriptors kept free for the database, job folders, worker pipes and the listening socket
FD_RESERVE = 128


@dataclass
class ConnectionLimits:
    max_connections: int = 1000
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    keep_alive: float = 5.0
    open: OrderedDict[int, Any] = field(default_factory=OrderedDict)
    evicted: int = 0

    def fit_to_file_limit(self) -> None:
        """Raise the soft file limit to the hard one; keep the cap below it."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
        cap = max(16, soft - FD_RESERVE)
        if cap < self.max_connections:
            log.warning("--max-connections lowered to %d: the file limit is %d descriptors", cap, soft)
            self.max_connections = cap

    def admit(self, conn: TlsAcceptor) -> bool:
        """Register a connection; make room by closing the oldest idle one. False: refuse it."""
        self.open[id(conn)] = conn
        if len(self.open) <= self.max_connections:
            return True
        for other in list(self.open.values()):
            if other is not conn and other.idle():
                self.evicted += 1
                other.close_now()
                return True
        return False

    def release(self, conn: TlsAcceptor) -> None:
        self.open.pop(id(conn), None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a shared connection cap."""

    limits: ConnectionLimits  # set on the subclass made by protocol_class()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self.acceptor: TlsAcceptor | None = None

    def idle(self) -> bool:
        """No request in progress: nothing sent yet, a head still arriving, or between requests."""
        return self.cycle is None or self.cycle.response_complete

    def close_now(self) -> None:
        """Drop the connection at once: no TLS close_notify exchange that a silent peer could
        keep waiting (asyncio's TLS shutdown waits up to 30 s), so its descriptor is free now."""
        self._cancel_head_timer()
        if self.acceptor is not None and self.acceptor.raw is not None:
            self.acceptor.raw.abort()
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.idle():
            self.close_now()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self.acceptor is not None:
            self.limits.release(self.acceptor)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE,) and self._head_timer is not None:
            self._cancel_head_timer()  # the head is complete: the app's own timeouts apply now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()


class _UntilAttached(asyncio.Protocol):
    """What ``start_tls`` talks to until the app protocol is attached: bytes that arrive with the
    end of the handshake (a request sent at once) are kept, then replayed in order."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = (exc,)

    def attach(self, tls: asyncio.Transport, app: asyncio.Protocol) -> None:
        app.connection_made(tls)
        tls.set_protocol(app)
        for chunk in self.data:
            app.data_received(chunk)  # type: ignore[attr-defined]
        self.data.clear()
        if self.eof:
            app.eof_received()  # type: ignore[attr-defined]
        if self.lost is not None:
            app.connection_lost(self.lost[0])


class TlsAcceptor(asyncio.Protocol):
    """Accepts one TCP connection, counts it, upgrades it to TLS, then hands it to the app
    protocol. Until the handshake is done it is an idle connection the cap may close."""

    def __init__(self, limits: ConnectionLimits, tls: ssl.SSLContext, app: GuardedH11Protocol) -> None:
        self.limits, self.tls, self.app = limits, tls, app
        self.raw: asyncio.Transport | None = None
        self.established = False
        app.acceptor = self

    def idle(self) -> bool:
        return not self.established or self.app.idle()

    def close_now(self) -> None:
        if self.established:
            self.app.close_now()
        elif self.raw is not None:
            self.raw.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.raw = transport
        transport.pause_reading()  # no byte reaches this protocol; start_tls resumes reading itself
        if not self.limits.admit(self):
            transport.close()
            return
        asyncio.get_running_loop().create_task(self._upgrade(transport))

    def connection_lost(self, exc: Exception | None) -> None:
        self.limits.release(self)  # lost before the upgrade started

    async def _upgrade(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        waiting = _UntilAttached()
        try:
            tls = await loop.start_tls(
                raw, waiting, self.tls, server_side=True, ssl_handshake_timeout=self.limits.handshake_timeout
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError):
            tls = None  # start_tls closed the connection
        if tls is None or tls.is_closing():
            self.limits.release(self)
            if tls is not None:
                tls.close()
            return
        self.established = True
        waiting.attach(tls, self.app)


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    return type("PortshiftH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class GuardedServer(uvicorn.Server):
    """uvicorn's server on one host/port listener that accepts TCP and does TLS itself
    (:class:`TlsAcceptor`), so that connections are counted from accept."""

    def __init__(self, config: uvicorn.Config, limits: ConnectionLimits) -> None:
        super().__init__(config)
        self.limits = limits

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(3)
        config = self.config

        tls = config.ssl
        assert isinstance(tls, ssl.SSLContext), "the service speaks TLS only"

        def create_protocol() -> asyncio.Protocol:
            app = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return TlsAcceptor(self.limits, tls, app)

        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(create_protocol, host=config.host, port=config.port, backlog=config.backlog)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or type(exc).__name__)
            await self.lifespan.shutdown()
            raise SystemExit(3) from None
        self.servers = [server]
        self.started = True
