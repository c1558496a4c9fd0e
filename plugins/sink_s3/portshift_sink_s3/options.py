"""The ``[sink]`` section for ``type = "s3"``: what can be configured and how it is checked.

Everything here is validated before a client exists, so a bad option never reaches the network:
an ``http://`` endpoint, a part size S3 would refuse, a region outside ``allowed_regions``, or a
credential set that is incomplete or ambiguous are all :class:`portshift.errors.ConfigError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from portshift import AllowedRegions, ConfigError, HttpsUrl, PluginOptions, Secret, Size, require_allowed, secret_field

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: S3's own limits on multipart uploads.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MiB

ENV_ACCESS_KEY_ID = "PORTSHIFT_AWS_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "PORTSHIFT_AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a variable name
ENV_SESSION_TOKEN = "PORTSHIFT_AWS_SESSION_TOKEN"  # noqa: S105 - a variable name

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_STORAGE_CLASS = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class S3Options(PluginOptions):
    """Options of the ``s3`` sink (the ``[sink]`` section of a job file)."""

    section = "sink"

    bucket: str = Field(description="bucket name")
    prefix: str = Field(default="", description="key prefix inside the bucket (no leading or trailing /)")
    region: str = Field(
        description="the bucket's region, e.g. eu-central-1; requests are signed for it, so S3 refuses them "
        "if the bucket lives elsewhere"
    )
    endpoint_url: HttpsUrl | None = Field(default=None, description="https:// endpoint of an S3-compatible store; AWS when unset")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="bucket in the host name (virtual) or in the path; auto lets botocore choose"
    )
    sse: Literal["AES256", "aws:kms"] | None = Field(
        default=None, description="server-side encryption: AES256 (SSE-S3) or aws:kms (SSE-KMS)"
    )
    kms_key_id: str | None = Field(default=None, description='KMS key id/ARN/alias for sse = "aws:kms"')
    storage_class: str | None = Field(default=None, description="e.g. STANDARD, STANDARD_IA, GLACIER_IR")
    expected_bucket_owner: str | None = Field(
        default=None,
        description="12-digit AWS account id that must own the bucket; S3 refuses every request otherwise",
    )
    part_size: Size = Field(
        default=DEFAULT_PART_SIZE,
        description="bytes per request: an artifact up to this size is one PUT, a larger one a multipart "
        'upload of parts this big (5 MiB to 5 GiB; "8MiB" is accepted)',
    )
    max_concurrency: int = Field(
        default=4,  # measured: benchmarks/README.md, "S3: portshift run vs rclone vs boto3"
        ge=1,
        le=32,
        description="parts of one artifact uploaded at the same time; memory per transfer is at most about "
        "part_size x (max_concurrency + 1) plus one source chunk",
    )
    ca_bundle: Path | None = Field(default=None, description="extra CA certificates (PEM) to trust besides the system store")
    allowed_regions: AllowedRegions = Field(
        default=None,
        description='glob patterns (e.g. ["eu-*"]): refuse to start when region matches none; S3 confirms the '
        "bucket is in region on every request (and check() asks S3 where the bucket is)",
    )
    check_write: bool = Field(
        default=False,
        description="`portshift check` writes a small marker object <prefix>/.portshift-check (it stays: "
        "the sink never deletes); without it, check contacts nothing",
    )
    credential_chain: bool = Field(
        default=False,
        description="use the standard AWS credential chain (AWS_* variables, shared files, SSO, web "
        "identity, container and instance roles) instead of a static key pair",
    )
    access_key_id: Secret | None = secret_field(env=ENV_ACCESS_KEY_ID, required=False)
    access_key_id_file: Path | None = None
    secret_access_key: Secret | None = secret_field(env=ENV_SECRET_ACCESS_KEY, required=False)
    secret_access_key_file: Path | None = None
    session_token: Secret | None = secret_field(env=ENV_SESSION_TOKEN, required=False)
    session_token_file: Path | None = None

    @field_validator("part_size")
    @classmethod
    def _part_size(cls, size: int) -> int:
        if size < MIN_PART_SIZE:
            raise ConfigError(f"[sink] part_size: {size} bytes is below S3's minimum part size of 5 MiB ({MIN_PART_SIZE})")
        if size > MAX_PART_SIZE:
            raise ConfigError(f"[sink] part_size: {size} bytes is above S3's maximum part size of 5 GiB")
        return size

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.match(value) or ".." in value:
            raise ConfigError(
                f"[sink] bucket: {value[:70]!r} is not a valid bucket name",
                hint="3-63 characters: lower-case letters, digits, '.', '-'",
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip("/")
        if "//" in value or any(seg in {".", ".."} for seg in value.split("/")):
            raise ConfigError("[sink] prefix: empty, '.' or '..' path segments are not allowed")
        if len(value.encode()) > 512:
            raise ConfigError("[sink] prefix: longer than 512 bytes")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ConfigError(f"[sink] region: {value[:70]!r} is not a region name such as eu-central-1")
        return value

    @field_validator("storage_class")
    @classmethod
    def _storage_class(cls, value: str | None) -> str | None:
        if value is not None and not _STORAGE_CLASS.match(value):
            raise ConfigError(f"[sink] storage_class: {value[:70]!r} is not a storage class such as STANDARD_IA")
        return value

    @field_validator("expected_bucket_owner")
    @classmethod
    def _owner(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d{12}", value):
            raise ConfigError("[sink] expected_bucket_owner: expected a 12-digit AWS account id")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> S3Options:
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise ConfigError('[sink] kms_key_id is only used with sse = "aws:kms"')
        static = [n for n in ("access_key_id", "secret_access_key", "session_token") if getattr(self, n) is not None]
        if self.credential_chain and static:
            raise ConfigError(
                f"[sink] credential_chain = true, but {', '.join(static)} is set as well",
                hint=f"use one or the other: unset {ENV_ACCESS_KEY_ID}/{ENV_SECRET_ACCESS_KEY}/"
                f"{ENV_SESSION_TOKEN} (and the *_file options), or drop credential_chain",
            )
        if not self.credential_chain:
            if self.access_key_id is None and self.secret_access_key is None:
                raise ConfigError(
                    "[sink] no S3 credentials",
                    hint=f"set {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY} (or access_key_id_file and "
                    "secret_access_key_file), or credential_chain = true for roles and the AWS_* variables",
                )
            if self.access_key_id is None or self.secret_access_key is None:
                missing = "access_key_id" if self.access_key_id is None else "secret_access_key"
                raise ConfigError(
                    f"[sink] {missing}: the credential is missing (the other half of the key pair is set)",
                    hint=f"set {ENV_ACCESS_KEY_ID if missing == 'access_key_id' else ENV_SECRET_ACCESS_KEY} or {missing}_file",
                )
        check_region_allowed(self.region, self.allowed_regions)
        return self


def check_region_allowed(region: str, allowed: list[str] | None) -> None:
    """Raise ConfigError unless ``region`` matches one of the ``allowed`` glob patterns (the
    core's :func:`portshift.require_allowed`, at config time: nothing was sent)."""
    require_allowed(region, allowed, what="[sink] region", config_time=True)
