"""The [sink] section of a job file that uses ``type = "memo"``."""

from __future__ import annotations

from pathlib import Path

from portshift import ConfigError, PluginOptions, Secret, secret_field
from pydantic import Field, field_validator


class MemoOptions(PluginOptions):
    section = "sink"

    path: Path = Field(description="destination folder; created if missing")
    memo: str = Field(default="deliveries.jsonl", description="the memo file in that folder: one JSON line per stored file")
    memo_key: Secret | None = secret_field(
        env="PORTSHIFT_MEMO_KEY",
        required=False,
        description="signs every memo line (HMAC-SHA256); from PORTSHIFT_MEMO_KEY or memo_key_file",
    )
    memo_key_file: Path | None = Field(default=None, description="a file holding the memo key")

    @field_validator("memo")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or value.startswith(".") or "/" in value or "\\" in value:
            raise ConfigError("[sink] memo: must be a plain file name such as deliveries.jsonl")
        return value
