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

from portshift import ConfigError, Secret, register_mask

log = logging.getLogger("portshift.sink.azure")

#: What the sink needs: Put Blob / Put Block / Put Block List. ``w`` covers all three (and
#: overwriting a blob); ``c`` alone can create new blobs only (see docs/permissions/azure.md).
NEEDED = frozenset("cw")

#: What the reader (``portshift verify --store``) needs: Get Blob (``r``) and List Blobs (``l``).
READ_NEEDED = frozenset("rl")

#: Letters that let a token change or remove data (everything but read, list, filter by tags).
MODIFYING = frozenset("acwdxymtoepiu")

#: The two roles a token is checked for: the sink writes, the reader (verify --store) reads.
WRITE = "write"
READ = "read"

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


def normalize_token(secret: Secret, section: str = "sink") -> str:
    """The token as the SDK wants it: no leading ``?``. Refuses a URL (point to account_url)."""
    value = secret.reveal().strip()
    if "://" in value:
        raise ConfigError(
            f"[{section}] sas: PORTSHIFT_AZURE_SAS / sas_file holds a URL, not a SAS token",
            hint="keep only the part after '?' (sv=...&sig=...); the account goes in account_url",
        )
    if value.startswith("?"):
        value = value[1:]
    return value


def inspect_sas(secret: Secret, *, now: datetime | None = None, role: str = WRITE, section: str = "sink") -> SasInfo:
    """Check a SAS token before any transfer, for the sink (``role="write"``) or for the reader
    of ``portshift verify --store`` (``role="read"``).

    Raises :class:`ConfigError` when it cannot work (not a SAS, expired, not for blobs; for the
    sink: no create/write; for the reader: no read or no list). Returns what it found, with
    ``warnings`` for what works but is unsafe (plain HTTP allowed, more permissions than needed
    -- for the reader, any permission that can change the export -- expiry close).
    """
    if role not in (WRITE, READ):  # pragma: no cover - programming error
        raise ValueError(f"unknown role {role!r}")
    now = now or datetime.now(timezone.utc)
    token = normalize_token(secret, section)
    try:
        fields = urllib.parse.parse_qs(token, keep_blank_values=True, strict_parsing=False)
    except ValueError:
        raise ConfigError(f"[{section}] sas: the SAS token cannot be parsed") from None
    params = {k: v[-1] for k, v in fields.items()}
    sig = params.get("sig")
    if not sig:
        raise ConfigError(
            f"[{section}] sas: this is not a SAS token (no sig field)",
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
    # The sink touches objects only; the reader also lists the container (List Blobs is a
    # container-level operation: an account SAS needs srt to include c for it).
    used_types = {"o"} if role == WRITE else {"c", "o"}
    who = "the sink" if role == WRITE else "verification"
    if account:
        services = params.get("ss", "")
        if "b" not in services:
            raise ConfigError(f"[{section}] sas: this account SAS does not cover the blob service (ss has no 'b')")
        extra_services = sorted({_SERVICE_NAMES.get(s, s) for s in services if s != "b"})
        if extra_services:
            warnings.append(f"the account SAS also grants access to other services: {', '.join(extra_services)}")
        types = params.get("srt", "")
        if "o" not in types:
            raise ConfigError(f"[{section}] sas: this account SAS does not cover objects (srt has no 'o')")
        if role == READ and "c" not in types:
            raise ConfigError(
                f"[{section}] sas: this account SAS does not cover containers (srt has no 'c'): "
                "verification cannot list the export's blobs",
                hint="generate a container SAS (sr=c) with --permissions rl instead",
            )
        extra_types = sorted({_RESOURCE_TYPE_NAMES.get(t, t) for t in types if t not in used_types})
        if extra_types:
            warnings.append(
                f"the account SAS also grants access to resource types {who} never uses: "
                + ", ".join(extra_types)
                + " (a container SAS is narrower)"
            )
    else:
        resource = params.get("sr", "")
        if resource in ("b", "bs", "bv"):
            raise ConfigError(
                f"[{section}] sas: this SAS is for a single blob (sr=b); "
                + ("the sink writes many blobs" if role == WRITE else "verification reads and lists many blobs"),
                hint="generate a container SAS (sr=c) for the " + ("destination " if role == WRITE else "") + "container",
            )

    # --- permissions ----------------------------------------------------------------------
    perms = params.get("sp", "")
    if not perms and not stored:
        raise ConfigError(f"[{section}] sas: the SAS grants no permissions (no sp field)")
    if perms:
        letters = set(perms)
        if role == WRITE:
            _check_write_permissions(letters, section, warnings)
        else:
            _check_read_permissions(letters, section, warnings)
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
                f"[{section}] sas: the SAS expired at {expiry.isoformat()} (se)",
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
        raise ConfigError(f"[{section}] sas: the user delegation key of this SAS expired at {ske.isoformat()} (ske)")

    return SasInfo(
        kind=kind,
        permissions=perms,
        expiry=expiry,
        https_only=https_only,
        stored_policy=stored,
        encryption_scope=params.get("ses") or None,
        warnings=warnings,
    )


def _ordered(letters: set[str]) -> list[str]:
    order = list(PERMISSION_NAMES)
    return sorted(letters, key=lambda c: order.index(c) if c in order else 99)


def _named(letters: list[str]) -> str:
    return ", ".join(f"{PERMISSION_NAMES.get(c, 'unknown')} ({c})" for c in letters)


def _check_write_permissions(letters: set[str], section: str, warnings: list[str]) -> None:
    if not letters & NEEDED:
        raise ConfigError(
            f"[{section}] sas: the SAS grants neither create (c) nor write (w): the sink cannot store anything",
            hint="generate it with --permissions cw",
        )
    if "w" not in letters:
        warnings.append(
            "the SAS grants create (c) but not write (w): Put Block List and overwriting an existing "
            "blob need write; uploads larger than one block or re-runs may be refused"
        )
    extras = _ordered(letters - NEEDED)
    if extras:
        warnings.append(
            f"the SAS grants more than the sink needs: {_named(extras)}; portshift only needs create and write (sp=cw)"
        )


def _check_read_permissions(letters: set[str], section: str, warnings: list[str]) -> None:
    """verify --store: read (Get Blob) and list (List Blobs) are needed; never create/write."""
    missing = _ordered(set(READ_NEEDED) - letters)
    if missing:
        why = {
            "r": "it cannot read the exported blobs",
            "l": "it cannot list the export, so blobs the manifest does not know would go unnoticed",
        }
        raise ConfigError(
            f"[{section}] sas: verification needs {_named(missing)}: " + "; ".join(why[c] for c in missing),
            hint="generate a read-only SAS with --permissions rl (see docs/permissions/azure.md)",
        )
    modifying = _ordered(letters & MODIFYING)
    if modifying:
        warnings.append(
            f"the SAS can change the export it is meant to verify: it grants {_named(modifying)}; "
            "verification needs only read and list (sp=rl) -- use a separate, read-only SAS"
        )
    other = _ordered(letters - READ_NEEDED - MODIFYING)
    if other:
        warnings.append(f"the SAS grants more than verification needs: {_named(other)}; only sp=rl is needed")


def warn(info: SasInfo, section: str = "sink") -> None:
    for message in info.warnings:
        log.warning("[%s] sas: %s", section, message)
