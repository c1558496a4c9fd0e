"""The ASGI application: the JSON API, the page, security headers on every response.

Nothing a request carries is echoed back or logged: errors name the field, never its value;
the request log has the method, the route and the status, never a body or a query string.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .db import TERMINAL, ServiceDB
from .jobs import Busy, Conflict, JobManager
from .launcher import zero
from .offers import Catalogue, RequestError
from .openapi import EMAIL as _EMAIL
from .openapi import SIGNUP_NAME as _SIGNUP_NAME
from .openapi import SIGNUP_TEXT as _SIGNUP_TEXT
from .openapi import spec

log = logging.getLogger("portshift.server")

MAX_BODY = 64 * 1024
SIGNUP_TEXT = re.compile(_SIGNUP_TEXT)
SIGNUP_NAME = re.compile(_SIGNUP_NAME)
EMAIL = re.compile(_EMAIL)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"content-security-policy", CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), interest-cohort=()"),
]
_OWN = {name for name, _ in SECURITY_HEADERS}


@dataclass
class RateLimit:
    limit: int
    window: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"10/3600"``: 10 requests per 3600 seconds."""
        count, _, seconds = text.partition("/")
        limit, window = int(count), float(seconds)
        if limit < 1 or window <= 0:
            raise ValueError("expected N/SECONDS with N >= 1 and SECONDS > 0")
        return cls(limit, window)


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response (errors and streams included),
    and one log line per request without body or query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OWN]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as e:  # noqa: BLE001 - answer 500 with no detail; log the type only
            log.error("internal error on %s %s: %s", scope["method"], _route_for_log(scope["path"]), type(e).__name__)
            if not response_started:
                await error(500, "internal error")(scope, receive, send_with_headers)
        finally:
            log.info(
                "%s %s %s %.0fms", scope["method"], _route_for_log(scope["path"]), status, (time.monotonic() - started) * 1000
            )


def _route_for_log(path: str) -> str:
    """The path with a job id shortened: job ids are capabilities, so logs keep a prefix only."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] == "api" and parts[2] == "jobs" and parts[3]:
        parts[3] = parts[3][:6] + "…"
    return "/".join(parts)[:200]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_json(request: Request) -> Any:
    """The request body as JSON: application/json, at most MAX_BODY bytes. The raw bytes are
    collected in one buffer that is zeroed once parsed (the parsed strings cannot be)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, "send application/json")
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > MAX_BODY:
                raise HTTPException(413, f"the body is larger than {MAX_BODY} bytes")
        try:
            return json.loads(buf)
        except (ValueError, UnicodeDecodeError):
            raise HTTPException(400, "the body is not valid JSON") from None
    finally:
        zero(buf)


