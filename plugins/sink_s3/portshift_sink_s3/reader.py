"""The ``s3`` reader: reads an export back for ``portshift verify --store`` (never used by the sink).

It takes the same options as the sink, so the verify file's ``[store]`` section looks like the
job file's ``[sink]``, but it is meant for *separate, read-only* credentials
(``s3:ListBucket`` and ``s3:GetObject``, see docs/permissions/s3.md). The client is built the
same way (TLS policy, no environment endpoints, region guard, SDK loggers pinned).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.exceptions

from portshift import Reader

from .client import build_client, refresh_masks
from .errors import s3_error
from .options import S3Options, check_region_allowed

CHUNK = 1024 * 1024


class S3Reader(Reader):
    """Streams objects and lists keys under the configured prefix (read-only)."""

    Options = S3Options
    description = "reads an export back from S3 (ListBucket + GetObject), for portshift verify --store"

    def __init__(self, options: S3Options) -> None:
        super().__init__(options)
        self.options: S3Options = options
        check_region_allowed(options.region, options.allowed_regions)
        self.client, self._chain_creds = build_client(options)
        self._owner: dict[str, str] = {}
        if options.expected_bucket_owner:
            self._owner["ExpectedBucketOwner"] = options.expected_bucket_owner

    def location(self) -> str:
        return f"s3://{self.options.bucket}/{self.options.prefix}".rstrip("/")

    def _full(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.options.prefix}/{key}" if self.options.prefix else key

    def open(self, key: str) -> Iterator[bytes]:
        full = self._full(key)
        loc = f"s3://{self.options.bucket}/{full}"
        refresh_masks(self._chain_creds)
        try:
            resp = self.client.get_object(Bucket=self.options.bucket, Key=full, **self._owner)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise FileNotFoundError(loc) from None
            mapped = s3_error(e, "get object", loc)
        except Exception as e:  # noqa: BLE001 - mapped at the SDK boundary
            mapped = s3_error(e, "get object", loc)
        else:
            return self._stream(resp["Body"], loc)
        raise mapped from None

    def _stream(self, body: Any, loc: str) -> Iterator[bytes]:
        try:
            while True:
                try:
                    block = body.read(CHUNK)
                except Exception as e:  # noqa: BLE001
                    mapped = s3_error(e, "get object", loc)
                    raise mapped from None
                if not block:
                    return
                yield block
        finally:
            body.close()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._full(prefix)
        strip = len(self.options.prefix) + 1 if self.options.prefix else 0
        loc = f"s3://{self.options.bucket}/{base}"
        kwargs: dict[str, Any] = {"Bucket": self.options.bucket, "Prefix": base, **self._owner}
        while True:
            try:
                page = self.client.list_objects_v2(**kwargs)
            except Exception as e:  # noqa: BLE001
                mapped = s3_error(e, "list objects", loc)
                raise mapped from None
            for obj in page.get("Contents", []):
                yield str(obj["Key"])[strip:]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass
