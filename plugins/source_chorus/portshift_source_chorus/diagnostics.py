"""What went wrong, in one line a user can act on: Chorus error bodies, answers that do not come
from the Chorus API at all, and connection failures named by their OS reason.

Nothing here raises or logs; the client turns these texts into portshift errors.
"""

from __future__ import annotations

import json
import socket
import ssl

import httpx

from portshift import exception_chain, handshake_failure, sanitize_message

MAX_ERROR_BODY = 64 * 1024


def error_text(body: bytes, status: int) -> str:
    """A clear, one-line message from a Chorus error body: JSON:API ``errors[]`` (``/api/v1``),
    or the undocumented ``/v3`` shapes (``message``, ``errors`` as strings). Never raw HTML."""
    try:
        doc = json.loads(body[:MAX_ERROR_BODY].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return f"HTTP {status}"
    parts: list[str] = []
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list):
            for err in errors[:5]:
                if isinstance(err, dict):
                    title = str(err.get("title") or "").strip()
                    detail = str(err.get("detail") or "").strip()
                    text = ": ".join(p for p in (title, detail) if p) or "error"
                    code = err.get("code")
                    if code:
                        text += f" (code {code})"
                    parts.append(text)
                elif isinstance(err, str):
                    parts.append(err)
        for key in ("message", "error", "detail"):
            if not parts and isinstance(doc.get(key), str):
                parts.append(doc[key])
    if not parts:
        return f"HTTP {status}"
    return sanitize_message("; ".join(parts), limit=300)


def from_chorus(body: bytes, content_type: str | None) -> bool:
    """Does an error answer look like the Chorus API's own (a JSON body with ``errors`` or
    ``message``)? A proxy, a firewall or another web server answers HTML or nothing."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if "json" not in ctype:
        return False
    try:
        doc = json.loads(body[:MAX_ERROR_BODY].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and ("errors" in doc or isinstance(doc.get("message"), str))


def tls_failure(error: BaseException) -> tuple[str, str] | None:
    """(message, hint) when ``error`` is a TLS set-up failure no retry can fix, else None.

    The decision (handshake or verification failure vs. a connection dropped under TLS) is
    :func:`portshift.handshake_failure`'s; here it only gains the option to check.
    """
    reason = handshake_failure(error)
    if reason is None:
        return None
    for e in exception_chain(error):
        if isinstance(e, ssl.SSLCertVerificationError):
            why = (e.verify_message or e.reason or "").strip().rstrip(".")
            if "hostname mismatch" in why.lower() or "ip address mismatch" in why.lower():
                return (
                    f"TLS certificate verification failed: {why}",
                    "the host name in base_url must be one the server certificate names",
                )
            message = f"TLS certificate verification failed: {why}" if why else "TLS certificate verification failed"
            return message, "for a private CA set ca_bundle to its PEM file"
    if "CERTIFICATE" in reason.upper():
        return "TLS certificate verification failed", "for a private CA set ca_bundle to its PEM file"
    inner = reason.removeprefix("TLS handshake failed (").removesuffix(")")
    return (
        f"TLS handshake failed: {inner}",
        "the server must speak TLS 1.2 or later with a certificate your ca_bundle trusts",
    )


def connection_failure(error: BaseException, host: str) -> tuple[str, str]:
    """(reason, hint) for a request that never got an answer: refused, DNS, timeout, reset.

    The reason comes from the OS error under httpx's exception; the hint names the option to
    check. ``host`` is ``host:port`` (never a URL with a query)."""
    chain = exception_chain(error)
    for e in chain:
        if isinstance(e, socket.gaierror):
            return f"DNS lookup of {host} failed ({e.strerror or e})", "check the host name in base_url"
        if isinstance(e, ConnectionRefusedError):
            return f"connection to {host} refused", "check base_url (host and port): nothing listens there"
    if isinstance(error, httpx.ConnectTimeout):
        return (
            f"timed out connecting to {host}",
            "check base_url and that a firewall or proxy lets https through (connect_timeout)",
        )
    if isinstance(error, httpx.TimeoutException):
        return f"{host} did not answer in time", "a slow or overloaded server (read_timeout)"
    for e in chain:
        if isinstance(e, ConnectionResetError):
            return f"connection to {host} reset", "a proxy or the server closed the connection"
        if isinstance(e, OSError) and not isinstance(e, ssl.SSLError) and e.strerror:
            return f"connection to {host} failed ({e.strerror})", "check base_url and the network"
        if isinstance(e, ssl.SSLError):
            return f"connection to {host} dropped under TLS", "a proxy or the server closed the connection"
    if isinstance(error, httpx.RemoteProtocolError):
        return f"{host} closed the connection without an answer", "a proxy or the server closed the connection"
    return f"connection to {host} failed ({type(error).__name__})", "check base_url and the network"
