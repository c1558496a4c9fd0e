"""Early-access sign-ups: the only personal data the service keeps.

A sign-up is checked (an e-mail address with a dotted domain; no control or bidirectional
characters anywhere), trimmed, and kept once per e-mail address (case-insensitive): signing up
again updates the name and company. The operator exports them as CSV that a spreadsheet cannot
run as formulas, and deletes one person's data on request (right to erasure).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .bodies import read_json
from .db import ServiceDB
from .headers import error
from .openapi import EMAIL as _EMAIL
from .openapi import SIGNUP_NAME as _SIGNUP_NAME
from .openapi import SIGNUP_TEXT as _SIGNUP_TEXT

SIGNUP_TEXT = re.compile(_SIGNUP_TEXT)
SIGNUP_NAME = re.compile(_SIGNUP_NAME)
EMAIL = re.compile(_EMAIL)
LIMITS = (("name", 200), ("email", 254), ("company", 200))
#: a cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


class SignupRefused(ValueError):
    pass


def clean_signup(doc: object) -> dict[str, str]:
    """The sign-up as stored: checked and trimmed. Raises SignupRefused naming the field."""
    if not isinstance(doc, dict) or set(doc) - {"name", "email", "company"}:
        raise SignupRefused("expected an object with name, email and company")
    values = {}
    for key, limit in LIMITS:
        value = doc.get(key, "")
        if not isinstance(value, str) or len(value) > limit or not SIGNUP_TEXT.match(value):
            raise SignupRefused(f"{key}: at most {limit} characters of text, no control or bidirectional characters")
        values[key] = value.strip()
    if not values["name"] or not SIGNUP_NAME.match(values["name"]) or not values["email"]:
        raise SignupRefused("name and email are required")
    if not EMAIL.match(values["email"]):
        raise SignupRefused("email: not an e-mail address (like name@example.com)")
    return values


def safe_cell(value: str) -> str:
    """A CSV cell no spreadsheet evaluates: a leading formula character is quoted with '."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def export_csv(db: ServiceDB) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["created_at", "name", "email", "company"])
    for row in db.signups():
        writer.writerow([safe_cell(str(row[k] or "")) for k in ("created_at", "name", "email", "company")])
    return out.getvalue()


def signup_routes(db: ServiceDB, guard: Callable[[Request, str], Awaitable[Response | None]]) -> list[Route]:
    async def signup(request: Request) -> Response:
        if (resp := await guard(request, "signups")) is not None:
            return resp
        doc = await read_json(request)
        try:
            values = clean_signup(doc)
        except SignupRefused as e:
            return error(400, str(e))
        await run_in_threadpool(db.add_signup, values["name"], values["email"], values["company"])
        return JSONResponse({"ok": True}, status_code=201)

    return [Route("/api/signups", signup, methods=["POST"])]
