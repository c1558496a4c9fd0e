"""The HTTP layer under the GCS sink, built on portshift's TLS policy, and logger pinning.

google-auth and google-cloud-storage speak HTTP through ``requests``. A default
``requests.Session`` trusts the environment (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``,
``HTTPS_PROXY``, ``.netrc``), follows redirects and would send a request to a plain-http URL.
Here every session is built by :func:`portshift.harden_session` (the core's one requests TLS
adapter, shared with the Azure sink):

- ignores the environment (``trust_env = False``);
- speaks TLS only through :func:`portshift.tls.ssl_context` (TLS 1.2 minimum, certificates and
  host names verified, system store + the explicit ``ca_bundle``), given to urllib3's pools;
- refuses ``http://`` outright, before a socket is opened. The one exception, only when
  Application Default Credentials are configured, is the GCE/GKE metadata server (a link-local
  address that Google serves over plain HTTP only, by design; the request carries no secret);
- never follows redirects.

Both the API calls and the OAuth token exchange (the signed JWT grant posted to the key's
``token_uri``) go through such sessions. :class:`MaskingRequest` registers every grant it
sends and every token it receives with portshift's log scrubber, the moment they exist.

Loggers: google-auth logs each request (the JWT ``assertion`` of the token exchange, and the
upload bodies) at DEBUG in the record's extras, and urllib3 logs request lines (the resumable
session URI is a capability). :func:`pin_loggers` keeps them at WARNING and removes the
stdout handler google-api-core installs when ``GOOGLE_SDK_PYTHON_LOGGING_SCOPE`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import google.auth.transport.requests as google_requests
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from portshift import PlainHTTPRefused, harden_session, is_plain_http_refusal, register_mask
from portshift import pin_loggers as _pin

#: SDK and HTTP-library loggers pinned to WARNING whatever the root level is.
PINNED_LOGGERS = (
    "google",
    "google.auth",
    "google.auth.transport",
    "google.auth.transport.requests",
    "google.auth._default",
    "google.auth.compute_engine",
    "google.oauth2",
    "google.oauth2._client",
    "google.api_core",
    "google.cloud",
    "google.cloud.storage",
    "google.resumable_media",
    "urllib3",
    "urllib3.connectionpool",
    "requests",
)
#: Logger trees in which any explicitly lowered level is raised back to WARNING.
_PINNED_TREES = ("google", "urllib3", "requests")
#: The environment variable with which google-api-core installs its own DEBUG stdout handler.
LOGGING_SCOPE_ENV = "GOOGLE_SDK_PYTHON_LOGGING_SCOPE"

#: Hosts of the GCE/GKE metadata server (Application Default Credentials on Google Cloud).
METADATA_HOSTS = frozenset({"169.254.169.254", "metadata.google.internal", "metadata"})


def _api_core_handler(handler: logging.Handler) -> bool:
    formatter = handler.formatter
    return formatter is not None and type(formatter).__name__ == "StructuredLogFormatter"


def neutralise_google_logging_setup() -> None:
    """Stop google-api-core from ever giving ``google`` loggers a handler of their own.

    ``google.api_core.client_logging.initialize_logging()`` (called when a GAPIC client is
    built) reads ``GOOGLE_SDK_PYTHON_LOGGING_SCOPE`` and, for the named logger, sets DEBUG, adds
    a stdout handler with a JSON formatter that writes the request extras, and stops
    propagation: a path around portshift's scrubbing handler. Marking it initialised makes it
    a no-op; a handler it installed earlier is removed.
    """
    try:
        from google.api_core import client_logging
    except ImportError:  # pragma: no cover - google-api-core is a dependency of the SDK
        client_logging = None
    if client_logging is not None:
        client_logging._LOGGING_INITIALIZED = True
    names = {"google"}
    scope = os.environ.get(LOGGING_SCOPE_ENV, "").strip()
    if scope:
        names.add(scope)
    names.update(n for n in logging.root.manager.loggerDict if n.split(".", 1)[0] in _PINNED_TREES)
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if _api_core_handler(handler):
                logger.removeHandler(handler)
                logger.propagate = True
        if name == "google" and not logger.propagate and not logger.handlers:
            logger.propagate = True  # set by api-core/google-auth "unless configured": ours is


def pin_loggers() -> None:
    """Pin the SDK and HTTP loggers (and any lowered descendant) to WARNING."""
    neutralise_google_logging_setup()
    scope = os.environ.get(LOGGING_SCOPE_ENV, "").strip()
    names = set(PINNED_LOGGERS)
    if scope:
        names.add(scope)
    _pin(sorted(names), trees=_PINNED_TREES)


class _MetadataServerOnly(HTTPAdapter):
    """Plain HTTP to the GCE/GKE metadata server only (Application Default Credentials).

    Google serves the metadata server on a link-local address over HTTP only; the requests
    carry no credential (the token comes back in the response). Any other host is refused.
    """

    def __init__(self) -> None:
        super().__init__(pool_connections=1, pool_maxsize=4, max_retries=Retry(total=False, redirect=False))

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        host = (urllib.parse.urlsplit(str(request.url)).hostname or "").lower()
        if host not in METADATA_HOSTS:
            raise PlainHTTPRefused("refusing plain HTTP: portshift only speaks https")
        return super().send(request, *args, **kwargs)


def harden(
    session: requests.Session, ca_bundle: Path | None, *, pool_maxsize: int = 32, allow_metadata_server: bool = False
) -> requests.Session:
    """Make ``session`` follow portshift's policy (see the module docstring)."""
    return harden_session(
        session, ca_bundle, pool_maxsize=pool_maxsize, plain_http=_MetadataServerOnly() if allow_metadata_server else None
    )


