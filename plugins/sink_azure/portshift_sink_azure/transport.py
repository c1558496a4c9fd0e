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

from portshift.tls import exception_chain as _chain
from portshift.tls import handshake_failure, ssl_context

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


def is_plain_http_refusal(error: BaseException) -> bool:
    return any(isinstance(e, requests.exceptions.InvalidSchema) for e in _chain(error))


class Retries(ExponentialRetry):
    """Storage's exponential retry with short waits, and no retry of TLS failures or refusals."""

    def __init__(self, retry_total: int) -> None:
        super().__init__(initial_backoff=1, increment_base=2, retry_total=retry_total, random_jitter_range=1)

    def increment(self, settings: Any, request: Any, response: Any = None, error: Any = None) -> bool:
        if error is not None and (handshake_failure(error) or is_plain_http_refusal(error)):
            return False
        return bool(super().increment(settings, request, response=response, error=error))


# pinned as soon as the SDK is imported (the package itself imports no SDK; see __init__)
pin_loggers()
