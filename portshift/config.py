"""The job file: TOML with ``[job]``, ``[source]``, ``[sink]`` and optional ``[manifest.<writer>]``.

Unknown keys are errors naming the key and the valid ones. Credentials are never read from the
job file (see :mod:`portshift.secrets`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import plugins
from .errors import ConfigError
from .keys import DEFAULT_TEMPLATE, check_template
from .options import PluginOptions
from .secrets import Secret

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_SINCE = datetime(2015, 1, 1, tzinfo=timezone.utc)


def parse_when(value: str | date | datetime, what: str) -> datetime:
    """An ISO date or date-time; naive values are UTC. A bare date is midnight."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime.combine(value, time.min)
    else:
        text = str(value).strip()
        try:
            if len(text) == 10:
                dt = datetime.combine(date.fromisoformat(text), time.min)
            else:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{what}: {text[:40]!r} is not a date", hint="use YYYY-MM-DD or an ISO 8601 date-time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


_DURATION = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str | int) -> timedelta:
    """``"3d"``, ``"12h"``, ``"90m"``, ``"45s"`` or ``0``."""
    value = str(text).strip().lower()
    if value == "0":
        return timedelta(0)
    number, unit = value[:-1].strip(), value[-1:]
    if unit not in _DURATION or not number.isdigit():
        raise ValueError(f"{str(text)[:20]!r} is not a duration; use a number and d, h, m or s (e.g. 3d, 12h)")
    return timedelta(seconds=int(number) * _DURATION[unit])


class JobSection(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str | None = Field(default=None, description="a label for this job, shown in `portshift jobs`")
    transfers: int = Field(default=4, ge=1, le=64, description="artifacts transferred in parallel")
    retries: int = Field(default=3, ge=0, le=20, description="retries per artifact after the first attempt")
    key_template: str = Field(default=DEFAULT_TEMPLATE, description="object key under the export root")
    manifest: list[str] = Field(default_factory=lambda: ["sha256sum"], description="manifest writers to run")
    since: datetime | date | None = Field(default=None, description="start of the export window (default 2015-01-01)")
    until: datetime | date | None = Field(default=None, description="end of the export window (default: now)")
    relist_margin: str = Field(
        default="3d",
        description="--since last lists this much time before the last job's end again, for calls "
        "that were still processing (e.g. 3d, 12h; 0 to turn off)",
    )
    pending_lookback: str = Field(
        default="30d",
        description="--since last also lists back to the oldest call left pending, at most this far back",
    )
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) to sign the manifest; or PORTSHIFT_SIGNING_KEY"
    )

    @field_validator("relist_margin", "pending_lookback")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("key_template")
    @classmethod
    def _template(cls, v: str) -> str:
        check_template(v)
        return v


@dataclass
class JobConfig:
    path: Path | None
    job: JobSection
    source_type: str
    source_cls: type
    source_options: PluginOptions
    sink_type: str
    sink_cls: type
    sink_options: PluginOptions
    writers: list[tuple[str, type, PluginOptions]]
    signing_key: Secret | None = None


def format_validation_error(e: ValidationError, section: str, model: type[BaseModel]) -> str:
    """One line per problem, never the input value."""
    problems = []
    valid = ", ".join(sorted(model.model_fields))
    for err in e.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(section)"
        kind = err.get("type", "")
        if kind == "extra_forbidden":
            problems.append(f"[{section}] unknown key {loc!r} (valid keys: {valid})")
        elif kind == "missing":
            problems.append(f"[{section}] {loc}: required, missing")
        else:
            msg = err.get("msg", "invalid").replace("Value error, ", "")
            problems.append(f"[{section}] {loc}: {msg}")
    return "; ".join(problems)


def build_options(model: type[PluginOptions], data: dict[str, Any], section: str) -> PluginOptions:
    try:
        return model.model_validate({**data, "__section__": section})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, section, model)) from None


def load_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"job file {path} does not exist", hint="give the path of a .toml job file") from None
    except IsADirectoryError:
        raise ConfigError(f"job file {path} is a folder, not a file") from None
    except PermissionError:
        raise ConfigError(f"job file {path} is not readable by this user") from None
    if not raw.strip():
        raise ConfigError(f"job file {path} is empty", hint="see docs/job-file.md for an example")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"job file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"job file {path} is not valid TOML: {e}") from None


