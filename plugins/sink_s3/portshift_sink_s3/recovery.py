"""``recover()`` for the S3 sink: abort the multipart uploads a killed run left open."""

from __future__ import annotations

import logging
from typing import Any

from portshift import PortshiftError, SinkError

from .client import refresh_masks
from .errors import s3_error
from .parts import StoreError

log = logging.getLogger("portshift.s3")


class UploadRecovery:
    """The crash-recovery half of :class:`~.sink.S3Sink` (it supplies the client and the calls)."""

    options: Any
    client: Any
    _chain_creds: Any
    _owner: dict[str, str]
    _call: Any
    _loc: Any
    _journal_end: Any

    def recover(self, pending: list[tuple[str, dict[str, str]]]) -> None:
        """Abort the multipart uploads an earlier, killed run of this job left open.

        Each entry is what :meth:`_put_multipart` journaled: ``{"bucket", "key", "upload_id"}``
        once CreateMultipartUpload answered, only ``{"bucket", "key"}`` (the intent) if the process
        died before that. An upload id is aborted as is; ``NoSuchUpload`` means it is gone already
        (completed, or aborted before the journal heard of it): fine. For an intent, the uploads
        open for exactly that key are listed and aborted (none: the process died before S3 created
        one). If listing is denied (``AccessDenied``: no ``s3:ListBucketMultipartUploads``), one
        warning names the permission and the lifecycle rule, and the entry is dropped: it never
        fails the job. Any other failure (``AccessDenied`` on the abort, a 5xx, no connection) is
        raised after trying every entry, so the core keeps the ones still open for the next run;
        the ones cleaned up here leave the journal at once.
        """
        refresh_masks(self._chain_creds)
        failed: list[PortshiftError] = []
        denied = 0
        for key, data in pending:
            upload_id, full_key, bucket = data.get("upload_id"), data.get("key"), data.get("bucket")
            if not full_key or bucket != self.options.bucket:
                # Not ours to act on (another format or bucket): leave it to the lifecycle rule.
                log.warning("ignoring a journal entry that is not an upload in s3://%s", self.options.bucket)
                self._journal_end(key)
                continue
            if upload_id:
                ids = [upload_id]
            else:
                try:
                    ids = self._open_uploads(full_key)
                except StoreError as e:
                    if getattr(e.error, "code", None) == "AccessDenied":
                        denied += 1
                        self._journal_end(key)
                    else:
                        failed.append(e.error)
                    continue
            errors = [err for u in ids if (err := self._abort_left(full_key, u)) is not None]
            if errors:
                failed.extend(errors)
                continue
            self._journal_end(key)
        if denied:
            log.warning(
                "could not look for multipart uploads a killed run may have left open in s3://%s (%d %s): "
                "listing them needs s3:ListBucketMultipartUploads (optional, recommended; "
                "docs/permissions/s3.md). Grant it, or have an AbortIncompleteMultipartUpload lifecycle rule "
                "on the bucket remove such uploads",
                self.options.bucket,
                denied,
                "key" if denied == 1 else "keys",
            )
        if len(failed) == 1:
            raise failed[0] from None
        if failed:
            raise SinkError(
                f"{len(failed)} multipart uploads left by a previous run could not be aborted, the first: {failed[0]}",
                retryable=True,
            ) from None

    def _open_uploads(self, full_key: str) -> list[str]:
        """The ids of the multipart uploads open for exactly ``full_key`` (ListMultipartUploads
        with ``Prefix=full_key``; uploads of longer keys that start with it are not ours)."""
        ids: list[str] = []
        marker: dict[str, str] = {}
        while True:
            try:
                resp = self.client.list_multipart_uploads(Bucket=self.options.bucket, Prefix=full_key, **self._owner, **marker)
            except Exception as e:  # noqa: BLE001 - every SDK failure is mapped at this boundary
                mapped = s3_error(e, "list multipart uploads", self._loc(full_key))
                raise StoreError(mapped) from None
            ids += [str(u["UploadId"]) for u in resp.get("Uploads", []) if u.get("Key") == full_key]
            key_marker, id_marker = resp.get("NextKeyMarker"), resp.get("NextUploadIdMarker")
            if not resp.get("IsTruncated") or not (key_marker or id_marker):
                return ids
            marker = {"KeyMarker": str(key_marker or ""), "UploadIdMarker": str(id_marker or "")}

    def _abort_left(self, full_key: str, upload_id: str) -> PortshiftError | None:
        """Abort an upload a previous run left; None when it is gone (now or before)."""
        try:
            self._call("abort multipart upload", full_key, self.client.abort_multipart_upload, UploadId=upload_id)
        except StoreError as e:
            if getattr(e.error, "code", None) != "NoSuchUpload":
                return e.error
            log.debug("multipart upload at %s is already gone", self._loc(full_key))
        else:
            log.info("aborted the multipart upload a previous run left open at %s", self._loc(full_key))
        return None
