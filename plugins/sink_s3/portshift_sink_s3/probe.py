"""``check()`` for the S3 sink: prove the bucket, its region, the credentials and the write
permission with the sink's own least-privilege calls, without creating an object."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

from portshift import ConfigError, PortshiftError, check_failure, require_allowed

from .client import RegionMismatch, refresh_masks
from .errors import s3_error
from .parts import StoreError

log = logging.getLogger("portshift.s3")

CHECK_KEY = ".portshift-check"
#: ``check()``'s conditional PutObject and AbortMultipartUpload name this key; nothing is created.
PROBE_KEY = ".portshift-probe"
#: the answers that prove the probe passed authorization: no such object / upload
_NO_OBJECT = frozenset({"NoSuchKey", "PreconditionFailed"})
_NO_UPLOAD = frozenset({"NoSuchUpload"})


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
        """Prove, with the sink's own least-privilege credentials and without creating anything,
        that the bucket exists in the configured region and accepts this identity's writes.

        A conditional PutObject (``s3:PutObject``) that can never be written: ``If-Match`` with
        an ETag no object has, on a probe name no object has, which S3 answers ``NoSuchKey``
        (404) or ``PreconditionFailed`` (412) only after it accepted the credentials, the
        region and the permission. Then AbortMultipartUpload (``s3:AbortMultipartUpload``) for
        an upload id that does not exist: ``NoSuchUpload``. Nothing is created, so a process
        killed mid-check leaves nothing behind (a real CreateMultipartUpload would leave an open
        upload that no journal knows: the job does not exist yet). Refused credentials or a
        missing permission are an :class:`AuthError`, a missing bucket a :class:`ConfigError`, a
        bucket in another region the region guard's error. With ``allowed_regions`` the bucket's
        region as S3 reports it (HeadBucket's ``x-amz-bucket-region``, present even when
        HeadBucket itself is denied) must match it. With ``check_write = true`` a small marker
        object is stored as well (which also proves KMS permissions with SSE-KMS).
        """
        refresh_masks(self._chain_creds)
        if self.options.allowed_regions is not None:
            self._check_bucket_region()
        probe = uuid.uuid4().hex[:12]
        full_key = self._full_key(f"{PROBE_KEY}-{probe}")
        for operation, call, extra, proof in (
            ("check (put object)", self.client.put_object, {"Body": b"", "IfMatch": f'"{probe}"'}, _NO_OBJECT),
            ("check (abort multipart upload)", self.client.abort_multipart_upload, {"UploadId": f"check-{probe}"}, _NO_UPLOAD),
        ):
            try:
                self._call(operation, full_key, call, **extra)
            except StoreError as e:
                if getattr(e.error, "code", None) in proof:
                    continue  # the answer that proves everything before it
                raise _check_error(e.error, self.location()) from None
            log.warning("%s: the store ignored the probe's condition; %s may now exist", operation, self._loc(full_key))
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
    """What ``check()`` raises: a missing bucket is a configuration error, the rest as the core
    classifies a failed check (:func:`portshift.check_failure`)."""
    if getattr(error, "code", None) == "NoSuchBucket":
        return ConfigError(
            f"[sink] bucket: {location} does not exist (S3 answered NoSuchBucket)",
            hint="check bucket, region and endpoint_url; the sink never creates buckets",
        )
    return check_failure(error)
