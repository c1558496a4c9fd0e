"""Data residency: one allow-list of regions, with the same meaning for every sink.

``allowed_regions = ["eu-*", "europe-*", "eu"]`` in a sink's section is a list of glob patterns
(``*``, ``?``, ``[...]`` as in :mod:`fnmatch`), matched case-insensitively against the region the
*store itself* reports for the destination:

- S3: the bucket's region. Every request is signed for the configured ``region`` and S3 refuses
  (and the sink never follows) an answer that says the bucket is elsewhere, so the configured
  region is what S3 confirms on the first request (``check()`` makes one);
- GCS: the bucket's ``location`` from its JSON API metadata (``US``, ``EU``, ``EUROPE-WEST3``,
  ``EUR4``...), read before the first upload (needs ``storage.buckets.get``);
- Azure: a SAS cannot learn the storage account's location (no data-plane API returns it), so
  the Azure sink refuses an allow-list instead of claiming a residency it cannot see
  (:func:`refuse_unverifiable`).

A sink passes what it learned to :func:`require_allowed`; a region outside the list stops the
job before any byte is stored, with one line naming the region, the list and how to fix it.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated

from pydantic import AfterValidator

from .errors import ConfigError, ExitCode, FatalError

__all__ = ["AllowedRegions", "ResidencyError", "check_allow_list", "refuse_unverifiable", "region_allowed", "require_allowed"]

_PATTERN = re.compile(r"^[A-Za-z0-9*?\[\]!_ -]{1,64}$")


class ResidencyError(FatalError):
    """The store reports a region the job's ``allowed_regions`` does not allow: the job stops
    before anything is stored. A configuration problem (exit code 2), never retried."""

    exit_code = ExitCode.USAGE


def check_allow_list(patterns: list[str] | None, what: str = "allowed_regions") -> list[str] | None:
    """The list, validated: ``None`` stays ``None`` (no restriction); an empty list, or a pattern
    with characters no region name has, is a :class:`ConfigError`."""
    if patterns is None:
        return None
    if not patterns:
        raise ConfigError(f"{what}: an empty list allows nothing; remove it or name regions", hint='e.g. ["eu-*"]')
    out = []
    for p in patterns:
        if not isinstance(p, str) or not _PATTERN.match(p.strip()):
            raise ConfigError(
                f"{what}: {str(p)[:40]!r} is not a region or a glob pattern of regions",
                hint='letters, digits, "-", "*" and "?", e.g. ["eu-*", "europe-west3"]',
            )
        out.append(p.strip())
    return out


def _validate(patterns: list[str] | None) -> list[str] | None:
    return check_allow_list(patterns)


#: The ``allowed_regions`` option type: ``None`` (no restriction) or a non-empty list of globs.
AllowedRegions = Annotated[list[str] | None, AfterValidator(_validate)]


def region_allowed(region: str, patterns: list[str]) -> bool:
    """Whether ``region`` matches one of ``patterns`` (glob, case-insensitive)."""
    name = region.strip().lower()
    return any(fnmatch.fnmatchcase(name, p.strip().lower()) for p in patterns)


def require_allowed(
    region: str | None,
    patterns: list[str] | None,
    *,
    what: str = "region",
    location: str = "",
    config_time: bool = False,
) -> None:
    """Raise unless ``region`` (what the store reports, or at config time the declared region)
    matches ``patterns``; nothing is checked when ``patterns`` is ``None``. ``config_time``: the
    error is a :class:`ConfigError` (raised while the options are read) instead of a
    :class:`ResidencyError` (raised while the job runs, which stops it at once)."""
    if patterns is None:
        return
    where = f" ({location})" if location else ""
    hint = "data residency: nothing was sent; use a destination in an allowed region, or change allowed_regions"
    if not region:
        message = f"the store did not say where {what}{where} is, so allowed_regions {patterns} cannot be enforced"
    elif region_allowed(region, patterns):
        return
    else:
        message = f"{what} {region!r}{where} is not in allowed_regions {patterns}"
    if config_time:
        raise ConfigError(message, hint=hint)
    raise ResidencyError(message, operation="check data residency", hint=hint)


def refuse_unverifiable(patterns: list[str] | None, *, store: str, why: str, hint: str) -> None:
    """For a store that cannot tell where the data lives: an ``allowed_regions`` is refused
    (:class:`ConfigError`) rather than silently passing; nothing to do when it is unset."""
    if patterns is not None:
        raise ConfigError(f"allowed_regions cannot be enforced for {store}: {why}", hint=hint)
