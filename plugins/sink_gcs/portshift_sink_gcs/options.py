"""The ``[sink] type = "gcs"`` options."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from portshift import AllowedRegions, ConfigError, HttpsUrl, PluginOptions, Secret, Size, secret_field

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: GCS resumable uploads take chunks in multiples of 256 KiB (all but the last).
CHUNK_QUANTUM = 256 * KiB
DEFAULT_CHUNK_SIZE = 8 * MiB
MAX_CHUNK_SIZE = 1 * GiB
#: The public JSON API endpoint.
DEFAULT_ENDPOINT = "https://storage.googleapis.com"

# https://cloud.google.com/storage/docs/buckets#naming (dotted names may be up to 222 characters)
_BUCKET = re.compile(r"^(?=.{3,222}$)[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_KMS = re.compile(r"^projects/[^/\s]+/locations/[^/\s]+/keyRings/[^/\s]+/cryptoKeys/[^/\s]+$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^\d{6,20}$")
StorageClass = Literal["STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"]


def is_loopback_endpoint(url: str) -> bool:
    """True when ``url``'s host is a loopback IP literal (127.0.0.0/8 or ::1).

    Host *names* (even ``localhost``) do not count: a name can be made to resolve elsewhere.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GcsOptions(PluginOptions):
    """Google Cloud Storage: one object per file, in a bucket you own."""

    section = "sink"

    bucket: str = Field(description="the destination bucket (it must exist)")
    prefix: str = Field(default="", description="object name prefix inside the bucket, e.g. exports/chorus")
    storage_class: StorageClass | None = Field(
        default=None, description="storage class of each object (default: the bucket's default class)"
    )
    chunk_size: Size = Field(
        default=DEFAULT_CHUNK_SIZE,
        description="bytes per resumable-upload request, a multiple of 256 KiB (default 8 MiB); a file up to "
        "this size is stored in one request. Memory per transfer is about two chunks (one in flight, the next being read)",
    )
    kms_key_name: str | None = Field(
        default=None,
        description="Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) every object is encrypted "
        "with (CMEK); the bucket's Cloud Storage service agent needs Encrypter/Decrypter on it",
    )
    api_endpoint: HttpsUrl = Field(
        default=DEFAULT_ENDPOINT,
        description="JSON API endpoint, https only (default https://storage.googleapis.com); "
        "for Private Service Connect endpoints and local test servers",
    )
    ca_bundle: Path | None = Field(default=None, description="extra CA certificates (PEM) to trust, e.g. a proxy CA")
    project: str | None = Field(
        default=None, description="project id for messages and the read-back client (optional; never billed)"
    )
    key: Secret | None = secret_field(
        env="PORTSHIFT_GCS_KEY",
        required=False,
        description="service-account key (the JSON document) from PORTSHIFT_GCS_KEY or key_file",
    )
    key_file: Path | None = Field(default=None, description="a service-account JSON key file (read, never copied)")
    application_default_credentials: bool = Field(
        default=False,
        description="use Application Default Credentials (workload identity, attached service account, "
        "GOOGLE_APPLICATION_CREDENTIALS) instead of a key",
    )
    anonymous: bool = Field(
        default=False,
        description="send no credentials at all; for local test servers only: refused unless api_endpoint "
        "is a loopback IP address (https://127.0.0.1:PORT), so it can never reach real GCS",
    )
    allowed_regions: AllowedRegions = Field(
        default=None,
        description='glob patterns of bucket locations (e.g. ["eu", "europe-*", "eur4"]): before the first '
        "upload the sink reads the bucket's location from GCS and stops unless it matches one; needs "
        "storage.buckets.get (docs/permissions/gcs.md)",
    )
    request_retries: int = Field(
        default=3, ge=0, le=10, description="retries of one request (one chunk) on timeouts, 429 and 5xx"
    )
    connect_timeout: float = Field(default=20.0, gt=0, description="seconds to establish a connection")
    read_timeout: float = Field(default=120.0, gt=0, description="seconds to wait for a response")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET.match(v) or ".." in v or v.startswith("goog"):
            raise ValueError(
                f"{v[:70]!r} is not a valid bucket name (3-63 characters, 222 with dots: lowercase letters, "
                "digits, '-', '_' and '.', starting and ending with a letter or digit; the name only, no gs://)"
            )
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip().strip("/")
        if any(part in ("", ".", "..") for part in v.split("/") if v) or "\\" in v:
            raise ValueError("use '/'-separated names without empty, '.' or '..' parts")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must not contain control characters")
        if len(v.encode()) > 512:
            raise ValueError("too long (GCS object names are at most 1024 bytes)")
        return v

    @field_validator("chunk_size")
    @classmethod
    def _chunk_size(cls, size: int) -> int:
        if size <= 0 or size % CHUNK_QUANTUM or size > MAX_CHUNK_SIZE:
            raise ConfigError(
                f"[sink] chunk_size: {size} is not a multiple of 256 KiB between 256 KiB and 1 GiB",
                hint='GCS takes resumable chunks in multiples of 262144 bytes; e.g. "8MiB", the default',
            )
        return size

    @field_validator("kms_key_name")
    @classmethod
    def _kms(cls, v: str | None) -> str | None:
        if v is not None and not _KMS.match(v):
            raise ValueError("must look like projects/P/locations/L/keyRings/R/cryptoKeys/K (without /cryptoKeyVersions/N)")
        return v

    @field_validator("api_endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parts = urllib.parse.urlsplit(v)
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        if parts.path not in ("", "/"):
            raise ValueError("is the scheme and host only, e.g. https://storage.googleapis.com (the sink adds the API paths)")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("project")
    @classmethod
    def _project(cls, v: str | None) -> str | None:
        if v is not None and not _PROJECT.match(v):
            raise ValueError(f"{v[:40]!r} is not a project id or number")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> GcsOptions:
        chosen = [
            name
            for name, on in (
                ("a key (PORTSHIFT_GCS_KEY or key_file)", self.key is not None),
                ("application_default_credentials", self.application_default_credentials),
                ("anonymous", self.anonymous),
            )
            if on
        ]
        if not chosen:
            raise ConfigError(
                "[sink] no GCS credentials: give a service-account key or use Application Default Credentials",
                hint='set PORTSHIFT_GCS_KEY (the key JSON), or key_file = "/path/key.json", '
                "or application_default_credentials = true (workload identity)",
            )
        if len(chosen) > 1:
            raise ConfigError(f"[sink] choose one kind of credentials, not {' and '.join(chosen)}")
        if self.anonymous and not is_loopback_endpoint(self.api_endpoint):
            raise ConfigError(
                "[sink] anonymous = true is only for local test servers: api_endpoint must be a loopback "
                "IP address such as https://127.0.0.1:4443",
                hint="use a service-account key or application_default_credentials for a real bucket",
            )
        return self

    @field_validator("key")
    @classmethod
    def _key(cls, v: Secret | None) -> Secret | None:
        if v is not None:
            from .credentials import key_problem

            problem = key_problem(v)  # a malformed key is a config error now, before any connection
            if problem is not None:
                raise ValueError(problem)
        return v
