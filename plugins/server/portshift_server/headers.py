"""Security headers on every response (pages, API, errors, event streams) and one log line per
request with the method, the route (job ids shortened) and the status: never a body or a query."""

from __future__ import annotations

import logging
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("portshift.server")

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


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the API: ``{"error": "..."}``, naming a field, never a value sent."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def route_for_log(path: str) -> str:
    """The path with a job id shortened: job ids are capabilities, so logs keep a prefix only."""
    parts = path.split("/")
    if len(parts) >= 4 and parts[1] == "api" and parts[2] == "jobs" and parts[3]:
        parts[3] = parts[3][:6] + "…"
    return "/".join(parts)[:200]


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response, a 500 with no detail when a
    handler fails (its exception type is logged, never its message), one log line per request."""

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
            log.error("internal error on %s %s: %s", scope["method"], route_for_log(scope["path"]), type(e).__name__)
            if not response_started:
                await error(500, "internal error")(scope, receive, send_with_headers)
        finally:
            log.info(
                "%s %s %s %.0fms", scope["method"], route_for_log(scope["path"]), status, (time.monotonic() - started) * 1000
            )
