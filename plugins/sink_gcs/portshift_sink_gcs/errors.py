"""HTTP answers and SDK exceptions -> portshift errors, at the SDK boundary.

``requests``/``google-auth`` exceptions carry the prepared request (the token exchange's
body holds the signed JWT grant; upload URLs hold the resumable session id) and their frames
hold them in locals. Callers raise what these functions return ``from None``, so none of that
travels up. Messages carry the operation, the HTTP status, GCS's reason and the object's
``gs://bucket/name`` location; server text is scrubbed and bounded.
"""

from __future__ import annotations

import json
from typing import Any

import google.auth.exceptions
import requests
import urllib3

from portshift import (
    AuthError,
    PortshiftError,
    SinkError,
    connection_failed,
    http_status_error,
    redirect_refused,
    refused_request,
    sanitize_message,
)


def _reason_and_message(response: requests.Response) -> tuple[str, str]:
    try:
        doc = json.loads(response.content[:65536] or b"{}")
    except ValueError:
        return "", sanitize_message(response.text[:300], 200) if response.text else ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return "", ""
    reason = ""
    errors = err.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        reason = str(errors[0].get("reason") or "")
    return reason, sanitize_message(str(err.get("message") or ""), 240)


def from_response(response: requests.Response, operation: str, location: str) -> PortshiftError:
    """A portshift error for an unexpected HTTP answer from GCS."""
    status = int(response.status_code)
    reason, message = _reason_and_message(response)
    what = f"GCS answered {reason or 'an error'}"
    if message:
        what += f": {message}"
    if 300 <= status < 400:
        hint = "set api_endpoint to the JSON API endpoint itself"
        return redirect_refused(operation=operation, status=status, location=location, hint=hint)
    if status == 401:
        return AuthError(
            what,
            operation=operation,
            status=status,
            location=location,
            hint="the access token was refused: check the key or the workload identity binding",
        )
    if status == 403 and "storage.objects.delete" in message:
        # not a credentials problem: this one object already exists (e.g. a retry after a write
        # whose answer was lost). The file fails; the job goes on.
        return SinkError(
            what,
            operation=operation,
            status=status,
            location=location,
            retryable=False,
            hint="an object already exists under this name and replacing it needs storage.objects.delete, "
            "which roles/storage.objectCreator does not grant (docs/permissions/gcs.md)",
        )
    if status == 403:
        hint = "the identity needs roles/storage.objectCreator on the bucket (docs/permissions/gcs.md)"
        if "cloudkms" in message.lower() or "kms" in reason.lower():
            hint = "the bucket's Cloud Storage service agent needs roles/cloudkms.cryptoKeyEncrypterDecrypter on kms_key_name"
        return AuthError(what, operation=operation, status=status, location=location, hint=hint)
    if status == 400 and ("crc32c" in message.lower() or "md5" in message.lower() or "hash" in message.lower()):
        return SinkError(
            "GCS rejected the data: the checksum it computed on receipt differs from the one sent "
            f"(bytes changed in transit) [{message or reason}]",
            operation=operation,
            status=status,
            location=location,
            retryable=True,
        )
    if status == 404:
        return SinkError(
            what,
            operation=operation,
            status=status,
            location=location,
            retryable=False,
            hint="check the bucket name; the sink never creates buckets",
        )
    return http_status_error(what, operation=operation, status=status, location=location)


def from_exception(e: BaseException, operation: str, location: str) -> PortshiftError:
    """A portshift error for an exception raised while talking to GCS or the token endpoint."""
    if isinstance(e, PortshiftError):
        return e
    refused = refused_request(e, operation, location)
    if refused:
        return refused
    if isinstance(e, google.auth.exceptions.RefreshError):
        return AuthError(
            f"the token endpoint refused the credentials ({_refresh_detail(e)})",
            operation="get access token",
            location=location,
            hint="the key may be revoked or disabled, or the workload identity binding is missing",
        )
    if isinstance(e, google.auth.exceptions.InvalidOperation):  # e.g. anonymous credentials answered 401
        return AuthError(
            "the endpoint refused the request as unauthenticated", operation=operation, location=location, status=401
        )
    if isinstance(e, google.auth.exceptions.TransportError):
        return SinkError(
            "could not reach the token endpoint (connection failed)",
            operation="get access token",
            location=location,
            retryable=True,
        )
    if isinstance(e, requests.exceptions.Timeout):
        return SinkError("GCS did not answer in time", operation=operation, location=location, retryable=True)
    # urllib3's own errors (a refused connection: NewConnectionError) reach here unwrapped,
    # because the adapter never retries (requests re-raises what it does not map)
    if isinstance(e, (requests.exceptions.RequestException, OSError, urllib3.exceptions.HTTPError)):
        return connection_failed(e, "GCS", operation, location)
    return SinkError(f"unexpected {type(e).__name__}", operation=operation, location=location, retryable=False)


def _refresh_detail(e: BaseException) -> str:
    # google-auth: RefreshError("invalid_grant: Invalid JWT Signature.", {response json})
    first: Any = e.args[0] if e.args else ""
    text = first if isinstance(first, str) else type(e).__name__
    return sanitize_message(text, 160)
