"""Reading a SAS token at config time: what it allows, until when, over which protocol.

Only the *fields* of the token are read here (``sp``, ``se``, ``spr``...); the signature is
never looked at, logged or shown. Messages name fields and permission letters, never values
that could be secret.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from portshift.errors import ConfigError
from portshift.secrets import Secret, register_mask

log = logging.getLogger("portshift.sink.azure")

#: What the sink needs: Put Blob / Put Block / Put Block List. ``w`` covers all three (and
#: overwriting a blob); ``c`` alone can create new blobs only (see docs/permissions/azure.md).
NEEDED = frozenset("cw")

#: Permission letters of service and account SAS tokens, for messages.
PERMISSION_NAMES = {
    "r": "read",
    "a": "add",
    "c": "create",
    "w": "write",
    "d": "delete",
    "x": "delete version",
    "y": "permanent delete",
    "l": "list",
    "t": "tags",
    "f": "filter by tags",
    "m": "move",
    "e": "execute",
    "o": "ownership",
    "p": "permissions",
    "i": "set immutability policy",
    "u": "update",
}

_SERVICE_NAMES = {"b": "blob", "f": "file", "q": "queue", "t": "table"}
_RESOURCE_TYPE_NAMES = {"s": "service", "c": "container", "o": "object"}

#: Expiry sooner than this gets a warning: a long export may outlive its credential.
EXPIRY_WARNING = timedelta(hours=1)


@dataclass
class SasInfo:
    """What a SAS token says about itself (never the signature)."""

    kind: str  #: "service" (container/blob/directory SAS) or "account"
    permissions: str  #: the ``sp`` letters ("" when a stored access policy sets them)
    expiry: datetime | None
    https_only: bool
    stored_policy: bool
    encryption_scope: str | None = None  #: ``ses``: every write must use this scope
    warnings: list[str] = field(default_factory=list)


def _parse_time(value: str) -> datetime | None:
    """The ISO 8601 forms Azure accepts: date, date+minutes, seconds, 7-digit fractions; UTC."""
    text = value.strip()
    if not text:
        return None
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", text)
    if m:  # Python < 3.11 accepts at most 6 fraction digits; Azure writes 7
        text = f"{m.group(1)}.{m.group(2)[:6]}{m.group(3)}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def normalize_token(secret: Secret) -> str:
    """The token as the SDK wants it: no leading ``?``. Refuses a URL (point to account_url)."""
    value = secret.reveal().strip()
    if "://" in value:
        raise ConfigError(
            "[sink] sas: PORTSHIFT_AZURE_SAS / sas_file holds a URL, not a SAS token",
            hint="keep only the part after '?' (sv=...&sig=...); the account goes in account_url",
        )
    if value.startswith("?"):
        value = value[1:]
    return value


def inspect_sas(secret: Secret, *, now: datetime | None = None) -> SasInfo:
    """Check a SAS token before any transfer.

    Raises :class:`ConfigError` when it cannot work (not a SAS, expired, no write permission,
    not for blobs). Returns what it found, with ``warnings`` for what works but is unsafe
    (plain HTTP allowed, more permissions than the sink needs, expiry close).
    """
    now = now or datetime.now(timezone.utc)
    token = normalize_token(secret)
    try:
        fields = urllib.parse.parse_qs(token, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise ConfigError("[sink] sas: the SAS token cannot be parsed") from None
    params = {k: v[-1] for k, v in fields.items()}
    sig = params.get("sig")
    if not sig:
        raise ConfigError(
            "[sink] sas: this is not a SAS token (no sig field)",
            hint="generate one with `az storage container generate-sas` (see docs/permissions/azure.md)",
        )
    # The signature may travel in other encodings than the whole token (the scrubber knows the
    # token already): make it masked on its own too.
    register_mask(sig)
    register_mask(urllib.parse.quote(sig, safe=""))

    warnings: list[str] = []
    account = "ss" in params or "srt" in params
    kind = "account" if account else "service"
    stored = bool(params.get("si"))

    # --- what it is for -------------------------------------------------------------------
    if account:
        services = params.get("ss", "")
        if "b" not in services:
            raise ConfigError("[sink] sas: this account SAS does not cover the blob service (ss has no 'b')")
        extra_services = sorted({_SERVICE_NAMES.get(s, s) for s in services if s != "b"})
        if extra_services:
            warnings.append(f"the account SAS also grants access to other services: {', '.join(extra_services)}")
        types = params.get("srt", "")
        if "o" not in types:
            raise ConfigError("[sink] sas: this account SAS does not cover objects (srt has no 'o')")
        extra_types = sorted({_RESOURCE_TYPE_NAMES.get(t, t) for t in types if t != "o"})
        if extra_types:
            warnings.append(
                "the account SAS also grants access to resource types the sink never uses: "
                + ", ".join(extra_types)
                + " (a container SAS is narrower)"
            )
    else:
        resource = params.get("sr", "")
        if resource in ("b", "bs", "bv"):
            raise ConfigError(
                "[sink] sas: this SAS is for a single blob (sr=b); the sink writes many blobs",
                hint="generate a container SAS (sr=c) for the destination container",
            )

    # --- permissions ----------------------------------------------------------------------
    perms = params.get("sp", "")
    if not perms and not stored:
        raise ConfigError("[sink] sas: the SAS grants no permissions (no sp field)")
    if perms:
        letters = set(perms)
        if not letters & NEEDED:
            raise ConfigError(
                "[sink] sas: the SAS grants neither create (c) nor write (w): the sink cannot store anything",
                hint="generate it with --permissions cw",
            )
        if "w" not in letters:
            warnings.append(
                "the SAS grants create (c) but not write (w): Put Block List and overwriting an existing "
                "blob need write; uploads larger than one block or re-runs may be refused"
            )
        extras = sorted(letters - NEEDED, key=lambda c: list(PERMISSION_NAMES).index(c) if c in PERMISSION_NAMES else 99)
        if extras:
            names = ", ".join(f"{PERMISSION_NAMES.get(c, 'unknown')} ({c})" for c in extras)
            warnings.append(
                f"the SAS grants more than the sink needs: {names}; portshift only needs create and write (sp=cw)"
            )
    if stored:
        warnings.append(
            "the SAS refers to a stored access policy (si=...): its permissions and expiry are set on the "
            "container and cannot be checked here"
        )

    # --- protocol -------------------------------------------------------------------------
    protocol = params.get("spr", "")
    https_only = protocol.strip().lower() == "https"
    if not https_only:
        warnings.append(
            "the SAS also allows plain HTTP (no spr=https): anyone who obtains it can use it without TLS; "
            "generate it with --https-only (portshift itself only ever uses https)"
        )

    # --- validity window ------------------------------------------------------------------
    expiry: datetime | None = None
    se = params.get("se")
    if se:
        expiry = _parse_time(se)
        if expiry is None:
            warnings.append("the SAS expiry (se) could not be read; it is not checked")
        elif expiry <= now:
            raise ConfigError(
                f"[sink] sas: the SAS expired at {expiry.isoformat()} (se)",
                hint="generate a new one with a later --expiry",
            )
        elif expiry - now < EXPIRY_WARNING:
            warnings.append(f"the SAS expires soon, at {expiry.isoformat()}; a long export may fail part way")
    elif not stored:
        warnings.append("the SAS has no expiry (se) and no stored access policy; Azure will likely refuse it")
    start = _parse_time(params.get("st", "") or "")
    if start is not None and start > now + timedelta(minutes=5):
        warnings.append(f"the SAS is not valid before {start.isoformat()} (st)")
    # A user delegation SAS also ends with its delegation key (ske).
    ske = _parse_time(params.get("ske", "") or "")
    if ske is not None and ske <= now:
        raise ConfigError(f"[sink] sas: the user delegation key of this SAS expired at {ske.isoformat()} (ske)")

    return SasInfo(
        kind=kind,
        permissions=perms,
        expiry=expiry,
        https_only=https_only,
        stored_policy=stored,
        encryption_scope=params.get("ses") or None,
        warnings=warnings,
    )


def warn(info: SasInfo) -> None:
    for message in info.warnings:
        log.warning("[sink] sas: %s", message)
