"""Turning botocore's exceptions into portshift errors at the SDK boundary.

The result carries the operation, the HTTP status, S3's error code and ``s3://bucket/key``; never
the request (its headers hold the session token and signature), never a credential. Callers
raise it ``from None`` so botocore's exception, its request object and its frames' locals do
not travel up.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import botocore.exceptions

from portshift.errors import AuthError, ConfigError, PortshiftError, RemoteError, SinkError
from portshift.redact import scrub
from portshift.tls import DROPPED_UNDER_TLS, exception_chain, raised_by_handshake

from .client import PlainHTTPRefused, RegionMismatch

#: Error codes that mean "these credentials will not work": the job stops, no retries.
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidPayer",
        "KMS.AccessDeniedException",
        "KMS.DisabledException",
        "KMS.NotFoundException",
        "KMS.KMSInvalidStateException",
    }
)

#: Error codes worth retrying (the core retries the artifact; botocore already retried the call).
RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "BadDigest",
        "IncompleteBody",
        "OperationAborted",
        "Throttling",
        "ThrottlingException",
    }
)

_SSL_REASON = re.compile(
    r"\[SSL: ([A-Z0-9_]+)\]|(certificate verify failed[^)\]'\"]*)|(alert protocol version)"
    r"|(EOF occurred in violation of protocol)",
    re.I,
)
_TLS_FATAL = (
    "CERTIFICATE",
    "VERIFY",
    "PROTOCOL_VERSION",
    "PROTOCOL VERSION",
    "WRONG_VERSION",
    "UNSUPPORTED_PROTOCOL",
    "HOSTNAME",
    "NO_PROTOCOLS",
    "HANDSHAKE_FAILURE",
)


def _short(text: str, limit: int = 160) -> str:
    text = scrub(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def s3_error(e: BaseException, operation: str, location: str) -> PortshiftError:
    """The portshift error for botocore exception ``e`` raised by ``operation`` on ``location``."""
    if isinstance(e, PortshiftError):
        return e
    if isinstance(e, RegionMismatch):
        # Fatal for the job (AuthError is the core's "stop everything" error): every further
        # request would meet the same answer, and following it would break data residency.
        where = f"in region {e.region}" if e.region else "elsewhere (a redirect)"
        return AuthError(
            f"S3 says the bucket is {where}; portshift does not follow region redirects",
            operation=operation,
            status=e.status,
            location=location,
            hint="set region to the bucket's region, if allowed_regions permits it",
        )
    if isinstance(e, botocore.exceptions.ClientError):
        err = e.response.get("Error", {}) if isinstance(e.response, dict) else {}
        meta = e.response.get("ResponseMetadata", {}) if isinstance(e.response, dict) else {}
        code = str(err.get("Code") or "Unknown")
        status = meta.get("HTTPStatusCode")
        message = _short(err.get("Message") or "")
        text = f"{code}: {message}" if message else code
        error: RemoteError
        if code in AUTH_CODES or status in (401,):
            error = AuthError(
                text,
                operation=operation,
                status=status,
                location=location,
                hint="check the credentials and the IAM policy (docs/permissions/s3.md)",
            )
        elif code == "NoSuchBucket":
            error = SinkError(text, operation=operation, status=status, location=location, retryable=False)
        else:
            retryable = code in RETRYABLE_CODES or (isinstance(status, int) and status >= 500)
            error = SinkError(text, operation=operation, status=status, location=location, retryable=retryable)
        error.code = code  # type: ignore[attr-defined]  # S3's error code, for callers that branch on it
        return error
    if isinstance(e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return AuthError("no usable AWS credentials", operation=operation, location=location)
    if isinstance(e, botocore.exceptions.SSLError):
        dropped = _dropped_connection(e)
        if dropped:
            return SinkError(f"connection failed ({dropped})", operation=operation, location=location, retryable=True)
        reason = _tls_reason(e)
        # A certificate or protocol-version refusal will not heal by retrying; another failed
        # handshake may.
        fatal = any(word in reason.upper() for word in _TLS_FATAL)
        return SinkError(f"TLS failure ({reason})", operation=operation, location=location, retryable=not fatal)
    if isinstance(e, botocore.exceptions.HTTPClientError) and isinstance(e.kwargs.get("error"), PlainHTTPRefused):
        return ConfigError(f"{operation}: refusing to send a request that is not https:// to {location}")
    if isinstance(e, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return SinkError("could not connect to the S3 endpoint", operation=operation, location=location, retryable=True)
    if isinstance(
        e,
        botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectionClosedError | botocore.exceptions.HTTPClientError,
    ):
        return SinkError(f"connection failed ({type(e).__name__})", operation=operation, location=location, retryable=True)
    if isinstance(e, botocore.exceptions.ParamValidationError):
        return SinkError("invalid request parameters", operation=operation, location=location, retryable=False)
    if isinstance(e, botocore.exceptions.BotoCoreError):
        return SinkError(type(e).__name__, operation=operation, location=location, retryable=True)
    return SinkError(f"unexpected {type(e).__name__}", operation=operation, location=location, retryable=False)


def _ssl_errors(error: BaseException) -> list[ssl.SSLError]:
    return [x for x in exception_chain(error) if isinstance(x, ssl.SSLError)]


def _during_handshake(e: ssl.SSLError) -> bool:
    return raised_by_handshake(e, _TLS_FATAL)


def _dropped_connection(e: BaseException) -> str | None:
    """What happened when ``e`` is a connection that ended under TLS rather than a TLS set-up
    failure: an EOF/close_notify at any time, or an SSL error (a TLS alert after a half-close)
    on an established connection. None for a certificate or handshake failure."""
    found = _ssl_errors(e)
    if not found:
        return None
    if any(isinstance(x, ssl.SSLCertVerificationError) for x in found):
        return None
    if any(not isinstance(x, DROPPED_UNDER_TLS) and _during_handshake(x) for x in found):
        return None
    if all(_during_handshake(x) for x in found):
        return "connection closed during the TLS handshake"
    return "connection dropped mid-request"


def _tls_reason(e: Any) -> str:
    m = _SSL_REASON.search(str(e))
    if m:
        return next(g for g in m.groups() if g)
    return "handshake failed"
