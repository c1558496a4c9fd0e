"""The HTTP transport under azure-storage-blob, built on portshift's TLS policy.

azure-core's default transport is requests + urllib3 with ``trust_env=True``: it would honour
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` and ``HTTPS_PROXY`` from the environment, and follow
whatever the process's default SSL settings are. Here the requests session:

- ignores the environment (``trust_env = False``): no CA bundle or proxy from env variables;
- speaks TLS only through :func:`portshift.tls.ssl_context` (TLS 1.2 minimum, certificates and
  host names verified, system store + the explicit ``ca_bundle``), given to urllib3's pool;
- refuses ``http://`` outright (an adapter that raises), so nothing -- no redirect, no
  misconfiguration -- can send a request, and the SAS appended to it, in clear.

The session is the core's (:func:`portshift.https_requests_session`, shared with the GCS sink).
``connection_verify`` stays ``True`` on purpose: a path there would make urllib3 call
``load_verify_locations`` on the shared context, adding trust behind the policy's back.

Retries: azure-storage-blob's exponential policy, whose wait (:meth:`Retries.sleep`) is
portshift's: on the job's cancel event, honouring ``Retry-After``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import ExponentialRetry

from portshift import (
    handshake_failure,
    https_requests_session,
    is_plain_http_refusal,
    parse_retry_after,
    wait_or_interrupt,
)
from portshift import (
    pin_loggers as _pin,
)

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

#: The longest ``Retry-After`` a retry of one request honours (seconds); the core's per-file
#: retries come on top.
RETRY_AFTER_CAP = 60.0


def pin_loggers() -> None:
    _pin(PINNED_LOGGERS)


def build_session(ca_bundle: Path | None, pool_maxsize: int = 64) -> requests.Session:
    return https_requests_session(ca_bundle, pool_maxsize=pool_maxsize)


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


__all__ = ["Retries", "build_session", "build_transport", "is_plain_http_refusal", "pin_loggers"]


class Retries(ExponentialRetry):
    """Storage's exponential retry with short waits, and no retry of TLS failures or refusals.

    The wait between two attempts is portshift's: on the job's cancel event (``cancel()``
    returns the sink's :attr:`~portshift.Sink.cancel`, set by the core after the sink is built),
    so Ctrl-C ends it at once with :class:`~portshift.Interrupted`; azure-storage-blob's own
    ``sleep`` calls ``transport.sleep`` (``time.sleep``), which nothing can interrupt. A
    server's ``Retry-After`` (up to :data:`RETRY_AFTER_CAP`) wins over the exponential delay.
    """

    def __init__(self, retry_total: int, cancel: Callable[[], threading.Event | None] = lambda: None) -> None:
        super().__init__(initial_backoff=1, increment_base=2, retry_total=retry_total, random_jitter_range=1)
        self._cancel = cancel

    def increment(self, settings: Any, request: Any, response: Any = None, error: Any = None) -> bool:
        if error is not None and (handshake_failure(error) or is_plain_http_refusal(error)):
            return False
        return bool(super().increment(settings, request, response=response, error=error))

    def sleep(self, settings: Any, transport: Any) -> None:
        history = settings.get("history") or []
        last = getattr(history[-1], "http_response", None) if history else None
        hint = parse_retry_after(last.headers.get("Retry-After"), cap=RETRY_AFTER_CAP) if last is not None else None
        delay = hint if hint is not None else self.get_backoff_time(settings)
        if delay and delay > 0:
            wait_or_interrupt(self._cancel(), delay, "waiting to retry an Azure request")


# pinned as soon as the SDK is imported (the package itself imports no SDK; see __init__)
pin_loggers()
