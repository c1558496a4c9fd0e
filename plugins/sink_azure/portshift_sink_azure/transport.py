"""The HTTP transport under azure-storage-blob, built on portshift's TLS policy.

azure-core's default transport is requests + urllib3 with ``trust_env=True``: it would honour
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` and ``HTTPS_PROXY`` from the environment, and follow
whatever the process's default SSL settings are. Here the requests session:

- ignores the environment (``trust_env = False``): no CA bundle or proxy from env variables;
- speaks TLS only through :func:`portshift.tls.ssl_context` (TLS 1.2 minimum, certificates and
  host names verified, system store + the explicit ``ca_bundle``), given to urllib3's pool;
- refuses ``http://`` outright (an adapter that raises), so nothing -- no redirect, no
  misconfiguration -- can send a request, and the SAS appended to it, in clear.

``connection_verify`` stays ``True`` on purpose: a path there would make urllib3 call
``load_verify_locations`` on the shared context, adding trust behind the policy's back.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import ExponentialRetry
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from portshift.tls import ssl_context

#: SDK and HTTP-library loggers: urllib3 logs every request line with its query string, i.e.
#: the SAS signature, at DEBUG. Pinned to WARNING whatever the root level is.
PINNED_LOGGERS = (
    "azure",
    "azure.core",
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.storage",
    "azure.storage.blob",
    "urllib3",
    "urllib3.connectionpool",
    "requests",
)


def pin_loggers() -> None:
    for name in PINNED_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET (0) included; a stricter user setting stays
            logger.setLevel(logging.WARNING)


class _TLSAdapter(HTTPAdapter):
    """An HTTPS adapter whose urllib3 pools use portshift's SSL context and never retry."""

    def __init__(self, context: ssl.SSLContext, pool_maxsize: int) -> None:
        self._context = context
        super().__init__(
            pool_connections=4,
            pool_maxsize=pool_maxsize,
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:  # pragma: no cover - never configured
        raise requests.exceptions.InvalidSchema("portshift's Azure sink does not use proxies")


class _RefusePlainHTTP(HTTPAdapter):
    """Mounted on the plain-HTTP scheme: every request is refused before a socket is opened."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        raise requests.exceptions.InvalidSchema("refusing plain HTTP: portshift only speaks https")


def build_session(ca_bundle: Path | None, pool_maxsize: int = 64) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", _TLSAdapter(ssl_context(ca_bundle), pool_maxsize))
    session.mount("http" + "://", _RefusePlainHTTP())
    return session


def build_transport(ca_bundle: Path | None, *, connect_timeout: float, read_timeout: float) -> RequestsTransport:
    pin_loggers()
    return RequestsTransport(
        session=build_session(ca_bundle),
        session_owner=True,
        use_env_settings=False,
        connection_timeout=connect_timeout,
        read_timeout=read_timeout,
        connection_verify=True,
    )


#: SSL errors that mean the peer went away (EOF, close_notify, a failed system call): a dropped
#: connection, retryable, whenever they happen.
_DROPPED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and everything it wraps (cause, context, azure-core's ``inner_exception``,
    exceptions passed as arguments, urllib3's ``reason``)."""
    seen: set[int] = set()
    out: list[BaseException] = []
    stack: list[Any] = [error]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        stack.extend([e.__cause__, e.__context__, getattr(e, "inner_exception", None), getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return out


def _during_handshake(e: ssl.SSLError) -> bool:
    """Whether ``e`` was raised by the TLS handshake (``SSLSocket.do_handshake``), as opposed to
    a read or write on an established connection. Without a traceback (never the case for an
    error the SDK raised), only a reason naming a handshake/certificate problem counts."""
    tb = e.__traceback__
    if tb is None:
        reason = str(getattr(e, "reason", "") or "").upper()
        return any(w in reason for w in ("CERTIFICATE", "VERSION", "PROTOCOL", "HANDSHAKE", "CIPHER"))
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "do_handshake":
            return True
        tb = tb.tb_next
    return False


def tls_failure(error: BaseException) -> str | None:
    """A short reason when ``error`` (or what caused it) is a TLS handshake/verification failure.

    Only failures of the handshake count: certificate verification, and any other SSL error the
    handshake raised (a protocol version the server refuses, a handshake alert). An EOF or
    close_notify at any time, and an SSL error (e.g. a TLS alert) on an established connection,
    are a dropped connection (:func:`dropped_connection`): retryable, no ca_bundle hint.
    """
    for e in _chain(error):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate verification failed ({e.verify_message or 'untrusted'})"
        if isinstance(e, ssl.SSLError) and not isinstance(e, _DROPPED) and _during_handshake(e):
            reason = getattr(e, "reason", None) or type(e).__name__
            return f"TLS handshake failed ({reason})"
    return None


def dropped_connection(error: BaseException) -> str | None:
    """A short description when ``error`` is a connection that ended under TLS (not a TLS
    set-up failure, see :func:`tls_failure`), else None."""
    if tls_failure(error):
        return None
    for e in _chain(error):
        if isinstance(e, ssl.SSLError):
            if isinstance(e, _DROPPED) and _during_handshake(e):
                return "connection closed during the TLS handshake"
            return "connection dropped mid-request"
    return None


def is_plain_http_refusal(error: BaseException) -> bool:
    return any(isinstance(e, requests.exceptions.InvalidSchema) for e in _chain(error))


class Retries(ExponentialRetry):
    """Storage's exponential retry with short waits, and no retry of TLS failures or refusals."""

    def __init__(self, retry_total: int) -> None:
        super().__init__(initial_backoff=1, increment_base=2, retry_total=retry_total, random_jitter_range=1)

    def increment(self, settings: Any, request: Any, response: Any = None, error: Any = None) -> bool:
        if error is not None and (tls_failure(error) or is_plain_http_refusal(error)):
            return False
        return bool(super().increment(settings, request, response=response, error=error))


# pinned as soon as the SDK is imported (the package itself imports no SDK; see __init__)
pin_loggers()
