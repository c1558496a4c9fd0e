"""What the service shows that is not the job API: the page and its assets, the security page,
``/.well-known/security.txt`` (RFC 9116), the advisories feed, offers, health, OpenAPI."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .offers import Catalogue
from .openapi import spec

DEFAULT_CONTACT = "mailto:security@portshift.app"
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/security": ("security.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/security.js": ("security.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
    "/favicon.ico": ("icon.svg", "image/svg+xml"),
}


def advisories() -> dict[str, object]:
    """The advisories feed (JSON Feed 1.1), from ``advisories.json`` shipped with the package."""
    doc: dict[str, object] = json.loads((resources.files("portshift_server") / "advisories.json").read_text("utf-8"))
    return doc


def security_txt(contact: str, now: datetime | None = None) -> str:
    expires = (now or datetime.now(timezone.utc)) + timedelta(days=180)
    return (
        f"Contact: {contact}\n"
        f"Expires: {expires.strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
        "Preferred-Languages: en\n"
        "# Policy and advisories: /security and /advisories on this host\n"
    )


def permissions() -> dict[str, dict[str, str]]:
    """Least-privilege snippets per sink type: the same text as docs/permissions/ (a test keeps
    them equal)."""
    doc: dict[str, dict[str, str]] = json.loads((resources.files("portshift_server") / "permissions.json").read_text("utf-8"))
    return doc


def page_routes(catalogue: Catalogue, contact: str, signing_public_key: str | None = None) -> list[Route]:
    static = resources.files("portshift_server") / "static"
    policies = permissions()

    def asset_route(path: str, name: str, media_type: str) -> Route:
        async def serve(request: Request) -> Response:
            return Response((static / name).read_bytes(), media_type=media_type)

        return Route(path, serve)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec(catalogue))

    async def health(request: Request) -> Response:
        # liveness only: how busy the service is stays with the operator (logs)
        return JSONResponse({"ok": True})

    async def offers(request: Request) -> Response:
        doc = catalogue.describe()
        for sink in doc["sinks"]:
            sink["permissions"] = policies.get(sink["type"])
        doc["signing"] = {"public_key": "/manifest-signing.pub.pem"} if signing_public_key else None
        return JSONResponse(doc)

    async def public_key(request: Request) -> Response:
        if signing_public_key is None:
            return JSONResponse({"error": "this service does not sign manifests"}, status_code=404)
        return Response(signing_public_key, media_type="application/x-pem-file")

    async def security(request: Request) -> Response:
        return PlainTextResponse(security_txt(contact))

    async def feed(request: Request) -> Response:
        return JSONResponse(advisories(), media_type="application/feed+json")

    return [
        *(asset_route(path, name, media) for path, (name, media) in _ASSETS.items()),
        Route("/openapi.json", openapi),
        Route("/api/health", health),
        Route("/api/offers", offers),
        Route("/.well-known/security.txt", security),
        Route("/advisories", feed),
        Route("/manifest-signing.pub.pem", public_key),
    ]