def create_app(
    db: ServiceDB,
    manager: JobManager,
    catalogue: Catalogue,
    server_secret: bytes,
    job_limit: RateLimit,
    signup_limit: RateLimit,
    sse_interval: float = 0.5,
) -> Starlette:
    static = resources.files("portshift_server") / "static"

    def client_key(request: Request) -> str:
        # the peer address of the TLS connection (proxy headers are not trusted)
        ip = request.client.host if request.client else "unknown"
        return hmac.new(server_secret, ip.encode(), hashlib.sha256).hexdigest()

    async def limited(request: Request, bucket: str, rule: RateLimit) -> Response | None:
        wait = await run_in_threadpool(db.hit, client_key(request), bucket, rule.limit, rule.window)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            return error(429, "too many requests; try again later", {"Retry-After": str(retry)})
        return None

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        return origin is None or origin == f"https://{request.headers.get('host', '')}"

    def asset(name: str, media_type: str) -> Response:
        return Response((static / name).read_bytes(), media_type=media_type)

    async def index(request: Request) -> Response:
        return asset("index.html", "text/html; charset=utf-8")

    async def app_js(request: Request) -> Response:
        return asset("app.js", "text/javascript; charset=utf-8")

    async def style_css(request: Request) -> Response:
        return asset("style.css", "text/css; charset=utf-8")

    async def icon(request: Request) -> Response:
        return asset("icon.svg", "image/svg+xml")

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec(catalogue))

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "running_jobs": manager.running()})

    async def offers(request: Request) -> Response:
        return JSONResponse(catalogue.describe())

    async def create_job(request: Request) -> Response:
        if not same_origin(request):
            return error(403, "cross-origin request refused")
        if (resp := await limited(request, "jobs", job_limit)) is not None:
            return resp
        doc = await read_json(request)
        try:
            job_id = await run_in_threadpool(manager.create, doc)
        except RequestError as e:
            return error(400, str(e))
        except Busy as e:
            return error(503, str(e), {"Retry-After": "60"})
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
        if not same_origin(request):
            return error(403, "cross-origin request refused")
        try:
            await run_in_threadpool(manager.cancel, request.path_params["job_id"])
        except KeyError:
            return error(404, "no such job")
        except Conflict as e:
            return error(409, str(e))
        snap = await run_in_threadpool(manager.snapshot, request.path_params["job_id"])
        return JSONResponse(snap, status_code=202)

    async def resume_job(request: Request) -> Response:
        if not same_origin(request):
            return error(403, "cross-origin request refused")
        if (resp := await limited(request, "jobs", job_limit)) is not None:
            return resp
        job_id = request.path_params["job_id"]
        doc = await read_json(request)
        try:
            await run_in_threadpool(manager.resume, job_id, doc)
        except KeyError:
            return error(404, "no such job")
        except RequestError as e:
            return error(400, str(e))
        except Conflict as e:
            return error(409, str(e))
        except Busy as e:
            return error(503, str(e), {"Retry-After": "60"})
        finally:
            del doc
        snap = await run_in_threadpool(manager.snapshot, job_id)
        return JSONResponse(snap, status_code=202)

    async def job_events(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        first = await run_in_threadpool(manager.snapshot, job_id)
        if first is None:
            return error(404, "no such job")

        async def stream() -> Any:
            last: dict[str, Any] | None = None
            quiet = 0.0
            while True:
                snap = await run_in_threadpool(manager.snapshot, job_id)
                if snap is None:
                    return
                if snap != last:
                    yield f"event: status\ndata: {json.dumps(snap)}\n\n"
                    last, quiet = snap, 0.0
                elif quiet >= 15:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                if snap["status"] in TERMINAL:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(sse_interval)
                quiet += sse_interval

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    async def signup(request: Request) -> Response:
        if not same_origin(request):
            return error(403, "cross-origin request refused")
        if (resp := await limited(request, "signups", signup_limit)) is not None:
            return resp
        doc = await read_json(request)
        if not isinstance(doc, dict) or set(doc) - {"name", "email", "company"}:
            return error(400, "expected an object with name, email and company")
        values = {}
        for key, limit in (("name", 200), ("email", 254), ("company", 200)):
            value = doc.get(key, "")
            if not isinstance(value, str) or len(value) > limit or not SIGNUP_TEXT.match(value):
                return error(400, f"{key}: at most {limit} characters of text")
            values[key] = value
        if not SIGNUP_NAME.match(values["name"]) or not values["email"]:
            return error(400, "name and email are required")
        if not EMAIL.match(values["email"]):
            return error(400, "email: not an e-mail address")
        await run_in_threadpool(db.add_signup, values["name"], values["email"], values["company"])
        return JSONResponse({"ok": True}, status_code=201)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = (
            exc.detail
            if exc.status_code in (400, 413, 415)
            else {404: "not found", 405: "method not allowed"}.get(exc.status_code, "request refused")
        )
        return error(exc.status_code, detail, dict(exc.headers or {}))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        await run_in_threadpool(manager.shutdown)

    routes = [
        Route("/", index),
        Route("/static/app.js", app_js),
        Route("/static/style.css", style_css),
        Route("/static/icon.svg", icon),
        Route("/favicon.ico", icon),
        Route("/openapi.json", openapi),
        Route("/api/health", health),
        Route("/api/offers", offers),
        Route("/api/jobs", create_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", get_job),
        Route("/api/jobs/{job_id}/events", job_events),
        Route("/api/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/api/jobs/{job_id}/resume", resume_job, methods=["POST"]),
        Route("/api/signups", signup, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.add_middleware(SecurityHeaders)
    return app
