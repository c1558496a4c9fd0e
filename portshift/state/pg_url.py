"""The PostgreSQL state URL: parsed, checked and turned into libpq parameters portshift controls.

The rules (docs/state.md):

- TLS is not optional: ``sslmode=verify-full`` and ``ssl_min_protocol_version=TLSv1.2`` (or
  higher) are always set, whatever the URL says. A URL asking for ``disable``, ``allow``,
  ``prefer``, ``require`` or ``verify-ca`` is refused. A Unix socket (``host=/run/postgresql``)
  on the same machine is the one exception: no network, no TLS.
- Trust comes from one file: the URL's ``sslrootcert=``, or ``ca_bundle`` under ``[state]``, or
  else the system store compiled into OpenSSL. ``SSL_CERT_FILE`` and friends never matter.
- The password is a secret: never in the URL (a URL with one is refused, and the value is
  masked at once), only from ``PORTSHIFT_STATE_PASSWORD``, ``password_file`` or
  ``--secrets-from-stdin``.
"""

from __future__ import annotations

import os
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..secrets import Secret, register_mask

WEAK_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
#: parameters that would let something other than portshift decide trust, the password or the
#: transport; refused in the URL
REFUSED_PARAMS = ("passfile", "service", "servicefile", "sslnegotiation", "sslkey", "sslcert", "sslpassword")
GIVE_IT_INSTEAD = "give it in PORTSHIFT_STATE_PASSWORD, [state] password_file or --secrets-from-stdin"


@dataclass
class PgTarget:
    """What :func:`parse_url` made of a state URL: libpq parameters and a printable form."""

    params: dict[str, Any]
    redacted: str
    local_socket: bool = False
    hosts: list[str] = field(default_factory=list)

    def conninfo(self, password: Secret | None) -> dict[str, Any]:
        out = dict(self.params)
        if password is not None:
            out["password"] = password.reveal()
        return out


def require_psycopg() -> None:
    """One line, not a traceback, when the PostgreSQL extra is not installed."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError(
            "a postgresql:// state needs psycopg, which is not installed",
            hint="install portshift's postgres extra (psycopg[binary])",
        ) from None


def _system_cafile() -> str:
    """The system trust store compiled into OpenSSL (not SSL_CERT_FILE)."""
    paths = ssl.get_default_verify_paths()
    if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile):
        return paths.openssl_cafile
    try:
        import certifi

        return certifi.where()
    except ImportError:  # pragma: no cover - a machine with no trust store at all
        raise ConfigError(
            "no system trust store to verify the state database with", hint="give the CA as [state] ca_bundle"
        ) from None


def _split_url(url: str) -> dict[str, str]:
    """libpq's own URL grammar, read by libpq (no environment lookups)."""
    require_psycopg()
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except Exception:  # noqa: BLE001 - the message could echo the URL; say it in our words
        raise ConfigError(
            "the state URL is not a valid PostgreSQL URL", hint="e.g. postgresql://portshift@db.example.com/portshift"
        ) from None


def redact(params: dict[str, Any]) -> str:
    """``postgresql://user@host:port/dbname``: what may be shown (no password, no query)."""
    user = urllib.parse.quote(str(params.get("user", "")), safe="")
    host = str(params.get("host", ""))
    netloc = (f"{user}@" if user else "") + (urllib.parse.quote(host, safe="") if host.startswith("/") else host)
    if params.get("port"):
        netloc += f":{params['port']}"
    return f"postgresql://{netloc}/{urllib.parse.quote(str(params.get('dbname', '')), safe='')}"


def parse_url(url: str, *, ca_bundle: Path | None = None) -> PgTarget:
    """Check a ``postgresql://`` URL against the rules and return the parameters to connect with."""
    params = _split_url(url.strip())
    if "password" in params:
        register_mask(params["password"])  # masked from this moment on, whatever happens next
        raise ConfigError(f"the state URL carries a password: remove it from the URL and {GIVE_IT_INSTEAD}")
    for name in REFUSED_PARAMS:
        if name in params:
            raise ConfigError(f"the state URL sets {name}=, which portshift does not accept", hint="remove it from the URL")
    if not params.get("dbname"):
        raise ConfigError("the state URL names no database", hint="e.g. postgresql://portshift@db.example.com/portshift")
    hosts = [h for h in str(params.get("host", "")).split(",") if h]
    if not hosts:
        raise ConfigError("the state URL names no host", hint="e.g. postgresql://portshift@db.example.com/portshift")
    local = all(h.startswith("/") for h in hosts)
    if any(h.startswith("/") for h in hosts) and not local:
        raise ConfigError("the state URL mixes a Unix socket and network hosts", hint="use one or the other")
    params.setdefault("application_name", "portshift")
    params.setdefault("connect_timeout", "10")
    params["gssencmode"] = "disable"  # TLS is the one encryption, verified as below
    if local:  # the documented exception: a socket on this machine carries no network traffic
        for k in ("sslmode", "sslrootcert", "ssl_min_protocol_version"):
            params.pop(k, None)
        params["sslmode"] = "disable"
        return PgTarget(params, redact(params), local_socket=True, hosts=hosts)
    mode = params.get("sslmode", "verify-full")
    if mode != "verify-full":
        raise ConfigError(
            f"the state URL asks for sslmode={mode}: portshift reaches its database only with sslmode=verify-full "
            "(TLS, certificate and host name verified)",
            hint="remove sslmode from the URL; give a private CA as sslrootcert= or [state] ca_bundle",
        )
    params["sslmode"] = "verify-full"
    wanted = params.get("ssl_min_protocol_version", "TLSv1.2")
    if wanted not in TLS_VERSIONS:
        raise ConfigError(f"the state URL has ssl_min_protocol_version={wanted}: expected TLSv1.2 or TLSv1.3")
    params["ssl_min_protocol_version"] = wanted if TLS_VERSIONS.index(wanted) >= 2 else "TLSv1.2"
    if ca_bundle is not None:
        params["sslrootcert"] = str(ca_bundle)
    elif params.get("sslrootcert", "system") == "system":
        params["sslrootcert"] = _system_cafile()
    root = Path(params["sslrootcert"])
    if not root.is_file():
        raise ConfigError(f"the CA file for the state database {root} does not exist or is not a file")
    return PgTarget(params, redact(params), hosts=hosts)
