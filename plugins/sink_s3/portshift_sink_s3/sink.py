"""The ``s3`` sink: one PutObject for an artifact that fits in one part, a multipart upload
otherwise; every request carries the SHA-256 of its bytes and S3's answer is compared with it.

Write-only during an export: the only S3 operations an upload calls are PutObject,
CreateMultipartUpload, UploadPart, CompleteMultipartUpload and AbortMultipartUpload. No get, no
head, no delete, no object listing.

A multipart upload is recorded in the core's sink journal (the job's state DB) from just before
CreateMultipartUpload until it was completed or aborted: first the intent (bucket and key), then,
as soon as S3 answered, the upload id. :meth:`S3Sink.recover` aborts what a killed process left
there: an entry with an upload id by that id; an entry without one (the process died between the
two journal writes) by asking S3 which uploads are open for exactly that key
(ListMultipartUploads, the one read the sink ever makes; without ``s3:ListBucketMultipartUploads``
it warns and leaves such an upload to the bucket's lifecycle rule).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, ClassVar

from portshift import (
    Backoff,
    HashingStream,
    InFlight,
    IntegrityError,
    PutResult,
    ResumableUpload,
    Sink,
    SinkError,
    call_with_retries,
)

from .client import build_client, refresh_masks
from .errors import s3_error
from .options import MAX_PARTS, S3Options, check_region_allowed
from .parts import READ_SIZE, Part, StoreError, b64, content_type_args, etag_of, read_part, send_buffer, version_of
from .probe import BucketProbe
from .recovery import UploadRecovery
from .resuming import UploadResume

_Part = Part  # the name the plugin's tests use
_StoreError = StoreError

log = logging.getLogger("portshift.s3")


class S3Sink(BucketProbe, UploadRecovery, UploadResume, Sink):
    """Amazon S3 or an S3-compatible store; streaming, checksum-verified, write-only."""

    Options = S3Options
    description = "Amazon S3 / S3-compatible: streaming multipart, SHA-256 verified by S3, write-only"
    #: Retries of one S3 call (botocore's own are off, see client.py): 3 attempts as botocore's
    #: standard mode made, waiting on the job's cancel event; a server's Retry-After wins.
    retry_policy: ClassVar[Backoff] = Backoff(base=0.5, cap=20.0, attempts=3)

    def __init__(self, options: S3Options) -> None:
        super().__init__(options)
        self.options: S3Options = options
        # Residency first: nothing is built, resolved or sent for a region outside allowed_regions.
        check_region_allowed(options.region, options.allowed_regions)
        self.client, self._chain_creds = build_client(options, max_pool_connections=max(10, options.max_concurrency * 8))
        self._extra: dict[str, str] = {}
        if options.sse:
            self._extra["ServerSideEncryption"] = options.sse
        if options.kms_key_id:
            self._extra["SSEKMSKeyId"] = options.kms_key_id
        if options.storage_class:
            self._extra["StorageClass"] = options.storage_class
        self._owner: dict[str, str] = {}
        if options.expected_bucket_owner:
            self._owner["ExpectedBucketOwner"] = options.expected_bucket_owner
        self._backoff = self.retry_policy

    # --- Sink API ---------------------------------------------------------------------------
    def location(self) -> str:
        return f"s3://{self.options.bucket}/{self.options.prefix}".rstrip("/")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing idle connections cannot fail meaningfully
            pass

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        full_key = self._full_key(key)
        if size is not None and size > self.options.part_size * MAX_PARTS:
            raise SinkError(
                f"{size} bytes need more than S3's {MAX_PARTS} parts of {self.options.part_size} bytes",
                operation="put object",
                location=self._loc(full_key),
                retryable=False,
                hint="raise part_size in [sink]",
            )
        refresh_masks(self._chain_creds)
        resumable = ResumableUpload(
            self.journal if size is None or size > self.options.part_size else None,
            key,
            {"bucket": self.options.bucket, "key": full_key},
            stream,
            self.options.part_size,
        )
        # Fill one part; if the stream ends within it (the next read gives nothing), it is one
        # PutObject whose S3-verified SHA-256 is the stream's own, i.e. the manifest's.
        first = read_part(stream, self.options.part_size)
        lookahead = read_part(stream, READ_SIZE) if len(first) == self.options.part_size else b""
        if not lookahead:
            if not stream.finished or stream.bytes_read != len(first):
                raise SinkError(
                    "the stream did not end where it said", operation="put object", location=self._loc(full_key), retryable=False
                )
            return self._put_single(full_key, key, first, stream.sha256_digest(), content_type_args(stream.content_type))
        # Hand the buffers over in a list, so that no frame keeps the first part alive while the
        # rest of the artifact is uploaded (memory stays at one part per part in flight).
        seed = [first, lookahead]
        del first, lookahead
        return self._put_multipart(full_key, key, stream, seed, resumable)

    # --- helpers ----------------------------------------------------------------------------
    def _full_key(self, key: str) -> str:
        key = key.lstrip("/")
        if not key:
            raise SinkError("empty key", operation="put object", retryable=False)
        full = f"{self.options.prefix}/{key}" if self.options.prefix else key
        if len(full.encode()) > 1024:
            raise SinkError(
                "key longer than S3's 1024 bytes", operation="put object", location=self._loc(full[:100]), retryable=False
            )
        return full

    def _loc(self, full_key: str) -> str:
        return f"s3://{self.options.bucket}/{full_key}"

    def _call(self, operation: str, full_key: str, fn: Any, **kwargs: Any) -> dict[str, Any]:
        """One S3 call, retried through :func:`portshift.call_with_retries` when the mapped error
        is retryable. Every wait is on the job's cancel event (Ctrl-C ends it at once with
        :class:`~portshift.Interrupted`); botocore's own retries are off (client.py)."""

        def once() -> dict[str, Any]:
            try:
                return fn(Bucket=self.options.bucket, Key=full_key, **self._owner, **kwargs)  # type: ignore[no-any-return]
            except Exception as e:  # noqa: BLE001 - every SDK failure is mapped at this boundary
                mapped = s3_error(e, operation, self._loc(full_key))
            raise _StoreError(mapped)

        return call_with_retries(
            once,
            backoff=self._backoff,
            should_retry=lambda e: isinstance(e, _StoreError) and e.error.retryable,
            hint=lambda e: getattr(getattr(e, "error", None), "retry_after", None),
            cancel=self.cancel,
            on_retry=lambda n, e, delay: log.debug("%s: %s; retry %d in %.1fs", operation, e, n, delay),
            what=operation,
        )

    def _put_single(
        self, full_key: str, key: str, body: bytes | bytearray, digest: bytes, headers: dict[str, str] | None = None
    ) -> PutResult:
        ours = b64(digest)
        try:
            resp = self._call(
                "put object",
                full_key,
                self.client.put_object,
                Body=send_buffer(body),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=ours,
                **self._extra,
                **(headers or {}),
            )
        except _StoreError as e:
            raise e.error from None
        theirs = resp.get("ChecksumSHA256")
        if theirs != ours:
            # S3 verifies the header before storing, so this means the answer was altered or the
            # store ignores checksums. The object may be visible; it is never recorded as done.
            raise IntegrityError(
                f"put object: S3 confirmed SHA-256 {theirs or 'nothing'} for {self._loc(full_key)}, "
                f"portshift sent {ours}; the object is not recorded as exported"
            )
        return PutResult(
            key=key,
            size=len(body),
            checksums={"sha256": digest.hex(), "s3-sha256": theirs},
            version=version_of(resp),
            verified="S3 checked SHA-256 of 1 part (the whole object: the manifest SHA-256)",
        )

    def _put_multipart(
        self, full_key: str, key: str, stream: HashingStream, seed: list[bytes | bytearray], resumable: ResumableUpload
    ) -> PutResult:
        loc = self._loc(full_key)
        # From before CreateMultipartUpload until the upload is completed or aborted, it is in the
        # job's journal: if this process dies (SIGKILL, power loss), the next run of the job aborts
        # it (recover()). First the intent (bucket, key): a death between S3's answer and the
        # second write leaves an entry the next run resolves by listing the uploads of that key.
        # Then the upload id. Nothing secret is journaled: an upload id only names the upload
        # (every request with it is still signed).
        journal = self.journal
        entry = {"bucket": self.options.bucket, "key": full_key}
        if journal is not None:
            journal.begin(key, entry)  # fails (e.g. disk full) before anything exists in S3
        try:
            created = self._call(
                "create multipart upload",
                full_key,
                self.client.create_multipart_upload,
                ChecksumAlgorithm="SHA256",
                **self._extra,
                **content_type_args(stream.content_type),
            )
        except _StoreError as e:
            self._journal_end(key)
            raise e.error from None
        upload_id = created.get("UploadId")
        if not upload_id:
            self._journal_end(key)
            raise SinkError("S3 returned no upload id", operation="create multipart upload", location=loc)
        if journal is not None:
            try:
                journal.begin(key, {**entry, "upload_id": str(upload_id)})
            except BaseException:
                if self._abort(full_key, upload_id):  # not journaled: do not leave it behind
                    self._journal_end(key)  # else the intent stays, and the next run finds it
                raise
        resumable.entry["upload_id"] = str(upload_id)
        # the list itself is handed on (no local name here keeps the first part alive meanwhile)
        return self._send_parts(full_key, key, stream, upload_id, seed, [], resumable)

    def _send_parts(
        self,
        full_key: str,
        key: str,
        stream: HashingStream,
        upload_id: str,
        seed: list[bytes | bytearray],
        stored: list[_Part],
        resumable: ResumableUpload,
    ) -> PutResult:
        """Upload the rest of the stream as parts after ``stored`` (the parts already in S3), then
        complete the upload; abort it on any failure (unless it is kept to be continued)."""
        loc = self._loc(full_key)
        # At most max_concurrency parts in flight (worker threads), plus the one being read.
        inflight: InFlight[_Part] = InFlight(self.options.max_concurrency, "portshift-s3-part")
        try:
            number = len(stored)
            piece, carry = seed
            seed.clear()
            if not piece:
                piece = read_part(stream, self.options.part_size)
            while piece:
                number += 1
                if number > MAX_PARTS:
                    raise _StoreError(
                        SinkError(
                            f"more than {MAX_PARTS} parts: raise part_size",
                            operation="upload part",
                            location=loc,
                            retryable=False,
                        )
                    )
                inflight.submit(self._upload_part, full_key, upload_id, number, piece, resumable)
                piece = b""  # drop the reference before filling the next part
                piece = read_part(stream, self.options.part_size, carry)
                carry = b""
            parts = stored + sorted(inflight.finish(), key=lambda p: p.number)
            total = sum(p.size for p in parts)
            if not stream.finished or total != stream.bytes_read:
                raise _StoreError(
                    SinkError(
                        f"sent {total} bytes in parts, the stream had {stream.bytes_read}",
                        operation="upload part",
                        location=loc,
                        retryable=False,
                    )
                )
            resp = self._call(
                "complete multipart upload",
                full_key,
                self.client.complete_multipart_upload,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.number, "ETag": p.etag, "ChecksumSHA256": p.checksum} for p in parts]
                },
            )
        except BaseException as exc:
            inflight.close()  # in-flight parts end before the abort, or they could outlive it
            if resumable.kept(exc, self.cancel, loc):  # stopped with parts stored: the next run continues it
                raise
            if self._abort(full_key, upload_id):
                self._journal_end(key)  # else it stays journaled, and the next run aborts it
            if isinstance(exc, _StoreError):
                raise exc.error from None
            raise  # the stream's own error (a source failure, an interrupt) goes up unchanged
        finally:
            inflight.close()
        self._journal_end(key)  # completed: nothing left to abort
        return self._completed(full_key, key, parts, total, resp)

    def _journal_end(self, key: str) -> None:
        if self.journal is None:
            return
        try:
            self.journal.end(key)
        except Exception as e:  # noqa: BLE001 - a stale entry only costs one harmless abort next run
            log.warning("could not record the end of an upload in the job state (%s)", type(e).__name__)

    def _upload_part(
        self, full_key: str, upload_id: str, number: int, body: bytes | bytearray, resumable: ResumableUpload | None = None
    ) -> _Part:
        digest = hashlib.sha256(body).digest()
        ours = b64(digest)
        resp = self._call(
            f"upload part {number}",
            full_key,
            self.client.upload_part,
            UploadId=upload_id,
            PartNumber=number,
            Body=send_buffer(body),
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=ours,
        )
        theirs = resp.get("ChecksumSHA256")
        if theirs != ours:
            raise _StoreError(
                IntegrityError(
                    f"upload part {number}: S3 confirmed SHA-256 {theirs or 'nothing'}, portshift sent {ours} "
                    f"for {self._loc(full_key)}; the upload was aborted"
                )
            )
        part = _Part(number=number, etag=etag_of(resp) or "", checksum=theirs, digest=digest, size=len(body))
        if resumable is not None:
            resumable.confirmed(number - 1, f"{theirs} {part.etag}")
        return part

    def _completed(self, full_key: str, key: str, parts: list[_Part], total: int, resp: dict[str, Any]) -> PutResult:
        composite = f"{b64(hashlib.sha256(b''.join(p.digest for p in parts)).digest())}-{len(parts)}"
        verified = f"S3 checked SHA-256 of each of {len(parts)} parts"
        theirs = resp.get("ChecksumSHA256")
        if theirs:
            base, _, count = str(theirs).partition("-")
            if base != composite.split("-")[0] or (count and count != str(len(parts))):
                # The upload is complete: the object is visible but never recorded as exported.
                raise IntegrityError(
                    f"complete multipart upload: S3 confirmed composite SHA-256 {theirs}, portshift expected "
                    f"{composite} for {self._loc(full_key)}; the object is not recorded as exported"
                )
            verified += "; composite SHA-256 confirmed by S3"
        else:
            verified += "; the store returned no composite checksum"
        return PutResult(
            key=key, size=total, checksums={"s3-sha256-composite": composite}, version=version_of(resp), verified=verified
        )

    def _abort(self, full_key: str, upload_id: str) -> bool:
        """Abort an upload; True when it is gone (aborted now or before)."""
        try:
            self._call("abort multipart upload", full_key, self.client.abort_multipart_upload, UploadId=upload_id)
        except _StoreError as e:
            if getattr(e.error, "code", None) == "NoSuchUpload":
                # botocore retried an abort whose answer was lost: the first attempt removed it.
                log.debug("multipart upload at %s was already aborted", self._loc(full_key))
                return True
            # Never hide the original failure behind this one; say what remains and how it goes away.
            log.warning(
                "could not abort multipart upload at %s (%s); the next run of this job tries again, and an "
                "AbortIncompleteMultipartUpload lifecycle rule on the bucket removes it",
                self._loc(full_key),
                e.error,
            )
            return False
        return True


__all__ = ["S3Options", "S3Sink"]
