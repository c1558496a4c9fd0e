"""Which state a command uses: ``--state``, else ``PORTSHIFT_STATE``, else ``[state]`` in the job
file, else the state file in the user data folder. A path means SQLite, a ``postgresql://`` URL
means PostgreSQL.

The ``[state]`` section::

    [state]
    url = "postgresql://portshift@ep-example-123456.eu-central-1.aws.neon.tech/portshift"
    password_file = "/run/secrets/portshift-db"   # or PORTSHIFT_STATE_PASSWORD, or --secrets-from-stdin
    ca_bundle = "/etc/portshift/db-ca.pem"         # optional: a private CA

The password never comes from the job file or the URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from ..errors import ConfigError
from ..options import PluginOptions
from ..secrets import Secret, secret_field
from ..settings import read_settings
from . import State, is_postgres_url, open_state


class StateOptions(PluginOptions):
    """The ``[state]`` section of a job file (all optional)."""

    path: Path | None = Field(default=None, description="the SQLite state file")
    url: str | None = Field(default=None, description="a postgresql:// URL without a password")
    password: Secret | None = secret_field(
        env="PORTSHIFT_STATE_PASSWORD", description="the database password (never in the job file)", required=False
    )
    password_file: Path | None = Field(default=None, description="a file holding the database password")
    ca_bundle: Path | None = Field(default=None, description="the CA (PEM) that signed the database's certificate")
    key: str | None = Field(
        default=None,
        description='seal the job metadata with this key (docs/byok.md): "file:/path/state.key" or "kms:arn:aws:kms:..."',
    )
    key_endpoint_url: str | None = Field(default=None, description="the https:// endpoint of a KMS-compatible service")
    key_ca_bundle: Path | None = Field(default=None, description="the CA (PEM) of key_endpoint_url")
    #: the key provider's credentials from ``--secrets-from-stdin`` (``key_access_key_id``, ...), never a field
    _key_credentials: dict[str, Secret] = PrivateAttr(default_factory=dict)

    def key_provider(self) -> Any:
        """The provider of ``key`` with this section's endpoint, CA and credentials (None without a key)."""
        if self.key is None:
            return None
        from ..key_providers import key_provider

        return key_provider(
            self.key, endpoint_url=self.key_endpoint_url, ca_bundle=self.key_ca_bundle, credentials=self._key_credentials
        )

    @model_validator(mode="after")
    def _one_target(self) -> StateOptions:
        if self.path is not None and self.url is not None:
            raise ValueError("give either path (SQLite) or url (PostgreSQL), not both")
        if self.key is not None:
            from ..key_providers import key_provider

            key_provider(self.key, endpoint_url=self.key_endpoint_url, ca_bundle=self.key_ca_bundle)  # a wrong name: one line now
        if self.url is not None:
            if not is_postgres_url(self.url):
                raise ValueError("url must be a postgresql:// URL (for a file, use path)")
            from .pg_url import parse_url

            parse_url(self.url, ca_bundle=self.ca_bundle)  # a password in it is masked and refused now
        return self


#: the key provider's credentials ``--secrets-from-stdin`` may carry in "state" (name there -> the provider's name)
KEY_SECRETS = {
    "key_access_key_id": "access_key_id",
    "key_secret_access_key": "secret_access_key",
    "key_session_token": "session_token",
}


def state_options(section: dict[str, Any] | None, stdin_secrets: dict[str, Any] | None = None) -> StateOptions:
    """Build :class:`StateOptions` from a ``[state]`` table and the ``"state"`` part of
    ``--secrets-from-stdin`` (``{"state": {"password": "..."}}``)."""
    from ..config import build_options

    data = dict(section or {})
    given = (stdin_secrets or {}).get("state") or {}
    if not isinstance(given, dict) or set(given) - {"password", *KEY_SECRETS}:
        raise ConfigError(
            'secrets for [state]: expected {"state": {"password": "...", "key_access_key_id": "...", '
            '"key_secret_access_key": "...", "key_session_token": "..."}} (each optional)'
        )
    for name, value in given.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"secret state.{name} must be a non-empty string")
    if given.get("password") is not None:
        data["password"] = Secret(given["password"], "password")
    options: StateOptions = build_options(StateOptions, data, "state")  # type: ignore[assignment]
    options._key_credentials = {KEY_SECRETS[k]: Secret(v, KEY_SECRETS[k]) for k, v in given.items() if k in KEY_SECRETS}
    pair = {"access_key_id", "secret_access_key"}
    if options._key_credentials and not pair <= set(options._key_credentials):
        raise ConfigError("secrets for [state]: key_access_key_id and key_secret_access_key go together")
    return options


def chosen_target(cli_value: str | Path | None, options: StateOptions | None) -> str | Path | None:
    if cli_value not in (None, ""):
        return cli_value
    env = read_settings().state
    if env:
        return env
    if options is not None:
        return options.url or options.path
    return None


def open_chosen_state(cli_value: str | Path | None, options: StateOptions | None = None, *, create: bool = True) -> State:
    """Open the state a command was pointed at (see the module docstring for the order)."""
    options = options if options is not None else state_options(None)
    target = chosen_target(cli_value, options)
    if is_postgres_url(target):
        state = open_state(target, create=create, password=options.password, ca_bundle=options.ca_bundle)
    else:
        state = open_state(target, create=create)
    if options.key is not None:
        state.seals.use(options.key_provider())
    return state
