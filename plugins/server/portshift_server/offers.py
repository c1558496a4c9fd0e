"""What a customer may ask the service for: which source and sink types are offered, which of
their options a request may set, which credentials it must carry, and which options the operator
fixes. A request is turned into a job file (no secret) and a credential document (for the
worker's standard input) here, and nowhere else.

Why an allow-list: the job file options of a plugin include things a stranger must never choose
on the operator's machine, such as ``ca_bundle``, ``*_file`` paths that read server files,
``credential_chain`` (the server's own cloud identity) or an ``endpoint_url``. A request can only
set what its offer lists; operator settings come from the service configuration file.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portshift import ConfigError, Secret

from .bodies import TEXT as TEXT  # re-exported for openapi.py
from .destinations import Outbound

if TYPE_CHECKING:
    from .state_keys import StateKeyOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FIELD_TYPES = ("string", "integer", "number", "boolean")
#: Option names a request may never set, whatever the configuration says.
NEVER_USER_SETTABLE = re.compile(
    r"(_file$|^ca_bundle$|^credential_chain$|^application_default_credentials$|^anonymous$|"
    r"^endpoint_url$|^api_endpoint$|^base_url$|^signing_key)"
)
MAX_STRING = 2048
MAX_SECRET = 16 * 1024
MAX_INTEGER = 2**53
MAX_NUMBER = 1e15
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: names as the clouds define them, so a bad one is refused here and not echoed by a worker later
S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
S3_REGION = r"^[a-z]{2}(-[a-z0-9]+){1,3}-[0-9]{1,2}$"
AZURE_CONTAINER = r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
GCS_BUCKET = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[A-Za-z0-9][A-Za-z0-9._-]{0,63}){0,7}$")


class RequestError(ValueError):
    """A request the service refuses (HTTP 400). The message never contains a submitted value."""


@dataclass
class Field_:
    name: str
    kind: str = "string"
    required: bool = False
    label: str = ""
    pattern: str | None = None  #: a regular expression (Python and ECMAScript) the value must match
    hint: str = ""  #: what the pattern allows, for the refusal (never the value sent)


@dataclass
class Offer:
    """One offered source or sink type."""

    section: str  # "source" or "sink"
    type: str
    label: str
    fields: dict[str, Field_] = field(default_factory=dict)
    secrets: dict[str, bool] = field(default_factory=dict)  # name -> required
    fixed: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """For the page and GET /api/offers: names and kinds only, never the fixed values."""
        return {
            "type": self.type,
            "label": self.label,
            "fields": [
                {"name": f.name, "kind": f.kind, "required": f.required, "label": f.label or f.name} for f in self.fields.values()
            ],
            "secrets": [{"name": n, "required": r} for n, r in self.secrets.items()],
        }


_BUCKET_HINT = "3 to 63 lower-case letters, digits, '.' and '-' (the storage's own naming rules)"


def _builtin_offers(local_root: Path | None) -> dict[tuple[str, str], Offer]:
    offers = [
        Offer("source", "chorus", "Chorus by ZoomInfo", secrets={"token": True}),
        Offer(
            "sink",
            "s3",
            "Amazon S3",
            fields={
                "bucket": Field_("bucket", required=True, label="Bucket", pattern=S3_BUCKET, hint=_BUCKET_HINT),
                "prefix": Field_("prefix", label="Prefix"),
                "region": Field_(
                    "region", required=True, label="Region", pattern=S3_REGION, hint="a region name such as eu-central-1"
                ),
            },
            secrets={"access_key_id": True, "secret_access_key": True, "session_token": False},
            fixed={"credential_chain": False},
        ),
        Offer(
            "sink",
            "azure",
            "Azure Blob Storage",
            fields={
                "account_url": Field_(
                    "account_url", required=True, label="Account URL (https://<account>.blob.core.windows.net)"
                ),
                "container": Field_("container", required=True, label="Container", pattern=AZURE_CONTAINER, hint=_BUCKET_HINT),
                "prefix": Field_("prefix", label="Prefix"),
            },
            secrets={"sas": True},
        ),
        Offer(
            "sink",
            "gcs",
            "Google Cloud Storage",
            fields={
                "bucket": Field_("bucket", required=True, label="Bucket", pattern=GCS_BUCKET, hint=_BUCKET_HINT),
                "prefix": Field_("prefix", label="Prefix"),
            },
            secrets={"key": True},
            fixed={"application_default_credentials": False, "anonymous": False},
        ),
    ]
    if local_root is not None:
        offers.append(
            Offer(
                "sink",
                "local",
                "A folder on the server (trials)",
                fields={
                    "folder": Field_(
                        "folder",
                        label="Folder under the server's export root",
                        pattern=_FOLDER.pattern,
                        hint="letters, digits, '.', '_', '-' and '/' only, relative, at most 8 levels",
                    )
                },
            )
        )
    return {(o.section, o.type): o for o in offers}


@dataclass
class Catalogue:
    """The offers of this service, in the order the page shows them."""

    sources: dict[str, Offer]
    sinks: dict[str, Offer]
    local_root: Path | None = None
    transfers: int = 4
    outbound: Outbound = field(default_factory=Outbound)
    #: the operator's Ed25519 key (PEM file) every job signs its manifest with, or None
    #: the service's manifest signing key, kept in memory and handed to each worker with the
    #: credentials (``{"job": {"signing_key": ...}}`` on its credential channel)
    signing_key: Secret | None = None
    #: where the workers reach KMS for a customer's state key (state_keys.py)
    state_key: StateKeyOptions = field(default_factory=lambda: _state_key_options(None))

    def describe(self) -> dict[str, Any]:
        return {
            "sources": [o.describe() for o in self.sources.values()],
            "sinks": [o.describe() for o in self.sinks.values()],
            "state_key": {"providers": ["kms"] if self.state_key.offered() else []},
        }

    def offer(self, section: str, type_: Any) -> Offer:
        table = self.sources if section == "source" else self.sinks
        if not isinstance(type_, str) or type_ not in table:
            raise RequestError(f"{section}.type: must be one of {', '.join(table) or '(none offered)'}")
        return table[type_]


def load_catalogue(config_path: Path | None, local_root: Path | None, transfers: int = 4) -> Catalogue:
    """The built-in offers, changed by the operator's service configuration (TOML)::

    sources = ["chorus"]                 # offered source types, in order
    sinks = ["s3", "azure", "gcs"]       # offered sink types (local needs --local-root)

    [source.chorus.fixed]                # options set by the operator for every job
    ca_bundle = "/etc/portshift/chorus-ca.pem"

    [source.acme]                        # a source from another plugin
    label = "Acme Calls"
    fields = { region = "string" }       # options a request may set (string/integer/number/boolean)
    required = ["region"]
    secrets = { api_key = true }         # credentials a request carries (true = required)
    """
    builtin = _builtin_offers(local_root)
    doc: dict[str, Any] = {}
    if config_path is not None:
        try:
            doc = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--service-config {config_path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"--service-config {config_path} is not valid TOML: {e}") from None
    unknown = set(doc) - {"sources", "sinks", "source", "sink", "outbound", "state_key"}
    if unknown:
        raise ConfigError(
            f"--service-config: unknown keys {', '.join(sorted(unknown))} "
            "(valid: sources, sinks, source, sink, outbound, state_key)"
        )
    tables: dict[str, dict[str, Offer]] = {"source": {}, "sink": {}}
    for section in ("source", "sink"):
        configured = doc.get(section, {})
        if not isinstance(configured, dict):
            raise ConfigError(f"--service-config: [{section}] must be a table of [{section}.<type>] tables")
        default_names = [t for (s, t) in builtin if s == section]
        names = doc.get(section + "s", default_names)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"--service-config: {section}s must be a list of type names")
        for name in names:
            base = builtin.get((section, name))
            table = configured.get(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--service-config: [{section}.{name}] must be a table")
            if name == "local" and section == "sink" and local_root is None:
                raise ConfigError("--service-config offers the local sink, which needs --local-root")
            tables[section][name] = _offer(section, name, base, table)
        for name in configured:
            if name not in names:
                raise ConfigError(f"--service-config: [{section}.{name}] is configured but not in {section}s")
    outbound = Outbound.from_config(doc.get("outbound"))
    state_key = _state_key_options(doc.get("state_key"))
    return Catalogue(tables["source"], tables["sink"], local_root, transfers, outbound, state_key=state_key)


def _state_key_options(table: Any) -> StateKeyOptions:
    from .state_keys import StateKeyOptions  # it refuses requests with this module's RequestError

    return StateKeyOptions.from_config(table)


def _offer(section: str, name: str, base: Offer | None, table: dict[str, Any]) -> Offer:
    where = f"--service-config [{section}.{name}]"
    unknown = set(table) - {"label", "fields", "required", "secrets", "fixed"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    if base is None and "fields" not in table and "secrets" not in table:
        raise ConfigError(f"{where}: a type portshift-server does not know needs fields and/or secrets")
    offer = Offer(section, name, str(table.get("label", base.label if base else name)))
    if base is not None:
        offer.fields = dict(base.fields)
        offer.secrets = dict(base.secrets)
        offer.fixed = dict(base.fixed)
    if "fields" in table:
        fields = table["fields"]
        if not isinstance(fields, dict):
            raise ConfigError(f"{where}: fields must be a table of name = kind")
        required = table.get("required", [])
        offer.fields = {}
        for fname, kind in fields.items():
            if kind not in FIELD_TYPES or not NAME.match(fname):
                raise ConfigError(f"{where}: field {fname!r}: kind must be one of {', '.join(FIELD_TYPES)}")
            offer.fields[fname] = Field_(fname, kind, fname in required)
    if "secrets" in table:
        secrets = table["secrets"]
        if not isinstance(secrets, dict) or not all(isinstance(v, bool) and NAME.match(k) for k, v in secrets.items()):
            raise ConfigError(f"{where}: secrets must be a table of name = true/false (required)")
        offer.secrets = dict(secrets)
    fixed = table.get("fixed", {})
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}: fixed must be a table")
    offer.fixed.update(fixed)
    for fname in offer.fields:
        if NEVER_USER_SETTABLE.search(fname) and not (name == "local" and fname == "folder"):
            raise ConfigError(
                f"{where}: {fname!r} must not be settable by a request (it reads server files or "
                "chooses endpoints or the server's own identity); put it under fixed"
            )
        if fname in offer.fixed or fname in offer.secrets or fname == "type":
            raise ConfigError(f"{where}: {fname!r} is both a request field and a fixed option or secret")
    for sname in offer.secrets:
        if sname in offer.fixed:
            raise ConfigError(f"{where}: {sname!r} is a secret and cannot be fixed in the configuration")
    return offer
