"""The base class of every plugin's ``Options`` model, and option types plugins share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, model_validator

from .errors import ConfigError
from .secrets import Secret, read_secret_file, secret_from_env


def _require_https(url: str, info: ValidationInfo) -> str:
    from .tls import require_https

    # a ConfigError (not a ValueError): it passes through pydantic unchanged, even when a plugin
    # builds its options directly
    return require_https(url, info.field_name or "url")


#: A URL option that must be https:// (checked before any connection is made).
HttpsUrl = Annotated[str, AfterValidator(_require_https)]


class PluginOptions(BaseModel):
    """Options of a source, sink or manifest writer: one section of the job file.

    Unknown keys are errors. Fields declared with :func:`portshift.secrets.secret_field` are
    filled from ``<name>_file``, the environment variable, or ``--secrets-from-stdin``; a
    credential written into the job file itself is refused.
    """

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, arbitrary_types_allowed=True)

    #: The section of the job file this model reads, for messages (``"source"``, ``"sink"``).
    section: ClassVar[str] = "options"

    @classmethod
    def secret_fields(cls) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, field in cls.model_fields.items():
            extra = field.json_schema_extra
            if isinstance(extra, dict) and extra.get("secret"):
                out[name] = extra
        return out

    @model_validator(mode="before")
    @classmethod
    def _resolve_secrets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        section = data.pop("__section__", cls.section)
        for name, extra in cls.secret_fields().items():
            env = str(extra["env"])
            file_key = f"{name}_file"
            value = data.get(name)
            if isinstance(value, Secret):
                continue
            if value is not None:
                raise ConfigError(
                    f"[{section}] {name}: credentials are never read from the job file",
                    hint=f'remove it and set {env}, or {file_key} = "/path/to/secret"',
                )
            file_path = data.get(file_key)
            if file_path:
                data[name] = Secret(read_secret_file(Path(file_path), f"[{section}] {file_key}"), name)
                continue
            from_env = secret_from_env(env, name)
            if from_env is not None:
                data[name] = from_env
                continue
            if extra.get("required_secret", True):
                hint = f"set {env}"
                if file_key in cls.model_fields:
                    hint += f', or {file_key} = "/path/to/secret" in [{section}]'
                raise ConfigError(f"[{section}] {name}: the credential is missing", hint=hint)
        return data