def build_session(ca_bundle: Path | None, *, pool_maxsize: int = 8, allow_metadata_server: bool = False) -> requests.Session:
    return harden(requests.Session(), ca_bundle, pool_maxsize=pool_maxsize, allow_metadata_server=allow_metadata_server)


# --- masks for what the OAuth exchange sends and receives ---------------------------------------

#: Form/JSON fields of token requests that are bearer grants or secrets.
_GRANT_FIELDS = ("assertion", "subject_token", "actor_token", "refresh_token", "client_secret")
#: Fields of token responses that are bearer tokens.
_TOKEN_FIELDS = ("access_token", "accessToken", "id_token", "idToken", "token", "refresh_token")


def _mask_fields(doc: Any, fields: tuple[str, ...]) -> None:
    if isinstance(doc, dict):
        for name in fields:
            value = doc.get(name)
            if isinstance(value, str):
                register_mask(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, str):
                        register_mask(item)


def mask_request_body(body: Any) -> None:
    """Register the grant (JWT assertion, subject token...) a token request is about to send."""
    if body is None:
        return
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    try:
        _mask_fields(json.loads(text), _GRANT_FIELDS)
        return
    except ValueError:
        pass
    _mask_fields(urllib.parse.parse_qs(text), _GRANT_FIELDS)


def mask_token_response(data: bytes | None) -> None:
    """Register the access/ID tokens in a token endpoint's (or metadata server's) answer."""
    if not data:
        return
    try:
        doc = json.loads(data)
    except ValueError:
        return
    _mask_fields(doc, _TOKEN_FIELDS)


class MaskingRequest(google_requests.Request):
    """google-auth's transport for token requests, on a hardened session, registering every
    grant and token it carries with portshift's log scrubber before anything can log them."""

    def __call__(
        self, url: str, method: str = "GET", body: Any = None, headers: Any = None, timeout: Any = None, **kwargs: Any
    ) -> Any:
        mask_request_body(body)
        kwargs.setdefault("allow_redirects", False)
        if timeout is None:
            timeout = 60
        response = super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        mask_token_response(getattr(response, "data", None))
        return response


class GcsSession(google_requests.AuthorizedSession):
    """An AuthorizedSession on portshift's TLS policy whose token refreshes use ``auth_request``
    (itself on a hardened session), that never follows redirects and registers the access
    token it attaches as a mask."""

    def __init__(
        self,
        credentials: Any,
        auth_request: MaskingRequest,
        ca_bundle: Path | None,
        *,
        pool_maxsize: int = 32,
        allow_metadata_server: bool = False,
    ) -> None:
        super().__init__(credentials, auth_request=auth_request, max_refresh_attempts=1)
        harden(self, ca_bundle, pool_maxsize=pool_maxsize, allow_metadata_server=allow_metadata_server)
        self._masked_token: str | None = None

    def request(self, method: str, url: str, data: Any = None, headers: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["allow_redirects"] = False
        response = super().request(method, url, data=data, headers=headers, **kwargs)
        token = getattr(self.credentials, "token", None)
        if isinstance(token, str) and token != self._masked_token:
            register_mask(token)
            self._masked_token = token
        return response


__all__ = ["GcsSession", "MaskingRequest", "PlainHTTPRefused", "build_session", "harden", "is_plain_http_refusal", "pin_loggers"]

# pinned as soon as the SDK is imported (the package itself imports no SDK; see __init__)
pin_loggers()