def _section(doc: dict[str, Any], name: str, path: Path | None) -> dict[str, Any]:
    value = doc.get(name)
    if value is None:
        raise ConfigError(f"job file {path}: the [{name}] section is missing", hint=f'add [{name}] with type = "..."')
    if not isinstance(value, dict):
        raise ConfigError(f"job file {path}: {name} must be a [{name}] table")
    return dict(value)


def _with_secrets(data: dict[str, Any], given: dict[str, Any] | None, section: str) -> dict[str, Any]:
    if not given:
        return data
    if not isinstance(given, dict):
        raise ConfigError(f"secrets for [{section}] must be a JSON object")
    out = dict(data)
    for k, v in given.items():
        if not isinstance(v, str):
            raise ConfigError(f"secret {section}.{k} must be a string")
        if not v.strip():
            raise ConfigError(f"secret {section}.{k} is empty")
        out[k] = Secret(v, k)
    return out


def load_job(path: Path | None, doc: dict[str, Any] | None = None, secrets: dict[str, Any] | None = None) -> JobConfig:
    """Validate a whole job file. ``secrets`` (from ``--secrets-from-stdin``) maps section ->
    {option: value}."""
    if doc is None:
        if path is None:
            raise ConfigError("no job file given", hint="portshift run --config job.toml")
        doc = load_toml(path)
    known = {"job", "source", "sink", "manifest"}
    for key in doc:
        if key not in known:
            raise ConfigError(f"job file {path}: unknown section or key {key!r} (valid: {', '.join(sorted(known))})")
    secrets = secrets or {}
    unknown_secret_sections = set(secrets) - {"source", "sink"}
    if unknown_secret_sections:
        raise ConfigError(f"secrets for unknown sections: {', '.join(sorted(unknown_secret_sections))} (valid: source, sink)")

    job_doc = doc.get("job", {})
    if not isinstance(job_doc, dict):
        raise ConfigError(f"job file {path}: job must be a [job] table")
    try:
        job = JobSection.model_validate(job_doc)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "job", JobSection)) from None

    src = _section(doc, "source", path)
    snk = _section(doc, "sink", path)
    src_type = src.pop("type", None)
    snk_type = snk.pop("type", None)
    if not src_type or not isinstance(src_type, str):
        raise ConfigError("[source] type is missing", hint='e.g. type = "chorus"; `portshift plugins` lists sources')
    if not snk_type or not isinstance(snk_type, str):
        raise ConfigError("[sink] type is missing", hint='e.g. type = "local"; `portshift plugins` lists sinks')
    source_cls = plugins.sources().get(src_type)
    sink_cls = plugins.sinks().get(snk_type)
    source_options = build_options(source_cls.Options, _with_secrets(src, secrets.get("source"), "source"), "source")
    sink_options = build_options(sink_cls.Options, _with_secrets(snk, secrets.get("sink"), "sink"), "sink")

    manifest_doc = doc.get("manifest", {})
    if not isinstance(manifest_doc, dict):
        raise ConfigError("[manifest] must be a table of [manifest.<writer>] sections")
    registry = plugins.manifest_writers()
    writers = []
    if not job.manifest:
        raise ConfigError("[job] manifest must name at least one writer", hint='e.g. manifest = ["sha256sum"]')
    for name in manifest_doc:
        if name not in job.manifest:
            raise ConfigError(f"[manifest.{name}] configures a writer that [job] manifest does not list")
    for name in job.manifest:
        cls = registry.get(name)
        opts = manifest_doc.get(name, {})
        if not isinstance(opts, dict):
            raise ConfigError(f"[manifest.{name}] must be a table")
        writers.append((name, cls, build_options(cls.Options, opts, f"manifest.{name}")))
    from .signing import load_signing_key

    return JobConfig(
        signing_key=load_signing_key(job.signing_key_file),
        path=path,
        job=job,
        source_type=src_type,
        source_cls=source_cls,
        source_options=source_options,
        sink_type=snk_type,
        sink_cls=sink_cls,
        sink_options=sink_options,
        writers=writers,
    )
