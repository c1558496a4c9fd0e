"""Credentials for the GCS sink: a service-account key held in memory, or ADC.

- **Service-account key** (``PORTSHIFT_GCS_KEY`` or ``key_file``): the JSON document is parsed
  in memory and never written anywhere. A value that is not JSON, or lacks a field, is a
  :class:`~portshift.errors.ConfigError` whose text never contains the document (the parser's
  own exception, which holds the whole document in ``.doc``, is dropped before raising). The
  private key (whole, per line, and its base64 body) and ``private_key_id`` are registered as
  masks. The key's ``token_uri`` must be https: the token exchange posts a signed JWT grant.
- **Application Default Credentials** (``application_default_credentials = true``): workload
  identity / attached service account / ``GOOGLE_APPLICATION_CREDENTIALS``, resolved by
  ``google.auth.default`` with portshift's hardened transport.
- **Anonymous** (``anonymous = true``): local test servers on a loopback IP only (checked by
  the options model).

Tokens are requested with the ``devstorage.read_write`` scope (the narrowest scope that can
create objects); what the identity may do is decided by its IAM role on the bucket
(``roles/storage.objectCreator`` is enough, see docs/permissions/gcs.md).
"""

from __future__ import annotations

import json
from typing import Any

import google.auth
import google.auth.exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.oauth2 import service_account

from portshift import ConfigError, Secret, register_mask, require_https

SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
_REQUIRED = ("type", "client_email", "private_key", "token_uri")


def _load_json(text: str) -> tuple[Any, str | None]:
    """(document, None) or (None, a position-only description of the syntax error)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:  # e.doc holds the whole key: keep only the position
        return None, f"line {e.lineno}, column {e.colno}"
    except (TypeError, ValueError, RecursionError):
        return None, "unreadable"


def parse_key(key: Secret) -> dict[str, str]:
    """The service-account key as a dict; masks registered. Errors never show the content.

    The checks run in :func:`_checked`, which returns instead of raising, so that no frame of
    the raised error's traceback holds the parsed key in its locals (tracebacks rendered with
    locals would print it).
    """
    info, problem, hint = _checked(key.reveal())
    if info is None:
        raise ConfigError(f"[sink] key: {problem}", hint=hint)
    return info


def key_problem(key: Secret) -> str | None:
    """What is wrong with the key (one line, never its content), or None."""
    info, problem, hint = _checked(key.reveal())
    if info is None:
        return f"{problem} ({hint})" if hint else problem
    return None


def _checked(text: str) -> tuple[dict[str, str] | None, str | None, str | None]:
    doc, syntax = _load_json(text)
    if syntax is not None:
        return (
            None,
            f"the service-account key is not a JSON document ({syntax})",
            ("PORTSHIFT_GCS_KEY or key_file must hold the JSON key file downloaded from Google Cloud"),
        )
    if not isinstance(doc, dict):
        return None, "the service-account key must be a JSON object", None
    if doc.get("type") != "service_account":
        return (
            None,
            'not a service-account key (its "type" is not "service_account")',
            ("for user or workload-identity credentials use application_default_credentials = true"),
        )
    missing = [name for name in _REQUIRED if not isinstance(doc.get(name), str) or not doc.get(name)]
    if missing:
        return None, f"the service-account key lacks {', '.join(missing)}", None
    _register_key_masks(doc)
    try:
        require_https(doc["token_uri"], "the key's token_uri")
    except ConfigError as e:
        return None, e.message, "the token exchange posts a signed grant: https only"
    return {k: v for k, v in doc.items() if isinstance(v, str)}, None, None


def _register_key_masks(info: dict[str, Any]) -> None:
    pem = info.get("private_key")
    if isinstance(pem, str):
        register_mask(pem)
        body_lines = [ln.strip() for ln in pem.splitlines() if ln.strip() and not ln.startswith("-----")]
        for line in body_lines:
            if len(line) >= 16:
                register_mask(line)
        if body_lines:
            register_mask("".join(body_lines))
    for name in ("private_key_id",):
        value = info.get(name)
        if isinstance(value, str):
            register_mask(value)


def service_account_credentials(key: Secret) -> Credentials:
    creds = _from_info(parse_key(key))
    if creds is None:  # raised from a frame that holds no key material, outside any handler
        raise ConfigError(
            "[sink] key: the service-account key's private_key cannot be read (not a PEM RSA key)",
            hint="download a new JSON key for the service account",
        )
    return creds


def _from_info(info: dict[str, str]) -> Credentials | None:
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
    except (ValueError, TypeError, google.auth.exceptions.GoogleAuthError):
        return None


def default_credentials(request: Any) -> Credentials:
    """Application Default Credentials, resolved with ``request`` (a hardened transport)."""
    problem: str | None = None
    try:
        creds, _project = google.auth.default(scopes=list(SCOPES), request=request)
    except google.auth.exceptions.DefaultCredentialsError:
        problem = "no Application Default Credentials were found"
    except google.auth.exceptions.GoogleAuthError as e:
        problem = f"Application Default Credentials could not be loaded ({type(e).__name__})"
    if problem is not None:
        raise ConfigError(
            f"[sink] {problem}",
            hint="run on Google Cloud with a service account attached (workload identity), set "
            "GOOGLE_APPLICATION_CREDENTIALS, or give a key with PORTSHIFT_GCS_KEY / key_file",
        )
    return creds


def anonymous_credentials() -> Credentials:
    return AnonymousCredentials()


def connect(options: Any, _credentials: Credentials | None = None) -> tuple[Any, Any]:
    """``(authorized session, token session)`` for ``options`` (a :class:`GcsOptions`), both on
    portshift's TLS policy. ``_credentials`` is for the plugin's own tests only."""
    from .transport import GcsSession, MaskingRequest, build_session, pin_loggers

    pin_loggers()
    ca = options.ca_bundle
    adc = bool(options.application_default_credentials) and _credentials is None
    token_session = build_session(ca, allow_metadata_server=adc)
    auth_request = MaskingRequest(token_session)
    if _credentials is not None:
        creds = _credentials
    elif options.key is not None:
        creds = service_account_credentials(options.key)
    elif options.application_default_credentials:
        creds = default_credentials(auth_request)
    else:
        creds = anonymous_credentials()
    session = GcsSession(creds, auth_request, ca, allow_metadata_server=adc)
    return session, token_session
