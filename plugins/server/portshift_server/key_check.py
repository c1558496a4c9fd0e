"""Before a job sealed with the customer's key starts: one wrap and unwrap with that key (docs/byok.md).

A new job and a resume of a sealed job are accepted only when the service, with the credentials of
the request and the operator's KMS endpoint and CA, has done one ``GenerateDataKey`` and one
``Decrypt`` of that wrapped key (the key provider's ``check()``: the encryption context the worker
uses, ``{"portshift_job": "portshift-key-check"}``, since the worker names its own job). Otherwise
the request is refused in one line naming the key and what KMS answered: HTTP 400 when the answer
is about the key or its credentials (does not exist, disabled, access denied, unknown
credentials), HTTP 503 when KMS could not be reached or did not answer in time. Nothing is
started, nothing written.

The round trip runs in a thread of its own, waited for at most ``CHECK_TIMEOUT`` seconds (the
request's own thread then answers; the round trip ends by itself within the KMS client's
timeouts), and at most ``MAX_CHECKS`` run at once: a slow KMS holds no more of the service's
threads than that. The credentials are in memory only, for the round trip; the log scrubber forgets
them when it ends.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from portshift import ConfigError, KeyUnavailableError, PortshiftError, Secret, forget_mask, sanitize_message
from portshift.state.sealed import UNAVAILABLE

from .offers import RequestError
from .state_keys import CREDENTIALS, StateKeyOptions

#: seconds a request waits for the round trip
CHECK_TIMEOUT = 10.0
#: round trips at once (each holds one thread while KMS is slow)
MAX_CHECKS = 4
_slots = threading.BoundedSemaphore(MAX_CHECKS)
#: KMS answers about KMS itself, not the key: try again later
_UPSTREAM = ("KMSInternalException", "DependencyTimeoutException", "ThrottlingException", "KeyUnavailableException")
#: KMS answers refusing the request's credentials (AWS's codes; moto's is its HTTP status)
_CREDENTIALS = ("UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException", "403")
_WHY = re.compile(r" is not available for job portshift-key-check: (.*)$")


class KeyUnreachable(Exception):
    """KMS could not be reached or did not answer (HTTP 503, ``Retry-After``)."""


def _reason(e: PortshiftError) -> str:
    m = _WHY.search(e.message)
    return sanitize_message(m.group(1) if m else e.message, 200)


def _end_round_trip(secrets: dict[str, Secret]) -> None:
    """The round trip has ended: its credentials leave the log scrubber, and its place is free."""
    for s in secrets.values():
        forget_mask(s.reveal())
    secrets.clear()
    _slots.release()


def verify_key(
    options: StateKeyOptions, key: str | None, credentials: dict[str, str] | bytearray, timeout: float = CHECK_TIMEOUT
) -> None:
    """Wrap and unwrap once with ``key`` (``kms:arn:...``; nothing to do when None) and the
    request's ``credentials`` (``key_access_key_id``, ...; or the worker's credential document,
    whose ``"state"`` they are): :class:`RequestError` or :class:`KeyUnreachable`, one line naming
    the key, when it cannot."""
    if key is None:
        return
    if isinstance(credentials, bytearray):
        credentials = json.loads(credentials).get("state", {})
    if not _slots.acquire(blocking=False):
        raise KeyUnreachable("the service is checking too many customer keys at once; try again in a minute")
    outcome: dict[str, Any] = {}
    secrets = {k: Secret(credentials[f"key_{k}"], k) for k in CREDENTIALS if credentials.get(f"key_{k}")}

    def round_trip() -> None:
        from portshift.key_providers import key_provider

        try:
            key_provider(key, endpoint_url=options.endpoint_url, ca_bundle=options.ca_bundle, credentials=secrets).check()
        except (KeyUnavailableError, ConfigError) as e:
            outcome["error"] = e
        except Exception as e:  # noqa: BLE001 - never the SDK's text; the service's trouble, not the key's (503)
            outcome["error"] = ConfigError(f"the key check failed ({type(e).__name__})")
        finally:
            _end_round_trip(secrets)

    worker = threading.Thread(target=round_trip, name="key-check", daemon=True)
    try:
        worker.start()
    except RuntimeError:  # no thread to be had
        _end_round_trip(secrets)
        raise KeyUnreachable("the service cannot check customer keys just now; try again in a minute") from None
    worker.join(timeout)
    if worker.is_alive():
        raise KeyUnreachable(f"state_key: KMS did not answer within {timeout:g} s for the key {key}; try again in a minute")
    error = outcome.get("error")
    if error is None:
        return
    why = _reason(error)
    if why.removeprefix("KMS answered ") in _CREDENTIALS:
        why = f"KMS refused the credentials ({why.removeprefix('KMS answered ')})"
    upstream = why.startswith("KMS could not be reached") or why.removeprefix("KMS answered ") in _UPSTREAM
    if upstream or isinstance(error, ConfigError):
        raise KeyUnreachable(f"state_key: the service could not reach KMS for the key {key}: {why}; try again in a minute")
    refused = RequestError(
        f"state_key: the service cannot use the key {key}: {why}; check the key, its key policy and the credentials"
    )
    refused.sealed = f"{UNAVAILABLE} ({key}: {why})"  # type: ignore[attr-defined]
    raise refused


def verify_resume(
    options: StateKeyOptions, key: str | None, credentials: dict[str, str] | bytearray, kept: dict[str, Any]
) -> None:
    """:func:`verify_key` for the resume of a sealed job; when KMS refuses the key itself (disabled,
    gone, access denied), the job shows "sealed: the customer's key is not available (...)" from then
    on (``kept``: what the service keeps of the job in memory), until a check passes again."""
    try:
        verify_key(options, key, credentials)
    except RequestError as e:
        if getattr(e, "sealed", None):
            kept["sealed"] = e.sealed  # type: ignore[attr-defined]
        raise
    kept.pop("sealed", None)
