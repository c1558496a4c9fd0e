"""``resume()`` for the S3 sink: continue a multipart upload a stopped worker left mid-file.

The journal entry names the upload (bucket, key, upload id) and the SHA-256 and ETag of each part
stored in a row from the first. S3 is asked which parts it holds (ListParts: needs
``s3:ListMultipartUploadParts``); each journaled part must be there with the same size, ETag and
SHA-256 (a store that lists no part checksums, such as moto, is held to the size and ETag). Then the source sends only the rest,
and the upload goes on from the next part number; parts S3 holds beyond the journaled ones (sent
out of order before the crash) are sent again under the same numbers, which replaces them.
"""

from __future__ import annotations

import base64
from typing import Any

from portshift import Continuation, PutResult, ResumableUpload, ResumeRefused

from .client import refresh_masks
from .errors import s3_error
from .parts import Part


class UploadResume:
    """Mixed into :class:`~.sink.S3Sink` (which supplies the client and the part loop)."""

    options: Any
    client: Any
    journal: Any
    _chain_creds: Any
    _owner: dict[str, str]
    _full_key: Any
    _loc: Any
    _send_parts: Any

    def resume(self, key: str, continuation: Continuation, size: int | None = None) -> PutResult:
        refresh_masks(self._chain_creds)
        data = continuation.data
        full_key = self._full_key(key)
        upload_id = data.get("upload_id")
        if not upload_id or data.get("bucket") != self.options.bucket or data.get("key") != full_key:
            raise ResumeRefused("the journal entry names no upload of this key in this bucket")
        part_size, records = ResumableUpload.pieces_of(data, continuation.offset)
        if part_size != self.options.part_size:
            raise ResumeRefused(f"part_size changed from {part_size} to {self.options.part_size} bytes")
        held = self._listed_parts(full_key, str(upload_id))
        stored: list[Part] = []
        for number, record in enumerate(records, start=1):
            checksum, _, etag = record.partition(" ")
            got_etag, theirs, got = held.get(number, ("", None, -1))
            # a store that lists no part checksums (some S3-compatible ones) is held to the ETag
            if got != part_size or got_etag != etag or (theirs is not None and theirs != checksum):
                raise ResumeRefused(f"S3 does not hold part {number} as it was journaled")
            stored.append(Part(number=number, etag=etag, checksum=checksum, digest=base64.b64decode(checksum), size=got))
        stream = continuation.open()
        resumable = ResumableUpload(self.journal, key, {"bucket": self.options.bucket, "key": full_key}, stream, part_size)
        resumable.entry["upload_id"] = str(upload_id)
        resumable.start_from(records)
        return self._send_parts(full_key, key, stream, str(upload_id), [b"", b""], stored, resumable)  # type: ignore[no-any-return]

    def _listed_parts(self, full_key: str, upload_id: str) -> dict[int, tuple[str, str | None, int]]:
        """``{part number: (ETag, base64 SHA-256, size)}`` of what S3 holds for the upload."""
        held: dict[int, tuple[str, str | None, int]] = {}
        marker: dict[str, int] = {}
        while True:
            try:
                resp = self.client.list_parts(
                    Bucket=self.options.bucket, Key=full_key, UploadId=upload_id, **self._owner, **marker
                )
            except Exception as e:  # noqa: BLE001 - every SDK failure is mapped at this boundary
                mapped = s3_error(e, "list parts", self._loc(full_key))
                code = getattr(mapped, "code", None)
                if code == "NoSuchUpload":
                    raise ResumeRefused("S3 no longer has the upload (aborted, or removed by a lifecycle rule)") from None
                if code == "AccessDenied":
                    raise ResumeRefused("listing an upload's parts was denied (s3:ListMultipartUploadParts)") from None
                raise mapped from None
            for p in resp.get("Parts", []):
                held[int(p["PartNumber"])] = (str(p.get("ETag", "")), p.get("ChecksumSHA256"), int(p.get("Size", -1)))
            nxt = resp.get("NextPartNumberMarker")
            if not resp.get("IsTruncated") or not nxt:
                return held
            marker = {"PartNumberMarker": int(nxt)}
