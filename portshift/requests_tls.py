"""portshift's TLS policy for SDKs that speak HTTP through ``requests`` (azure-core, google-auth).

The core does not depend on ``requests``: this module imports it, and is imported only when a
plugin asks for one of its names (``from portshift import https_requests_session``).

A session from :func:`harden_session` / :func:`https_requests_session`:

- ignores the environment (``trust_env = False``): no ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``,
  no ``HTTPS_PROXY``, no ``.netrc``;
- speaks TLS only through :func:`portshift.tls.ssl_context` (TLS 1.2 minimum, certificates and
  host names verified, system store + the explicit ``ca_bundle``), handed to urllib3's pools;
  ``verify`` stays ``True``, because a path there would make urllib3 add trust to that context;
- refuses ``http://`` before a socket is opened (:class:`PlainHTTPRefused`), unless the caller
  mounts its own adapter for a documented exception (the GCE metadata server);
- never retries inside urllib3 and never follows a redirect there (the SDK's policy decides).
"""

from __future__ import annotations

import os
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .errors import SinkError
from .tls import dropped_under_tls, exception_chain, handshake_failure, ssl_context

__all__ = [
    "PlainHTTPRefused",
    "RefusePlainHTTP",
    "TLSAdapter",
    "harden_session",
    "https_requests_session",
    "is_plain_http_refusal",
]


class PlainHTTPRefused(requests.exceptions.InvalidSchema):
    """A request to a plain-http URL was refused before any connection."""


class TLSAdapter(HTTPAdapter):
    """An HTTPS adapter whose urllib3 pools use portshift's SSL context, never retry, never use
    a proxy."""

    def __init__(self, context: Any, pool_maxsize: int = 32, pool_connections: int = 4) -> None:
        self._context = context
        super().__init__(
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:  # pragma: no cover - never configured
        raise PlainHTTPRefused("portshift does not send requests through a proxy")


class RefusePlainHTTP(HTTPAdapter):
    """Mounted on the plain-HTTP scheme: every request is refused before a socket is opened."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        raise PlainHTTPRefused("refusing plain HTTP: portshift only speaks https")


def harden_session(
    session: requests.Session,
    ca_bundle: str | os.PathLike[str] | None = None,
    *,
    pool_maxsize: int = 32,
    plain_http: HTTPAdapter | None = None,
) -> requests.Session:
    """Make ``session`` follow portshift's TLS policy (see the module docstring). ``plain_http``
    replaces the adapter that refuses ``http://`` (for a documented exception only)."""
    session.trust_env = False
    session.verify = True
    session.proxies = {}
    session.mount("https://", TLSAdapter(ssl_context(ca_bundle), pool_maxsize))
    session.mount("http" + "://", plain_http if plain_http is not None else RefusePlainHTTP())
    return session


def https_requests_session(ca_bundle: str | os.PathLike[str] | None = None, *, pool_maxsize: int = 32) -> requests.Session:
    """A new ``requests.Session`` on portshift's TLS policy."""
    return harden_session(requests.Session(), ca_bundle, pool_maxsize=pool_maxsize)


def is_plain_http_refusal(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) is a refused plain-HTTP request."""
    return any(isinstance(e, requests.exceptions.InvalidSchema) for e in exception_chain(error))


def refused_request(error: BaseException, operation: str, location: str) -> SinkError | None:
    """The error for a request that never went out: a plain-HTTP request the session refused, or
    a failed TLS handshake (with the ``ca_bundle`` hint); neither heals by retrying. ``None`` for
    anything else."""
    if is_plain_http_refusal(error):
        return SinkError("refused to send a request over plain HTTP", operation=operation, location=location, retryable=False)
    tls = handshake_failure(error)
    if tls:
        return SinkError(
            tls,
            operation=operation,
            location=location,
            retryable=False,
            hint="check ca_bundle and that the endpoint speaks TLS 1.2 or later",
        )
    return None


def connection_failed(error: BaseException, service: str, operation: str, location: str) -> SinkError:
    """A retryable ``connection to <service> failed (<why>)``: a connection dropped under TLS
    (:func:`~portshift.tls.dropped_under_tls`) or another network failure, named by its type."""
    why = dropped_under_tls(error) or type(error).__name__
    return SinkError(f"connection to {service} failed ({why})", operation=operation, location=location, retryable=True)
