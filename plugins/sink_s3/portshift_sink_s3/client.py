"""Building the S3 client (botocore's, without boto3's layer: nothing here needs it, and it cost
about 35 ms of every run's start) so that nothing outside the job file can change where it goes,
whom it trusts, or what it logs.

- A private ``botocore.session.Session`` (never boto3's default session). With a static key pair
  the shared config and credentials files are not read at all (the session's ``config_file`` and
  ``credentials_file`` point at a path that does not exist), so a profile cannot inject an
  endpoint, a CA bundle, a proxy or S3 settings. With ``credential_chain = true`` they are read,
  because profiles, SSO and web identity live there; every setting that could redirect or
  weaken the client is then pinned explicitly in ``Config`` (see README "What the environment
  can and cannot change").
- ``Config(ignore_configured_endpoint_urls=True)``: ``AWS_ENDPOINT_URL``,
  ``AWS_ENDPOINT_URL_S3`` and ``endpoint_url`` in a profile are ignored.
- TLS: the HTTP session is portshift's own: its SSL context comes from
  :func:`portshift.tls.ssl_context` (TLS 1.2 minimum, CERT_REQUIRED, host names checked, system
  store plus ``ca_bundle``, ``SSL_CERT_FILE``/``AWS_CA_BUNDLE``/``REQUESTS_CA_BUNDLE`` ignored) and
  it refuses to send anything that is not ``https://``. ``verify=`` is passed explicitly as well
  (the ``ca_bundle`` path, else the system bundle file), so even botocore's own resolution never
  consults ``AWS_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE`` or a profile's ``ca_bundle``.
- Proxies: none (``proxies={}``), like portshift's own HTTP client; ``HTTPS_PROXY`` is ignored.
- Region guard: a response that says the bucket lives in another region (``x-amz-bucket-region``,
  a 301/307 redirect, ``AuthorizationHeaderMalformed`` naming a region) stops the request;
  botocore's automatic "retry in the bucket's real region" never runs.
- Loggers ``botocore``, ``boto3``, ``s3transfer`` and ``urllib3`` are pinned to WARNING: their
  DEBUG output carries the session token and request signatures.
- Retries: none inside botocore (``total_max_attempts = 1``); see :meth:`S3Sink._call`.
- With a key pair, the session's model loader looks into S3's model folder alone
  (:class:`OneServiceLoader`; botocore's lists all of its ~400 services to check one name): that
  session can build no client of another service.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import botocore.session
from botocore.config import Config
from botocore.httpsession import URLLib3Session
from botocore.loaders import Loader

from portshift import AuthError, ConfigError, pin_loggers, register_mask, ssl_context

from .options import S3Options

log = logging.getLogger("portshift.s3")

#: Loggers whose DEBUG output carries credentials (session token, signatures) or URLs.
SDK_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")

#: Where distributions keep their CA bundle, tried after OpenSSL's compiled-in file.
_DISTRO_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSDs
)

# A path that is never a file: the private session reads no shared config/credentials file.
_NO_FILE = os.path.join(os.sep, "nonexistent", "portshift", "no-aws-config")


def pin_sdk_loggers() -> None:
    pin_loggers(SDK_LOGGERS)


class OneServiceLoader(Loader):
    """botocore's model loader, for a private session that builds clients of ``services`` only.

    To check a service name, botocore lists every service folder it ships (over 400) and looks
    into each: 15-30 ms of every process's start (measured: 16 ms less per client). This loader looks into the folders of
    ``services`` alone; the search paths, model files and extras are botocore's own. A session
    with it cannot build a client of another service (the credential chain's STS and SSO clients
    among them), so only sessions with a static key pair get it."""

    def __init__(self, services: tuple[str, ...]) -> None:
        super().__init__()
        self._services = services

    def list_available_services(self, type_name: str) -> list[str]:
        found = []
        for name in self._services:
            for base in self.search_paths:
                folder = os.path.join(base, name)
                if os.path.isdir(folder) and any(
                    self.file_loader.exists(os.path.join(folder, version, type_name)) for version in os.listdir(folder)
                ):
                    found.append(name)
                    break
        return sorted(found)


def system_ca_file() -> str:
    """The system CA bundle *file*, found without looking at SSL_CERT_FILE or AWS_CA_BUNDLE."""
    compiled = ssl.get_default_verify_paths().openssl_cafile  # compiled in, not from the environment
    for candidate in (compiled, *_DISTRO_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return candidate
    try:
        import certifi

        return str(certifi.where())
    except ImportError:  # pragma: no cover - depends on the machine
        raise ConfigError("no system CA bundle file found", hint='set ca_bundle = "/path/to/ca-bundle.pem" in [sink]') from None


def verify_value(options: S3Options) -> str:
    """What ``verify=`` gets: the ca_bundle path if configured, else the system bundle file."""
    if options.ca_bundle is not None:
        path = Path(options.ca_bundle).expanduser()
        if not path.is_file():
            raise ConfigError(f"[sink] ca_bundle: {path} does not exist or is not a file")
        return str(path)
    return system_ca_file()


class PlainHTTPRefused(Exception):
    """Raised by the HTTP session for anything that is not https:// (never reached in practice:
    the endpoint is validated first)."""


class HTTPSOnlySession(URLLib3Session):
    """botocore's urllib3 session with portshift's SSL context, refusing plain HTTP."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._portshift_context = context  # read by _get_ssl_context during super().__init__
        super().__init__(**kwargs)

    def _get_ssl_context(self) -> ssl.SSLContext:
        return self._portshift_context

    def _setup_ssl_cert(self, conn: Any, url: str, verify: Any) -> None:
        if not url.lower().startswith("https://"):
            raise PlainHTTPRefused("refusing to send a request that is not https://")
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None  # the trust store is in the context already


