"""The one secret type, and how options get their credentials.

A :class:`Secret` holds a credential in memory only. It is masked in ``repr``/``str``/``format``
and JSON, refuses to be pickled, and gives its value only through :meth:`Secret.reveal`, which
is called at the SDK boundary and nowhere else. Every secret's value (and its URL-encoded,
JSON-escaped and base64 forms) is registered with the log scrubber the moment it exists.

In an options model, declare a credential with :func:`secret_field`::

    class Options(PluginOptions):
        token: Secret | None = secret_field(env="PORTSHIFT_CHORUS_TOKEN")
        token_file: Path | None = None

The value then comes from ``token_file`` (a secret file, the Docker/Kubernetes convention) or the
environment variable, or from ``--secrets-from-stdin``; never from the job file.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_core import core_schema

from .errors import ConfigError

_MASK = "**********"
_lock = threading.Lock()
_known: set[str] = set()
#: the forms registered for each value still masked: a short-lived value (a media link, registered
#: then forgotten per download) is encoded once, not again when it is forgotten
_forms: dict[str, frozenset[str]] = {}
#: values registered whose forms are not made yet (in the order they came)
_pending: dict[str, None] = {}
_version = 0


def _variants(value: str) -> set[str]:
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value), urllib.parse.quote_plus(value)}
    forms.add(json.dumps(value)[1:-1])
    raw = value.encode()
    forms.add(base64.b64encode(raw).decode().rstrip("="))
    forms.add(base64.urlsafe_b64encode(raw).decode().rstrip("="))
    return {f for f in forms if len(f) >= 4}


def register_mask(value: str) -> None:
    """Make the log scrubber hide ``value`` (and its encoded forms) from now on.

    Plugins call this for values *derived* from a secret that are secrets themselves, such as a
    signed download link or an access token obtained with a key.
    """
    if not value or len(value) < 4:
        return
    global _version
    with _lock:
        if value in _pending:
            return
        forms = _forms.get(value)
        if forms is not None:  # encoded already: masked again if a form of it was forgotten
            if not forms <= _known:
                _known.update(forms)
                _version += 1
            return
        # its encoded forms are made when the scrubber next asks for the masks (known_masks): a
        # short-lived value (a media link per download) is most often forgotten before any line
        # is logged, and then never encoded at all
        _pending[value] = None
        _version += 1


def forget_mask(value: str) -> None:
    """Stop masking ``value`` (a short-lived derived secret that can no longer be used, such as
    a media link that expired or was consumed), so that the mask set does not grow for ever."""
    global _version
    with _lock:
        if value in _pending:  # registered, never encoded: nothing else to undo
            del _pending[value]
            _version += 1
            return
        forms = _forms.pop(value, None)
        if forms is None:
            forms = frozenset(_variants(value))
        if forms & _known:
            _known.difference_update(forms)
            _version += 1


def known_masks() -> frozenset[str]:
    with _lock:
        while _pending:
            value = next(iter(_pending))
            forms = frozenset(_variants(value))
            _forms[value] = forms
            _known.update(forms)
            del _pending[value]
        return frozenset(_known)


def masks_version() -> int:
    return _version


class Secret:
    """A credential held in memory. ``reveal()`` it only where an SDK needs it."""

    __slots__ = ("_value", "name")

    def __init__(self, value: str, name: str = "secret") -> None:
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        self._value = value
        self.name = name
        register_mask(value)
        # A multi-line secret (a PEM key, a JSON document): mask each substantial line too.
        for line in value.splitlines():
            if len(line.strip()) >= 16:
                register_mask(line.strip())

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name}={_MASK})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # Only Secret instances validate: a plain string in the job file is refused earlier,
        # with a message saying where the credential must come from.
        return core_schema.is_instance_schema(
            cls,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: _MASK, when_used="always"),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "format": "password", "writeOnly": True}


def secret_field(*, env: str, description: str = "", required: bool = True) -> Any:
    """Declare a credential option.

    ``env`` is the environment variable it may come from. The sibling ``<name>_file`` option (a
    path to a file holding the secret) is honoured when the model declares it. ``required=False``
    for credentials that have an alternative (e.g. the AWS credential chain).
    """
    return Field(
        default=None,
        description=description or f"from the environment variable {env} or a *_file option",
        json_schema_extra={"secret": True, "env": env, "required_secret": required},
    )


def read_secret_file(path: Path, what: str) -> str:
    """Read a secret file, stripping one trailing newline. Errors never show the content."""
    try:
        data = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what}: the secret file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{what}: the secret file {path} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: cannot read the secret file {path} ({type(e).__name__})") from None
    if data.endswith("\n"):
        data = data[:-1]
        if data.endswith("\r"):
            data = data[:-1]
    if not data.strip():
        raise ConfigError(f"{what}: the secret file {path} is empty")
    return data


def secret_from_env(env: str, name: str) -> Secret | None:
    value = os.environ.get(env)
    if value is None or value == "":
        return None
    return Secret(value, name)
