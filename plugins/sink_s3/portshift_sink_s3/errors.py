"""Turning botocore's exceptions into portshift errors at the SDK boundary.

The result carries the operation, the HTTP status, S3's error code and ``s3://bucket/key``; never
the request (its headers hold the session token and signature), never a credential. Callers
raise it ``from None`` so botocore's exception, its request object and its frames' locals do
not travel up.
"""

from __future__ import annotations

import botocore.exceptions

from portshift import (
    AuthError,
    ConfigError,
    PortshiftError,
    RemoteError,
    SinkError,
    dropped_under_tls,
    handshake_failure,
    parse_retry_after,
    sanitize_message,
    ssl_reason,
)

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


def _short(text: str, limit: int = 160) -> str:
    return sanitize_message(" ".join(str(text).split()), limit)


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
        headers = meta.get("HTTPHeaders") or {}
        # the server's Retry-After (S3 itself rarely sends one; gateways and compatible stores do)
        error.retry_after = parse_retry_after(headers.get("retry-after"))  # type: ignore[attr-defined]
        return error
    if isinstance(e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return AuthError("no usable AWS credentials", operation=operation, location=location)
    if isinstance(e, botocore.exceptions.SSLError):
        # Classified once, in portshift.tls: a connection that ended under TLS is retryable; a
        # handshake failure (certificate, protocol version) will not heal by retrying.
        dropped = dropped_under_tls(e)
        if dropped:
            return SinkError(f"connection failed ({dropped})", operation=operation, location=location, retryable=True)
        reason = ssl_reason(e) or "handshake failed"
        if handshake_failure(e):
            return SinkError(
                f"TLS failure ({reason})",
                operation=operation,
                location=location,
                retryable=False,
                hint="check ca_bundle and that the endpoint speaks TLS 1.2 or later",
            )
        return SinkError(f"TLS failure ({reason})", operation=operation, location=location, retryable=True)
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
