"""The ASGI application, assembled: pages, the job API, sign-ups, limits, security headers.

Nothing a request carries is echoed back or logged: errors name the field, never its value;
the request log has the method, the route and the status, never a body or a query string.
Each concern lives in its own module: ``headers`` (security headers, request log), ``bodies``
(reading JSON safely), ``ratelimit`` (client keys), ``events`` (the change feed),
``job_routes``, ``signups``, ``pages``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .db import ServiceDB
from .events import ChangeFeed, StreamLimits
from .headers import SecurityHeaders, error
from .job_routes import job_routes
from .jobs import JobManager
from .offers import Catalogue
from .pages import DEFAULT_CONTACT, page_routes
from .ratelimit import RateLimit, client_key
from .signups import signup_routes


def create_app(
    db: ServiceDB,
    manager: JobManager,
    catalogue: Catalogue,
    server_secret: bytes,
    job_limit: RateLimit,
    signup_limit: RateLimit,
    sse_interval: float = 0.5,
    stream_limits: StreamLimits | None = None,
    security_contact: str = DEFAULT_CONTACT,
    signing_public_key: str | None = None,
) -> Starlette:
    rules = {"jobs": job_limit, "signups": signup_limit}
    feed = ChangeFeed(manager.snapshots, sse_interval, stream_limits or StreamLimits())

    def key_of(request: Request) -> str:
        # the peer of the TLS connection (proxy headers are not trusted), as HMAC of its /64 or /32
        return client_key(server_secret, request.client.host if request.client else None)

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is None or origin == f"https://{request.headers.get('host', '')}"

    async def guard(request: Request, bucket: str) -> Response | None:
        """Refuse a cross-origin POST, then count it against the client's limit for ``bucket``."""
        if not same_origin(request):
            return error(403, "cross-origin request refused")
        rule = rules.get(bucket)
        if rule is None:
            return None
        wait = await run_in_threadpool(db.hit, key_of(request), bucket, rule.limit, rule.window)
        if wait > 0:
            return error(429, "too many requests; try again later", {"Retry-After": str(max(1, int(wait + 0.999)))})
        return None

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = (
            exc.detail
            if exc.status_code in (400, 408, 413, 415)
            else {404: "not found", 405: "method not allowed"}.get(exc.status_code, "request refused")
        )
        return error(exc.status_code, detail, dict(exc.headers or {}))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await run_in_threadpool(manager.shutdown)

    app = Starlette(
        routes=[
            *page_routes(catalogue, security_contact, signing_public_key),
            *job_routes(manager, feed, guard, key_of),
            *signup_routes(db, guard),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.feed = feed
    app.add_middleware(SecurityHeaders)
    return app
