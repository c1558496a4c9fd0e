"""Server-sent events for job progress: one shared change feed, bounded streams.

However many streams follow however many jobs, the feed reads the database once per interval
(one query for every followed job), and only while someone follows. Streams are capped per job,
per client and in total; a stream over a cap is refused with 429 (per job or client) or 503
(the service), each with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .db import TERMINAL

KEEP_ALIVE = 15.0


@dataclass
class StreamLimits:
    total: int = 256
    per_job: int = 4
    per_client: int = 8


@dataclass(eq=False)
class Subscription:
    job_id: str
    client: str
    latest: dict[str, Any] | None = None
    gone: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, snap: dict[str, Any] | None) -> None:
        if snap is None:
            self.gone = True
            self.changed.set()
        elif snap != self.latest:
            self.latest = snap
            self.changed.set()


class StreamRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ChangeFeed:
    def __init__(
        self, snapshots: Callable[[list[str]], dict[str, dict[str, Any]]], interval: float, limits: StreamLimits
    ) -> None:
        self._snapshots = snapshots
        self.interval = interval
        self.limits = limits
        self._by_job: dict[str, set[Subscription]] = defaultdict(set)
        self._by_client: dict[str, int] = defaultdict(int)
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self.polls = 0  #: database reads so far (for tests and the operator)

    def subscribe(self, job_id: str, client: str, first: dict[str, Any]) -> Subscription:
        if self._count >= self.limits.total:
            raise StreamRefused(503, "too many event streams are open; try again in a minute")
        if len(self._by_job[job_id]) >= self.limits.per_job:
            raise StreamRefused(429, f"this job already has {self.limits.per_job} event streams; close one first")
        if self._by_client[client] >= self.limits.per_client:
            raise StreamRefused(429, f"you already have {self.limits.per_client} event streams open; close one first")
        sub = Subscription(job_id, client)
        sub.offer(first)
        self._by_job[job_id].add(sub)
        self._by_client[client] += 1
        self._count += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._by_job.get(sub.job_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._by_job[sub.job_id]
        self._by_client[sub.client] -= 1
        if self._by_client[sub.client] <= 0:
            del self._by_client[sub.client]
        self._count -= 1

    async def _run(self) -> None:
        while self._by_job:
            await asyncio.sleep(self.interval)
            ids = list(self._by_job)
            if not ids:
                break
            snaps = await run_in_threadpool(self._snapshots, ids)
            self.polls += 1
            for job_id in ids:
                for sub in list(self._by_job.get(job_id, ())):
                    sub.offer(snaps.get(job_id))

    async def events(self, sub: Subscription) -> AsyncIterator[str]:
        while True:
            try:
                await asyncio.wait_for(sub.changed.wait(), KEEP_ALIVE)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            sub.changed.clear()
            if sub.gone or sub.latest is None:
                return
            snap = sub.latest
            yield f"event: status\ndata: {json.dumps(snap)}\n\n"
            if snap["status"] in TERMINAL:
                yield "event: end\ndata: {}\n\n"
                return


class EventStream(StreamingResponse):
    """A stream that gives its subscription back however it ends (done, disconnect, error)."""

    def __init__(self, feed: ChangeFeed, sub: Subscription) -> None:
        super().__init__(feed.events(sub), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})
        self._feed, self._sub = feed, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._feed.unsubscribe(self._sub)
