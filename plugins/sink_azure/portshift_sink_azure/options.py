"""The ``[sink] type = "azure"`` options."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ModelWrapValidatorHandler, PrivateAttr, field_validator, model_validator

from portshift import ConfigError, HttpsUrl, PluginOptions, Secret, Size, refuse_unverifiable, secret_field

from .sas import READ, WRITE, inspect_sas, warn

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_BLOCK_SIZE = 8 * MiB
MIN_BLOCK_SIZE = 1 * MiB
#: Azure's limit for one Put Block (service version 2019-12-12 and later).
MAX_BLOCK_SIZE = 4000 * MiB
#: Azure's limit of committed blocks per blob.
MAX_BLOCKS = 50_000

_CONTAINER = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
_REGION = re.compile(r"^[a-z0-9]+$")

#: The section a reader's options come from (``portshift verify --store``): the same keys as
#: ``[sink]``, but the SAS is checked for reading (read + list) instead of writing.
READ_SECTION = "store"


def normalize_region(name: str) -> str:
    """``"West Europe"`` -> ``"westeurope"`` (Azure's programmatic region names)."""
    return re.sub(r"[\s_-]+", "", name.strip().lower())


class AzureOptions(PluginOptions):
    """Azure Blob Storage: one block blob per file, in a container you own."""

    section = "sink"

    account_url: HttpsUrl = Field(
        description="the blob endpoint, https://<account>.blob.core.windows.net (no SAS, no query string)"
    )
    container: str = Field(description="the destination container (it must exist)")
    prefix: str = Field(default="", description="blob name prefix inside the container, e.g. exports/chorus")
    block_size: Size = Field(
        default=DEFAULT_BLOCK_SIZE,
        description="bytes per block (1 MiB to 4000 MiB; default 8 MiB); a file up to this size is one Put Blob. "
        "Memory per transfer is about block_size x (max_concurrency + 1)",
    )
    max_concurrency: int = Field(
        default=2,
        ge=1,
        le=32,
        description="blocks of one file uploaded at the same time, while the next block is read",
    )
    access_tier: Literal["Hot", "Cool", "Cold", "Archive"] | None = Field(
        default=None, description="access tier set on each blob (default: the account's default tier)"
    )
    encryption_scope: str | None = Field(
        default=None, description="encryption scope (customer-managed keys) every blob is written with"
    )
    ca_bundle: Path | None = Field(default=None, description="extra CA certificates (PEM) to trust, e.g. a proxy CA")
    region: str | None = Field(
        default=None,
        description="the storage account's region as you know it (e.g. westeurope), recorded only: a SAS "
        "cannot read the account's location, so portshift cannot confirm it",
    )
    allowed_regions: list[str] | None = Field(
        default=None,
        description="refused for Azure: a SAS cannot learn where the storage account is, so portshift cannot "
        "enforce an allow-list (use an Azure Policy 'Allowed locations' assignment; see the README)",
    )
    api_version: str | None = Field(
        default=None, description="storage service API version to send (default: the SDK's); e.g. for Azurite"
    )
    request_retries: int = Field(
        default=3, ge=0, le=10, description="retries of one request (one block) on timeouts, 5xx and throttling"
    )
    connect_timeout: float = Field(default=20.0, gt=0, description="seconds to establish a connection")
    read_timeout: float = Field(default=120.0, gt=0, description="seconds to wait for a response")
    sas: Secret | None = secret_field(
        env="PORTSHIFT_AZURE_SAS",
        description="SAS token (sv=...&sig=...) with create+write on the container; from PORTSHIFT_AZURE_SAS or sas_file",
    )
    sas_file: Path | None = Field(default=None, description="a file holding the SAS token")

    @field_validator("account_url")
    @classmethod
    def _account_url(cls, v: str) -> str:
        parts = urllib.parse.urlsplit(v)
        if parts.query or parts.fragment or "?" in v:
            # never echo the value: it probably holds a SAS
            raise ConfigError(
                "[sink] account_url must not carry a query string (a SAS in the job file is refused)",
                hint="put only https://<account>.blob.core.windows.net in account_url and the SAS token "
                "in PORTSHIFT_AZURE_SAS or sas_file",
            )
        return v.rstrip("/")

    @field_validator("container")
    @classmethod
    def _container(cls, v: str) -> str:
        if v in ("$root", "$web"):
            return v
        if not _CONTAINER.match(v):
            raise ConfigError(
                f"[sink] container {v[:70]!r} is not a valid container name",
                hint="3-63 characters: lowercase letters, digits and single hyphens, starting with a letter or digit",
            )
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip().strip("/")
        if "\\" in v or any(part in ("", ".", "..") for part in v.split("/") if v):
            raise ConfigError("[sink] prefix: use '/'-separated names without empty, '.' or '..' parts")
        if len(v) > 512:
            raise ConfigError("[sink] prefix is too long (Azure blob names are at most 1024 characters)")
        return v

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, size: int) -> int:
        if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE:
            raise ConfigError(
                f"[sink] block_size {size} is out of range",
                hint="between 1 MiB and 4000 MiB (Azure's limit for one block); 8 MiB is a good default",
            )
        return size

    @field_validator("encryption_scope")
    @classmethod
    def _scope(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9]{3,63}", v):
            raise ConfigError("[sink] encryption_scope: 3-63 letters and digits")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is None:
            return None
        r = normalize_region(v)
        if not _REGION.match(r):
            raise ConfigError(f"[sink] region {v[:40]!r} is not a region name such as westeurope")
        return r

    #: "write" for ``[sink]``, "read" for ``[store]`` (verify --store); set from the section.
    _role: str = PrivateAttr(default=WRITE)
    _section: str = PrivateAttr(default="sink")

    @property
    def role(self) -> str:
        """What the SAS was checked for: ``"write"`` (the sink) or ``"read"`` (the reader)."""
        return self._role

    @property
    def section_name(self) -> str:
        return self._section

    @model_validator(mode="wrap")
    @classmethod
    def _check_sas_for_its_section(cls, data: Any, handler: ModelWrapValidatorHandler[AzureOptions]) -> AzureOptions:
        """The SAS checks depend on who uses the options: ``[sink]`` needs create/write, ``[store]``
        (``portshift verify --store``) needs read/list and is warned about anything that writes.
        The core passes the section as ``__section__``; options built without it are the sink's."""
        section = data.get("__section__", cls.section) if isinstance(data, dict) else cls.section
        options = handler(data)
        if not isinstance(options, AzureOptions):  # pragma: no cover - pydantic returns the model
            return options
        options._section = str(section)
        options._role = READ if section == READ_SECTION else WRITE
        if options.sas is not None:
            info = inspect_sas(options.sas, role=options._role, section=options._section)
            # a scope bound into the token matters for writes only
            if options._role == WRITE and info.encryption_scope and info.encryption_scope != options.encryption_scope:
                raise ConfigError(
                    f"[{section}] the SAS is bound to encryption scope {info.encryption_scope!r} (ses) but "
                    f"encryption_scope is {options.encryption_scope!r}",
                    hint=f'set encryption_scope = "{info.encryption_scope}"',
                )
            warn(info, options._section)
        return options

    @model_validator(mode="after")
    def _checks(self) -> AzureOptions:
        refuse_unverifiable(
            self.allowed_regions,
            store="Azure Blob Storage",
            why="no data-plane API tells a SAS holder the storage account's location (Get Account "
            "Information returns only the SKU and account kind), so the region cannot be confirmed",
            hint="remove allowed_regions and enforce residency on the account itself: an Azure Policy "
            "'Allowed locations' assignment and a locally or zone-redundant SKU (plugins/sink_azure/README.md)",
        )
        return self
