"""portshift's settings from the environment, in one place.

Every non-secret setting the core reads from the environment is a field of :class:`Settings`,
named ``PORTSHIFT_<FIELD>``; docs/cli.md documents each one (a test keeps the two in step).
:func:`read_settings` reads the environment afresh on every call, so a variable set after import
(by a test, or by a parent process before it forks) is seen.

Credentials are not settings: they go through :mod:`portshift.secrets` (``secret_from_env``,
``*_file`` options, ``--secrets-from-stdin``) and never into a model that could be dumped.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError

PREFIX = "PORTSHIFT_"
#: values of a yes/no setting that mean "no" (any other non-empty value means "yes")
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


class Settings(BaseModel):
    """The environment variables that tune portshift (never credentials).

    A plain pydantic model filled by :func:`read_settings` (pydantic-settings did the same for a
    few string fields, at ~30 ms of every command's start: it imports asyncio)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    state: str | None = Field(  # a str: a postgresql:// URL must not go through Path
        None,
        description="the state to use when --state is not given: a file, or a postgresql:// URL without a password "
        "(unset: state.db in the user data folder)",
    )
    load_plugins: str | None = Field(
        None,
        description="a comma-separated allow-list of plugin distributions or entry-point names to load; "
        "set but empty loads none; unset loads every installed plugin",
    )
    state_key_endpoint_url: str | None = Field(
        None,
        description="the https:// endpoint of a KMS-compatible service that holds the key of sealed jobs, when no job "
        "file says it ([state] key_endpoint_url; see docs/byok.md)",
    )
    state_key_ca_bundle: str | None = Field(
        None, description="the CA (PEM) of that endpoint, when no job file says it ([state] key_ca_bundle)"
    )
    debug: bool = Field(False, description="print the traceback of an error (expected errors are otherwise one line)")
    retry_base: float = Field(1.0, description="the base, in seconds, of the wait before a failed artifact is retried")
    lease: float = Field(
        30.0,
        gt=0,
        description="seconds a worker's lease on its recordings lasts without renewal (renewed every quarter of it)",
    )

    resume_above: str = Field(
        "64MiB",
        description="the size from which a big upload is kept resumable after a crash (e.g. 16MiB; off: none)",
    )

    @field_validator("resume_above")
    @classmethod
    def _size_or_off(cls, value: str) -> str:
        if value.strip().lower() not in ("off", "none", "never"):
            from .sizes import parse_size

            parse_size(value.strip(), "PORTSHIFT_RESUME_ABOVE")  # a ConfigError is one line naming the variable
        return value.strip()

    @field_validator(
        "state", "retry_base", "lease", "state_key_endpoint_url", "state_key_ca_bundle", "resume_above", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[str(info.field_name)].default
        return value

    @field_validator("debug", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() not in FALSE_WORDS
        return value


def env_name(field: str) -> str:
    """The environment variable of a settings field: ``retry_base`` -> ``PORTSHIFT_RETRY_BASE``."""
    return PREFIX + field.upper()


def _from_environment() -> dict[str, str]:
    """``PORTSHIFT_<FIELD>`` of each field that is set, by field name; the variable's case is
    ignored (``portshift_debug`` counts), as pydantic-settings did."""
    fields = {env_name(name).lower(): name for name in Settings.model_fields}
    found: dict[str, str] = {}
    for key, value in os.environ.items():
        name = fields.get(key.lower())
        if name is not None:
            found[name] = value
    return found


def read_settings() -> Settings:
    """The settings as the environment has them now. A bad value is one ConfigError naming the
    variable (never echoing the value)."""
    try:
        return Settings.model_validate(_from_environment())
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise ConfigError(f"environment variable {env_name(field)}: {err['msg'].lower()} (fix or unset it)") from None
