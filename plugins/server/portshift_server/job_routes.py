"""The job endpoints: create, read, follow (server-sent events), cancel, resume."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .bodies import read_json
from .events import ChangeFeed, EventStream, StreamRefused
from .headers import error
from .jobs import Busy, Conflict, JobManager, TooMany
from .key_check import KeyUnreachable
from .offers import RequestError

Guard = Callable[[Request, str], Awaitable[Response | None]]


def refused(e: Exception) -> Response:
    """The answer when the job manager refuses a request: no such job (``KeyError``) 404, a bad
    request 400, a conflict with the job's state 409, too many jobs of this client 429, the
    server busy 503 (both with ``Retry-After: 60``)."""
    if isinstance(e, KeyError):
        return error(404, "no such job")
    if isinstance(e, RequestError):
        return error(400, str(e))
    if isinstance(e, Conflict):
        return error(409, str(e))
    if isinstance(e, TooMany):
        return error(429, str(e), {"Retry-After": "60"})
    return error(503, str(e), {"Retry-After": "60"})  # Busy, KeyUnreachable


def job_routes(manager: JobManager, feed: ChangeFeed, guard: Guard, client_key: Callable[[Request], str]) -> list[Route]:
    """``guard(request, bucket)``: a refusal (cross-origin, rate limit) or None."""

    async def create_job(request: Request) -> Response:
        if (resp := await guard(request, "jobs")) is not None:
            return resp
        doc = await read_json(request)
        try:
            job_id = await run_in_threadpool(manager.create, doc, client_key(request))
        except (RequestError, TooMany, Busy, KeyUnreachable) as e:
            return refused(e)
        finally:
            del doc
        snap = await run_in_threadpool(manager.snapshot, job_id)
        return JSONResponse(snap, status_code=201, headers={"Location": f"/api/jobs/{job_id}"})

    async def get_job(request: Request) -> Response:
        snap = await run_in_threadpool(manager.snapshot, request.path_params["job_id"])
        if snap is None:
            return error(404, "no such job")
        return JSONResponse(snap)

    async def cancel_job(request: Request) -> Response:
        if (resp := await guard(request, "")) is not None:
            return resp
        try:
            await run_in_threadpool(manager.cancel, request.path_params["job_id"])
        except (KeyError, Conflict) as e:
            return refused(e)
        snap = await run_in_threadpool(manager.snapshot, request.path_params["job_id"])
        return JSONResponse(snap, status_code=202)

    async def resume_job(request: Request) -> Response:
        if (resp := await guard(request, "jobs")) is not None:
            return resp
        job_id = request.path_params["job_id"]
        doc: Any = await read_json(request)
        try:
            await run_in_threadpool(manager.resume, job_id, doc, client_key(request))
        except (KeyError, RequestError, Conflict, TooMany, Busy, KeyUnreachable) as e:
            return refused(e)
        finally:
            del doc
        snap = await run_in_threadpool(manager.snapshot, job_id)
        return JSONResponse(snap, status_code=202)

    async def job_events(request: Request) -> Response:
        first = await run_in_threadpool(manager.snapshot, request.path_params["job_id"])
        if first is None:
            return error(404, "no such job")
        try:
            sub = feed.subscribe(first["id"], client_key(request), first)
        except StreamRefused as e:
            return error(e.status, str(e), {"Retry-After": "30"})
        return EventStream(feed, sub)

    return [
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", get_job),
        Route("/api/jobs/{job_id}/events", job_events),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/jobs/{job_id}/resume", resume_job, methods=["POST"]),
    ]
