"""SDK exceptions -> portshift errors, at the SDK boundary.

The SDK's exceptions carry the request (whose URL holds the SAS once the credential policy
ran) and its frames hold it in locals. Callers raise what :func:`translate` returns with
``from None``, so none of that travels up. Messages carry the operation, the HTTP status, the
storage error code and a location without query string.
"""

from __future__ import annotations

from azure.core.exceptions import AzureError, HttpResponseError

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

_AUTH_HINTS = {
    "AuthorizationPermissionMismatch": "the SAS lacks a permission this operation needs: it must grant create "
    "and write (sp=cw) on the container",
    "AuthorizationFailure": "the SAS was not accepted: expired, revoked, signed for another account or "
    "container, or used from a disallowed IP address or over a disallowed protocol",
    "AuthenticationFailed": "the SAS signature does not match: it was altered, or signed with a rotated key",
    "AuthorizationProtocolMismatch": "the SAS does not allow this protocol",
    "AuthorizationSourceIPMismatch": "the SAS does not allow this machine's IP address (sip)",
    "AuthorizationResourceTypeMismatch": "the account SAS does not cover objects (srt must include o)",
    "AuthorizationServiceMismatch": "the account SAS does not cover the blob service (ss must include b)",
    "KeyBasedAuthenticationNotPermitted": "the storage account does not allow SAS/key authorization",
}

#: The same codes, for the reader of ``portshift verify --store`` (read + list SAS).
_READ_AUTH_HINTS = {
    **_AUTH_HINTS,
    "AuthorizationPermissionMismatch": "the SAS lacks a permission this operation needs: verification needs "
    "read and list (sp=rl) on the container",
}


def error_code(e: HttpResponseError) -> str:
    """The storage error code of an answer (``BlobNotFound``), or ``""``."""
    code = getattr(e, "error_code", None)
    if code is not None:
        code = getattr(code, "value", code)
    if not code and e.response is not None:
        try:
            code = e.response.headers.get("x-ms-error-code")
        except Exception:  # noqa: BLE001 - best effort
            code = None
    return str(code or "")


def _server_message(e: HttpResponseError) -> str:
    text = str(getattr(e, "reason", "") or "")
    message = getattr(e, "message", "") or ""
    first = message.splitlines()[0] if message else ""
    # "Operation returned an invalid status 'X'" carries the server's text as X
    if first and "Operation returned an invalid status" not in first:
        text = first
    return sanitize_message(text, 200)


def translate(e: BaseException, operation: str, location: str, *, reading: bool = False) -> PortshiftError:
    """A portshift error describing ``e``; raise it ``from None``. ``reading``: for the reader
    (verify --store), whose hints name the read-only SAS."""
    if isinstance(e, HttpResponseError) and e.status_code is not None:
        status = int(e.status_code)
        code = error_code(e)
        detail = _server_message(e)
        what = f"Azure answered {code or 'an error'}"
        if detail and detail not in what:
            what += f": {detail}"
        if 300 <= status < 400:
            hint = "set account_url to the storage account's blob endpoint itself"
            return redirect_refused(operation=operation, status=status, location=location, hint=hint)
        if status in (401, 403):
            hints = _READ_AUTH_HINTS if reading else _AUTH_HINTS
            return AuthError(what, operation=operation, status=status, location=location, hint=hints.get(code))
        if status == 400 and (code == "Md5Mismatch" or "md5" in detail.lower()):
            return SinkError(
                "Azure rejected the data: the MD5 it computed on receipt differs from the one sent "
                f"(bytes changed in transit) [{code or 'Md5Mismatch'}]",
                operation=operation,
                status=status,
                location=location,
                retryable=True,
            )
        if status == 404 and code == "ContainerNotFound":
            return SinkError(
                what,
                operation=operation,
                status=status,
                location=location,
                retryable=False,
                hint="check the container name" if reading else "create the container first; the sink never creates containers",
            )
        if status == 409 and code in ("EncryptionScopeDisabled", "EncryptionScopeNotFound"):
            return SinkError(what, operation=operation, status=status, location=location, retryable=False)
        return http_status_error(what, operation=operation, status=status, location=location)
    if isinstance(e, AzureError) or isinstance(e, OSError):
        return refused_request(e, operation, location) or connection_failed(e, "Azure", operation, location)
    return SinkError(f"unexpected {type(e).__name__}", operation=operation, location=location, retryable=False)
