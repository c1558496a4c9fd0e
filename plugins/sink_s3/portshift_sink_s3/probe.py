"""``check()`` for the S3 sink: prove the bucket, its region, the credentials and the write
permission with the sink's own least-privilege calls, without creating an object."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from portshift import AuthError, ConfigError, FatalError, Interrupted, PortshiftError, require_allowed

from .client import RegionMismatch, refresh_masks
from .errors import s3_error
from .parts import StoreError

CHECK_KEY = ".portshift-check"
#: ``check()`` opens (and at once aborts) a multipart upload under this name: no object appears.
PROBE_KEY = ".portshift-probe"


class BucketProbe:
    """The ``check()`` half of :class:`~.sink.S3Sink` (it supplies the client and the calls)."""

    options: Any
    client: Any
    _chain_creds: Any
    _extra: dict[str, str]
    _owner: dict[str, str]
    _call: Any
    _abort: Any
    _full_key: Any
    _loc: Any
    _put_single: Any

    def location(self) -> str:  # pragma: no cover - S3Sink's
        raise NotImplementedError

    def check(self) -> None:
        """Prove, with the sink's own least-privilege credentials and without creating an object,
        that the bucket exists in the configured region and accepts this identity's writes.

        CreateMultipartUpload on a probe name (``s3:PutObject``), then AbortMultipartUpload
        (``s3:AbortMultipartUpload``): refused credentials or a missing permission are an
        :class:`AuthError`, a missing bucket a :class:`ConfigError`, a bucket in another region
        the region guard's error. With ``allowed_regions`` the bucket's region as S3 reports it
        (HeadBucket's ``x-amz-bucket-region``, present even when HeadBucket itself is denied)
        must match it. With ``check_write = true`` a small marker object is stored as well.
        """
        refresh_masks(self._chain_creds)
        if self.options.allowed_regions is not None:
            self._check_bucket_region()
        full_key = self._full_key(f"{PROBE_KEY}-{uuid.uuid4().hex[:12]}")
        try:
            created = self._call("check (create multipart upload)", full_key, self.client.create_multipart_upload, **self._extra)
        except StoreError as e:
            raise _check_error(e.error, self.location()) from None
        upload_id = created.get("UploadId")
        if upload_id and not self._abort(full_key, str(upload_id)):
            raise AuthError(
                "the probe upload could not be aborted",
                operation="check (abort multipart upload)",
                location=self._loc(full_key),
                hint="the sink needs s3:AbortMultipartUpload to clean up failed uploads (docs/permissions/s3.md)",
            )
        if self.options.check_write:
            body = b"portshift write check\n"
            self._put_single(
                self._full_key(CHECK_KEY), CHECK_KEY, body, hashlib.sha256(body).digest(), {"ContentType": "text/plain"}
            )

    def _check_bucket_region(self) -> None:
        """HeadBucket, for the region S3 reports; its status does not matter (without
        ``s3:ListBucket`` it is 403, and S3 still names the region)."""
        region: str | None = None
        try:
            resp = self.client.head_bucket(Bucket=self.options.bucket, **self._owner)
            region = (resp.get("ResponseMetadata", {}).get("HTTPHeaders") or {}).get("x-amz-bucket-region")
        except RegionMismatch as e:
            region = e.region
        except Exception as e:  # noqa: BLE001 - every SDK failure is mapped at this boundary
            response = getattr(e, "response", None)
            meta = response.get("ResponseMetadata", {}) if isinstance(response, dict) else {}
            region = (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region")
            if region is None:
                raise _check_error(s3_error(e, "check (head bucket)", self.location()), self.location()) from None
        # no header at all (some S3-compatible stores): the configured region, which every
        # request is signed for, is what stands
        require_allowed(
            region or self.options.region, self.options.allowed_regions, what="the bucket's region", location=self.location()
        )
        if region and region != self.options.region:
            raise s3_error(RegionMismatch(region, 200), "check (head bucket)", self.location())


def _check_error(error: PortshiftError, location: str) -> PortshiftError:
    """What ``check()`` raises for a failed probe: a missing bucket is a configuration error;
    refused credentials and region answers stay as mapped (AuthError); anything else stops the
    run as well (a store that cannot be written to now will not be written to during it)."""
    code = getattr(error, "code", None)
    if code == "NoSuchBucket":
        return ConfigError(
            f"[sink] bucket: {location} does not exist (S3 answered NoSuchBucket)",
            hint="check bucket, region and endpoint_url; the sink never creates buckets",
        )
    if isinstance(error, AuthError | ConfigError | FatalError | Interrupted):
        return error  # an interrupt stays one: the run stops as asked, exit 130
    if getattr(error, "status", None) == 403:
        return AuthError(str(error))
    return FatalError(str(error))
