"""One TLS policy for every connection portshift makes.

- :func:`ssl_context` is the only SSL context factory: TLS 1.2 minimum, certificates and host
  names verified, trust from the system store plus an explicit ``ca_bundle`` and nothing else.
  ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``, ``AWS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` are ignored
  (reported once at debug level), so the environment cannot swap portshift's trust store.
- :func:`https_client` is an httpx client built on it that refuses anything but ``https://``,
  never follows redirects by itself and ignores proxy/trust environment variables.
- :func:`require_https` checks an endpoint option before any connection is made.
- :func:`prepare_trust` loads the system store into a few contexts on a thread while the
  process does something else (a run imports its plugins meanwhile), for the clients to come.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import urllib.parse
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx

from .errors import ConfigError

log = logging.getLogger("portshift.tls")

#: Environment variables that would silently change trust or endpoints in the SDKs we use.
IGNORED_ENV = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "AWS_CA_BUNDLE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "STORAGE_EMULATOR_HOST",
    "API_ENDPOINT_OVERRIDE",
)

_reported = False


def report_ignored_environment() -> list[str]:
    """Log (debug) which trust/endpoint variables are set and ignored. Returns their names."""
    global _reported
    present = [name for name in IGNORED_ENV if os.environ.get(name)]
    if present and not _reported:
        log.debug("ignoring %s: portshift trusts the system store plus ca_bundle only", ", ".join(present))
        _reported = True
    return present


def _system_trust(ctx: ssl.SSLContext) -> None:
    # ssl.create_default_context() would honour SSL_CERT_FILE/SSL_CERT_DIR; load the compiled-in
    # OpenSSL locations instead so that the environment cannot swap the trust store.
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if paths.openssl_capath and os.path.isdir(paths.openssl_capath) else None
    if cafile or capath:
        ctx.load_verify_locations(cafile=cafile, capath=capath)
    if not ctx.cert_store_stats()["x509_ca"] and not capath:  # a count, not a decoded list of every CA
        try:  # a machine with no system store at all (slim containers): certifi, if present
            import certifi

            ctx.load_verify_locations(cafile=certifi.where())
        except ImportError:  # pragma: no cover - nothing else to try
            pass


def _base_context() -> ssl.SSLContext:
    """A client context with portshift's settings and the system store (no ``ca_bundle`` yet)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    _system_trust(ctx)
    return ctx


#: Contexts with the system store loaded ahead of need (:func:`prepare_trust`), and the thread
#: loading them. Parsing the store (~20 ms a context) runs in OpenSSL without the GIL, so on a
#: second core it costs the process no wall time.
_prepared: list[ssl.SSLContext] = []
_preparing: list[threading.Thread] = []
_prepared_lock = threading.Lock()


def prepare_trust(count: int = 2) -> None:
    """Start loading the system store into ``count`` contexts on a daemon thread; the next
    contexts :func:`ssl_context` makes take them (and add their ``ca_bundle``) instead of loading
    the store themselves. A run calls it before it imports its plugins (a source and a sink
    usually make two). Not in a process about to fork: call it after."""

    def load() -> None:
        for _ in range(count):
            try:
                ctx = _base_context()
            except Exception:  # noqa: BLE001 - the context is made again, on demand, and fails there
                return
            with _prepared_lock:
                _prepared.append(ctx)

    thread = threading.Thread(target=load, name="portshift-trust", daemon=True)
    with _prepared_lock:
        _preparing.append(thread)
    thread.start()


def _take_prepared() -> ssl.SSLContext | None:
    with _prepared_lock:
        if _prepared:
            return _prepared.pop(0)
        waiting = [t for t in _preparing if t.is_alive()]
        _preparing[:] = waiting
    for thread in waiting:  # under way: waiting for it costs less than loading the store again
        thread.join()
        with _prepared_lock:
            if _prepared:
                return _prepared.pop(0)
    return None


_contexts: OrderedDict[tuple[str, int, int] | None, ssl.SSLContext] = OrderedDict()
_contexts_lock = threading.Lock()
KEEP_CONTEXTS = 16  #: contexts kept per process (a long-lived process may see many bundles)


def ssl_context(ca_bundle: str | os.PathLike[str] | None = None, *, fresh: bool = False) -> ssl.SSLContext:
    """The SSL context every client uses: TLS >= 1.2, CERT_REQUIRED, host names checked.

    Loading the trust (the system store and ``ca_bundle``) costs about 20 ms, so one context is
    made per trust and process and handed to every client that asks for the same one (a context
    is safe to share between threads and connections). The ``ca_bundle`` file is looked at again
    on every call: changed or replaced, it is loaded again. Do not change the context you get;
    ``fresh=True`` gives one of your own to change."""
    report_ignored_environment()
    key: tuple[str, int, int] | None = None
    if ca_bundle is not None:
        path = Path(ca_bundle)
        try:
            st = path.stat()
        except OSError:
            raise ConfigError(f"ca_bundle {path} does not exist or is not a file") from None
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if fresh:
        return _new_context(ca_bundle)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _contexts[key] = _new_context(ca_bundle)
            while len(_contexts) > KEEP_CONTEXTS:
                _contexts.popitem(last=False)
        _contexts.move_to_end(key)
        return ctx