class RegionMismatch(Exception):
    """The store said the bucket is somewhere else (or redirected us)."""

    def __init__(self, region: str | None, status: int) -> None:
        super().__init__(region or "")
        self.region = region
        self.status = status


def _region_guard(expected: str) -> Any:
    def guard(response: Any = None, **_: Any) -> None:
        if response is None:
            return None
        http, parsed = response
        error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
        region = http.headers.get("x-amz-bucket-region") or error.get("Region")
        if region and region != expected:
            raise RegionMismatch(region, http.status_code)
        if http.status_code in (301, 302, 307, 308) or error.get("Code") in {"PermanentRedirect", "TemporaryRedirect"}:
            raise RegionMismatch(region, http.status_code)
        return None

    return guard


def _mask_resolved_credentials(creds: Any) -> None:
    """Register chain-resolved credentials with the log scrubber (they are not Secret objects)."""
    frozen = creds.get_frozen_credentials()
    try:
        for value in (frozen.access_key, frozen.secret_key, frozen.token):
            if value:
                register_mask(value)
    finally:
        del frozen


def build_client(options: S3Options, *, max_pool_connections: int = 32) -> tuple[Any, Any]:
    """A botocore S3 client for ``options`` and, with ``credential_chain``, the chain's credentials
    object (else None). Makes no network call, except the credential chain's own providers."""
    pin_sdk_loggers()
    verify = verify_value(options)
    context = ssl_context(options.ca_bundle)

    # Session variables (botocore's public override of "which env var / config key feeds this")
    # that must never come from the environment or a profile, whatever the credential mode.
    session_vars: dict[str, tuple[Any, Any, Any, Any]] = {
        "data_path": (None, None, None, None),  # AWS_DATA_PATH could swap the S3 model/endpoint rules
        "ca_bundle": (None, None, None, None),  # verify= is explicit anyway
        "csm_enabled": (None, None, False, None),  # client-side monitoring sends call data over UDP
    }
    if not options.credential_chain:
        # Static keys: read no shared file at all (and no AWS_PROFILE), so no profile can add an
        # endpoint, a CA bundle or S3 settings.
        session_vars["profile"] = (None, None, None, None)
        session_vars["config_file"] = (None, None, _NO_FILE, None)
        session_vars["credentials_file"] = (None, None, _NO_FILE, None)
    core = botocore.session.Session(session_vars=session_vars)
    kwargs: dict[str, Any] = {}
    if not options.credential_chain:
        core.register_component("data_loader", OneServiceLoader(("s3",)))  # no chain: S3 clients only
        assert options.access_key_id is not None and options.secret_access_key is not None
        kwargs["aws_access_key_id"] = options.access_key_id.reveal()
        kwargs["aws_secret_access_key"] = options.secret_access_key.reveal()
        if options.session_token is not None:
            kwargs["aws_session_token"] = options.session_token.reveal()

    config = Config(
        region_name=options.region,
        signature_version="s3v4",
        ignore_configured_endpoint_urls=True,
        proxies={},
        connect_timeout=15,
        read_timeout=60,
        max_pool_connections=max_pool_connections,
        # One attempt per call: the sink retries through portshift's retry helper (S3Sink._call),
        # because botocore waits with time.sleep() in Endpoint._needs_retry, which no cancel
        # event can interrupt (a SlowDown backoff would hold up Ctrl-C), and it ignores
        # Retry-After. The helper waits on the job's cancel event and honours the header.
        retries={"mode": "standard", "total_max_attempts": 1},
        request_checksum_calculation="when_required",  # we send our own SHA-256 on every upload
        response_checksum_validation="when_required",
        use_fips_endpoint=False,
        use_dualstack_endpoint=False,
        tcp_keepalive=False,
        s3={
            "addressing_style": options.addressing_style,
            "payload_signing_enabled": False,  # over TLS: the x-amz-checksum-sha256 covers the body
            "use_accelerate_endpoint": False,
            "use_arn_region": False,
            "us_east_1_regional_endpoint": "regional",
        },
    )
    try:
        client = core.create_client(
            "s3",
            region_name=options.region,
            endpoint_url=options.endpoint_url,
            use_ssl=True,
            verify=verify,
            config=config,
            **kwargs,
        )
    except Exception as e:  # noqa: BLE001 - profile errors, bad config: never the SDK's text
        raise ConfigError(f"[sink] cannot build the S3 client ({type(e).__name__})") from None
    finally:
        kwargs.clear()

    creds = None
    if options.credential_chain:
        try:
            creds = core.get_credentials()
        except Exception as e:  # noqa: BLE001 - provider failures (bad profile, STS refused)
            raise AuthError(f"the AWS credential chain failed ({type(e).__name__})", operation="resolve credentials") from None
        if creds is None:
            raise AuthError(
                "the AWS credential chain found no credentials",
                operation="resolve credentials",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or run with a role",
            )
        _mask_resolved_credentials(creds)

    _install_https_session(client, context, verify, max_pool_connections)
    client.meta.events.register_first("needs-retry.s3", _region_guard(options.region), unique_id="portshift-region")
    pin_sdk_loggers()
    return client, creds


def _install_https_session(client: Any, context: ssl.SSLContext, verify: str, max_pool_connections: int) -> None:
    endpoint = getattr(client, "_endpoint", None)
    old = getattr(endpoint, "http_session", None)
    if not isinstance(old, URLLib3Session):  # pragma: no cover - a future botocore changed its internals
        log.debug("botocore internals changed: keeping botocore's own TLS context (verify=%s)", verify)
        return
    endpoint.http_session = HTTPSOnlySession(
        context,
        verify=verify,
        proxies={},
        timeout=(15, 60),
        max_pool_connections=max_pool_connections,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    old.close()


def refresh_masks(creds: Any) -> None:
    """Register the chain's current credentials with the scrubber (refreshable credentials
    rotate; called once per upload)."""
    if creds is not None:
        _mask_resolved_credentials(creds)


pin_sdk_loggers()
