"""One way to write a size in a job file: ``8388608``, ``"16M"``, ``"16MiB"``, ``"8 MB"``.

:data:`Size` is the pydantic type every plugin uses for a byte-count option; :func:`parse_size`
is the same parser for code that reads a size elsewhere. Units are case-insensitive:

- none or ``B``: bytes;
- ``K``, ``M``, ``G``, ``T`` and ``KiB``, ``MiB``, ``GiB``, ``TiB``: powers of 1024;
- ``KB``, ``MB``, ``GB``, ``TB``: powers of 1000 (as pydantic's ``ByteSize`` and disk vendors
  count).

A fraction is accepted when it comes to a whole number of bytes (``"1.5MiB"``). Anything else
(a negative number, a boolean, an unknown unit) is a :class:`~portshift.errors.ConfigError`
naming the option: one line, the accepted forms, never a traceback. Why not pydantic's
``ByteSize`` alone: it reads ``"16MB"`` as decimal (fine, kept) but refuses the ``"16M"`` that
operators write, and its error is a ``ValidationError`` rather than the one-line ``ConfigError``
every other option gives.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo, WithJsonSchema

from .errors import ConfigError

__all__ = ["Size", "parse_size", "format_size"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kib": KiB,
    "m": MiB,
    "mib": MiB,
    "g": GiB,
    "gib": GiB,
    "t": TiB,
    "tib": TiB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_FORMS = '8388608, "16M", "16MiB" or "8 MB"; K/M/G and KiB/MiB/GiB count in 1024s, KB/MB/GB in 1000s'


def parse_size(value: Any, what: str = "size") -> int:
    """Bytes for ``value`` (an int, or a string with an optional unit); :class:`ConfigError`
    naming ``what`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{what}: a size cannot be negative", hint=f"write e.g. {_FORMS}")
        return value
    if isinstance(value, str):
        m = _SIZE.fullmatch(value)
        unit = UNITS.get(m.group(2).lower()) if m else None
        if m and unit is not None:
            try:
                exact = Decimal(m.group(1)) * unit
            except InvalidOperation:  # pragma: no cover - the pattern only lets digits through
                exact = Decimal("0.5")
            if exact == exact.to_integral_value():
                return int(exact)
            raise ConfigError(f"{what}: {value.strip()[:40]!r} is not a whole number of bytes", hint=f"write e.g. {_FORMS}")
        shown = f"{value.strip()[:40]!r}"
    else:
        shown = f"a {type(value).__name__}"
    raise ConfigError(f"{what}: {shown} is not a size", hint=f"write e.g. {_FORMS}")


def _validate(value: Any, info: ValidationInfo) -> int:
    return parse_size(value, info.field_name or "size")


#: A byte count option: ``part_size: Size = 8 * MiB`` accepts every form :func:`parse_size`
#: does; its JSON schema (``portshift plugins``) says integer or string.
Size = Annotated[
    int,
    BeforeValidator(_validate),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}], "examples": [8388608, "8MiB", "16M"]}),
]


def format_size(n: int) -> str:
    """``8388608`` -> ``"8 MiB"`` (exact binary units when they fit, else bytes), for messages."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} bytes"