def _new_context(ca_bundle: str | os.PathLike[str] | None) -> ssl.SSLContext:
    ctx = _take_prepared() or _base_context()
    if ca_bundle is not None:
        path = Path(ca_bundle)
        if not path.is_file():
            raise ConfigError(f"ca_bundle {path} does not exist or is not a file")
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (ssl.SSLError, OSError):
            raise ConfigError(f"ca_bundle {path} is not a PEM certificate file") from None
    return ctx


def require_https(url: str, what: str = "endpoint") -> str:
    """Return ``url`` if it is an https:// URL with a host; raise ConfigError otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https":
        shown = f"{parts.scheme}://{parts.hostname or ''}" if parts.scheme else url[:40]
        raise ConfigError(
            f"{what} must be an https:// URL, got {shown}",
            hint="portshift never sends anything over plain HTTP",
        )
    if not parts.hostname:
        raise ConfigError(f"{what} has no host name")
    if parts.username or parts.password:
        raise ConfigError(f"{what} must not carry a user name or password")
    return url


class HttpsOnlyTransport(httpx.BaseTransport):
    """An httpx transport that refuses to send any request that is not https://."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._inner = httpx.HTTPTransport(verify=context, trust_env=False, **kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            from .redact import redact_url

            raise httpx.UnsupportedProtocol(f"refusing to send a request to {redact_url(str(request.url))}: https only")
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def https_client(
    ca_bundle: str | os.PathLike[str] | None = None,
    *,
    timeout: float | httpx.Timeout = 60.0,
    headers: dict[str, str] | None = None,
    max_connections: int = 20,
    base_url: str = "",
) -> httpx.Client:
    """An httpx client that only speaks https, with portshift's SSL context, never following
    redirects on its own and ignoring proxy/CA environment variables."""
    ctx = ssl_context(ca_bundle)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.Client(
        transport=HttpsOnlyTransport(ctx, limits=limits),
        timeout=timeout,
        headers=headers,
        follow_redirects=False,
        trust_env=False,
        base_url=base_url,
    )


# --- telling a TLS set-up failure from a connection dropped under TLS ---------------------------
#: SSL errors that mean the peer went away (EOF, close_notify, a failed system call): a dropped
#: connection, retryable, whenever they happen.
DROPPED_UNDER_TLS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
#: without a traceback, an SSL error whose reason names one of these counts as a handshake failure
HANDSHAKE_WORDS = ("CERTIFICATE", "VERSION", "PROTOCOL", "HANDSHAKE", "CIPHER")


def exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and everything it wraps, as the HTTP stacks under the SDKs nest them: cause,
    context, exceptions passed as arguments, urllib3's ``reason``, azure-core's
    ``inner_exception`` and botocore's ``kwargs["error"]``."""
    seen: set[int] = set()
    out: list[BaseException] = []
    stack: list[Any] = [error]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        kwargs = getattr(e, "kwargs", None)
        stack.extend(
            [
                e.__cause__,
                e.__context__,
                getattr(e, "inner_exception", None),
                getattr(e, "reason", None),
                kwargs.get("error") if isinstance(kwargs, dict) else None,
            ]
        )
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return out


def raised_by_handshake(e: ssl.SSLError, words: tuple[str, ...] = HANDSHAKE_WORDS) -> bool:
    """Whether ``e`` was raised by the TLS handshake (``SSLSocket.do_handshake``), as opposed to
    a read or write on an established connection. Without a traceback (never the case for an
    error an SDK raised), only a reason naming one of ``words`` counts."""
    tb = e.__traceback__
    if tb is None:
        reason = str(getattr(e, "reason", "") or "").upper()
        return any(w in reason for w in words)
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "do_handshake":
            return True
        tb = tb.tb_next
    return False


def handshake_failure(error: BaseException) -> str | None:
    """A short reason when ``error`` (or what it wraps) is a TLS handshake/verification failure.

    Only failures of the handshake count: certificate verification, and any other SSL error the
    handshake raised (a protocol version the server refuses, a handshake alert). An EOF or
    close_notify at any time, and an SSL error (e.g. a TLS alert) on an established connection,
    are a dropped connection (:func:`dropped_under_tls`): retryable, no ca_bundle hint.
    """
    for e in exception_chain(error):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate verification failed ({e.verify_message or 'untrusted'})"
        if isinstance(e, ssl.SSLError) and not isinstance(e, DROPPED_UNDER_TLS) and raised_by_handshake(e):
            reason = getattr(e, "reason", None) or type(e).__name__
            return f"TLS handshake failed ({reason})"
    return None


def dropped_under_tls(error: BaseException) -> str | None:
    """A short description when ``error`` is a connection that ended under TLS (not a TLS set-up
    failure, see :func:`handshake_failure`), else None."""
    if handshake_failure(error):
        return None
    for e in exception_chain(error):
        if isinstance(e, ssl.SSLError):
            if isinstance(e, DROPPED_UNDER_TLS) and raised_by_handshake(e):
                return "connection closed during the TLS handshake"
            return "connection dropped mid-request"
    return None


def ssl_reason(error: BaseException) -> str | None:
    """The OpenSSL reason code (``CERTIFICATE_VERIFY_FAILED``, ``TLSV1_ALERT_PROTOCOL_VERSION``)
    of the first SSL error in ``error``'s chain, for messages; None when there is none."""
    for e in exception_chain(error):
        if isinstance(e, ssl.SSLError):
            reason = getattr(e, "reason", None)
            return str(reason) if reason else type(e).__name__
    return None
