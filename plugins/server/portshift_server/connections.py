"""Connection limits in front of the app, so that idle or slow clients cannot exhaust the service.

- The TLS handshake must finish within ``handshake_timeout`` (asyncio's default is 60 s).
- A request head must arrive within ``header_timeout`` of the connection (or of the end of the
  previous response on a kept-alive connection): a client trickling header bytes is cut off.
- An idle kept-alive connection is closed after ``keep_alive`` seconds (uvicorn's own timer).
- At most ``max_connections`` connections are open at once. A new connection over the cap closes
  the oldest connection that has no request in progress (an idle or half-sent one), so a new
  client always gets in while the slots are held by idle connections; when every slot has a
  request in progress, the new connection is closed instead.
- The process's file limit is raised to its hard limit at start, and the cap kept below it, so
  the listening socket never fails to accept for lack of descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
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

    def admit(self, conn: GuardedH11Protocol) -> bool:
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

    def release(self, conn: GuardedH11Protocol) -> None:
        self.open.pop(id(conn), None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a shared connection cap."""

    limits: ConnectionLimits  # set on the subclass made by protocol_class()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def idle(self) -> bool:
        """No request in progress: nothing sent yet, a head still arriving, or between requests."""
        return self.cycle is None or self.cycle.response_complete

    def close_now(self) -> None:
        self._cancel_head_timer()
        if self.transport is not None and not self.transport.is_closing():
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
        if not self.limits.admit(self):
            self.close_now()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.limits.release(self)
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE,) and self._head_timer is not None:
            self._cancel_head_timer()  # the head is complete: the app's own timeouts apply now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    return type("PortshiftH11Protocol", (GuardedH11Protocol,), {"limits": limits})


class GuardedServer(uvicorn.Server):
    """uvicorn's server with a TLS handshake deadline on its one host/port listener."""

    def __init__(self, config: uvicorn.Config, limits: ConnectionLimits) -> None:
        super().__init__(config)
        self.limits = limits

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            raise SystemExit(3)
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                create_protocol,
                host=config.host,
                port=config.port,
                ssl=config.ssl,
                backlog=config.backlog,
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or type(exc).__name__)
            await self.lifespan.shutdown()
            raise SystemExit(3) from None
        self.servers = [server]
        self.started = True
