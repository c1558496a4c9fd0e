"""The GCS sink: one object per file, streamed, checked by GCS with CRC32C and MD5.

How one file is stored (JSON API, on a hardened :class:`~.transport.GcsSession`):

- The stream is read in chunks of ``chunk_size`` bytes, with one byte of look-ahead to know
  whether a chunk is the last. CRC32C (``google-crc32c``) and MD5 are computed in the same pass
  as the core's SHA-256 (``HashingStream.observe``).
- A file that fits in one chunk is one **multipart upload** (``uploadType=multipart``): the
  object's metadata carries ``crc32c`` and ``md5Hash``; GCS computes both on receipt and refuses
  the request (HTTP 400) when either differs. Nothing is created then.
- A larger file is a **resumable upload**: a session is initiated (``uploadType=resumable``),
  each chunk is PUT as it arrives (``Content-Range: bytes a-b/*``), and the final PUT carries
  ``Content-Range: bytes a-b/total`` and ``X-Goog-Hash: crc32c=…,md5=…`` for the whole object,
  which GCS checks before it creates the object (the header google-cloud-storage itself sends
  on the final chunk). Until that final request succeeds nothing is visible under the name.
- Any failure after initiation cancels the session (``DELETE`` on the session URI, GCS answers
  499), so no upload is left behind, and the error is raised; except a stop (SIGTERM, Ctrl-C) of
  a journaled upload, whose session is kept for the next run.
- The object resource GCS returns is compared with what was sent: size, ``crc32c`` and
  ``md5Hash`` must match, or the put fails (:class:`~portshift.errors.IntegrityError`).
- Every upload (the single request, the resumable session) carries ``ifGenerationMatch=0``:
  GCS creates the object only if none exists under the name, and never replaces one. When it
  answers 412 (an object exists, e.g. the late landing of an earlier attempt that timed out at
  the client), the rest of the stream is read and hashed, and the stored object's size, CRC32C
  and MD5 are compared with it: equal means the file is already stored (a normal
  :class:`~portshift.api.PutResult`); different is a non-retryable error. Reading the stored
  object's metadata needs ``storage.objects.get`` (see docs/permissions/gcs.md).
- The session URI is a capability (whoever holds it can write the object): it is registered
  as a mask, never logged or put in an error, and must point at the configured endpoint's host
  over https. It is stored nowhere in clear: a big upload's session is journaled only sealed
  under a key derived from the service-account private key (:mod:`.session_seal`), so that the
  next run can continue it after a crash (:mod:`.resuming`); without a key it is not journaled.
- Memory: about one chunk (plus one chunk of the source) per transfer.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import requests
from google.auth.credentials import Credentials

from portshift import (
    Attempts,
    Backoff,
    HashingStream,
    InFlight,
    PortshiftError,
    PutResult,
    ResumableUpload,
    Sink,
    SinkError,
    content_type_for,
    parse_retry_after,
)

from . import errors
from .chunks import Digests, read_chunks
from .credentials import connect
from .options import GcsOptions
from .probe import BucketProbe
from .resuming import SessionResume
from .session import _ONLY_IF_ABSENT, SessionRequests
from .session_seal import SessionSeal
from .stored import StoredObjects

log = logging.getLogger("portshift.sink.gcs")

_MULTIPART_BOUNDARY_PREFIX = "portshift-"


class _ObjectExists(Exception):
    """GCS answered 412 to an upload carrying ``ifGenerationMatch=0``: an object exists."""


def _sent_checksums(values: dict[str, str]) -> dict[str, str]:
    """The checksums put on the wire. A module-level function so that tests can make it lie
    (a test-only corruption path) and watch GCS refuse the upload."""
    return dict(values)


class GcsSink(BucketProbe, StoredObjects, SessionRequests, SessionResume, Sink):
    Options = GcsOptions
    description = "Google Cloud Storage: resumable streaming uploads checked by GCS with CRC32C and MD5"

    options: GcsOptions
    _object_exists = _ObjectExists

    def __init__(self, options: GcsOptions, *, _credentials: Credentials | None = None) -> None:
        """``_credentials`` is for the plugin's own tests only (emulators take anonymous
        credentials); it is not an option and nothing in portshift passes it."""
        super().__init__(options)
        self._session, self._token_session = connect(options, _credentials)
        self._endpoint = options.api_endpoint
        self._host = urllib.parse.urlsplit(self._endpoint).netloc.lower()
        self._timeout = (options.connect_timeout, options.read_timeout)
        self._backoff = Backoff(base=0.5, cap=8.0, attempts=options.request_retries + 1)
        self._residency_lock = threading.Lock()
        self._residency_checked = options.allowed_regions is None
        #: seals the session URI for the journal (None: no key to seal with, nothing is journaled)
        self._seal = SessionSeal.for_options(options)

    # --- names ----------------------------------------------------------------------------------
    def object_name(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.options.prefix}/{key}" if self.options.prefix else key

    def location(self) -> str:
        base = f"gs://{self.options.bucket}"
        return f"{base}/{self.options.prefix}" if self.options.prefix else base

    def _where(self, name: str) -> str:
        return f"gs://{self.options.bucket}/{name}"

    def _upload_url(self) -> str:
        return f"{self._endpoint}/upload/storage/v1/b/{urllib.parse.quote(self.options.bucket, safe='')}/o"

    def _metadata(self, name: str, content_type: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "contentType": content_type}
        if self.options.storage_class:
            meta["storageClass"] = self.options.storage_class
        if self.options.kms_key_name:
            meta["kmsKeyName"] = self.options.kms_key_name
        return meta

    # --- HTTP with retries ----------------------------------------------------------------------
    def _send(
        self,
        method: str,
        url: str,
        operation: str,
        where: str,
        *,
        ok: tuple[int, ...],
        data: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        retry: bool = True,
    ) -> requests.Response:
        attempts = self._attempts(operation)
        while True:
            failure: PortshiftError | None = None
            hint: float | None = None
            try:
                response = self._session.request(method, url, data=data, headers=headers, params=params, timeout=self._timeout)
            except Exception as e:  # noqa: BLE001 - translated, then raised from None below
                failure = errors.from_exception(e, operation, where)
            else:
                if response.status_code in ok:
                    return response
                if response.status_code == 412:
                    # only uploads carry a precondition (ifGenerationMatch=0): the name is taken
                    response.close()
                    raise _ObjectExists()
                failure = errors.from_response(response, operation, where)
                hint = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
            if not retry or not failure.retryable:
                raise failure from None
            delay = attempts.next_delay(hint)
            if delay is None:
                raise failure from None
            log.debug("%s: %s; retry %d in %.1fs", operation, failure, attempts.count, delay)
            attempts.wait(delay)  # on the job's cancel event: Interrupted at once on Ctrl-C

    def _attempts(self, what: str) -> Attempts:
        """The retry state of one request: waits go through portshift's retry helper, on the job's
        cancel event (never ``time.sleep``), so Ctrl-C ends any backoff at once."""
        return Attempts(self._backoff, cancel=self.cancel, what=what)

    # --- put ------------------------------------------------------------------------------------
    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        name = self.object_name(key)
        where = self._where(name)
        self._check_residency()
        content_type = content_type_for(getattr(stream, "content_type", None), name)
        resumable = self._resumable_upload(key, name, stream, size)
        digests = (Digests.saveable(self.options.chunk_size) if resumable.enabled else None) or Digests()
        digests.follow(stream)
        chunks = read_chunks(stream, self.options.chunk_size)
        first, last = next(chunks)
        try:
            if last:
                return self._multipart(name, where, content_type, first, digests)
            session_uri = self._initiate(name, where, content_type, size)
            self._journal_session(key, name, session_uri, resumable)
            return self._send_chunks(key, name, session_uri, (first, False), chunks, 0, 0, digests, resumable)
        except _ObjectExists:
            pass
        del first
        for _ in chunks:  # the rest of the file, hashed as it goes by (one chunk in memory)
            pass
        return self._compare_existing(name, where, stream.bytes_read, digests.values())

    def _multipart(self, name: str, where: str, content_type: str, data: bytes, digests: Digests) -> PutResult:
        values = digests.values()
        sent = _sent_checksums(values)
        meta = self._metadata(name, content_type)
        meta["crc32c"] = sent["crc32c"]
        meta["md5Hash"] = sent["md5"]
        boundary = _MULTIPART_BOUNDARY_PREFIX + uuid.uuid4().hex
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(meta).encode(),
                f"\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        response = self._send(
            "POST",
            self._upload_url(),
            "upload object",
            where,
            ok=(200,),
            data=body,
            params={"uploadType": "multipart", **_ONLY_IF_ABSENT},
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
        )
        return self._confirm(
            name, where, response, len(data), values, "GCS checked CRC32C and MD5 of the whole object (single-request upload)"
        )

    def _send_chunks(
        self,
        key: str,
        name: str,
        session_uri: str,
        first: tuple[bytes, bool],
        rest: Iterator[tuple[bytes, bool]],
        offset: int,
        persisted: int,
        digests: Digests,
        resumable: ResumableUpload,
    ) -> PutResult:
        """Send the chunks from ``first`` on (at byte ``offset`` of the object; GCS holds the
        first ``persisted`` bytes already) and finish the session. Any failure cancels the
        session, unless the run is stopping with a resume point journaled: then it is kept."""
        where = self._where(name)
        # A chunk goes up on a worker thread while the next one is read; a resumable session
        # takes its chunks in order, so one at a time (the final one once all are persisted).
        inflight: InFlight[None] = InFlight(1, "portshift-gcs-chunk")
        how = f"resumable upload continued at byte {offset} after a stop" if offset else "resumable upload"
        try:
            count = 0
            chunk, last = first
            while True:
                count += 1
                skip = min(max(persisted - offset, 0), len(chunk))  # bytes of it GCS holds already
                if last:
                    inflight.finish()
                    values = digests.values()
                    response = self._final_chunk(session_uri, where, chunk[skip:], offset + skip, values)
                    self._journal_end(key, resumable)
                    return self._confirm(
                        name,
                        where,
                        response,
                        offset + len(chunk),
                        values,
                        f"GCS checked CRC32C and MD5 of the whole object at finalize ({how}, {count} chunks)",
                    )
                inflight.submit(self._confirmed_chunk, session_uri, where, chunk, offset, skip, digests, resumable)
                offset += len(chunk)
                chunk = b""  # drop the reference before reading the next chunk
                chunk, last = next(rest)
        except BaseException as exc:
            inflight.close()  # the chunk in flight ends before the session is cancelled
            if resumable.kept(exc, self.cancel, where):  # stopped with chunks stored: the next run continues it
                raise
            self._cancel(session_uri, where)
            self._journal_end(key, resumable)
            raise
        finally:
            inflight.close()

    def _confirmed_chunk(
        self, session_uri: str, where: str, chunk: bytes, offset: int, skip: int, digests: Digests, resumable: ResumableUpload
    ) -> None:
        self._chunk(session_uri, where, chunk, offset, skip)
        if resumable.enabled and digests.every:  # journal the resume point, with the CRC32C and MD5 there
            record = digests.kept(offset + len(chunk))
            if record is not None:
                resumable.confirmed(offset // resumable.piece_size, record)

    def _final_chunk(self, session_uri: str, where: str, chunk: bytes, offset: int, values: dict[str, str]) -> requests.Response:
        total = offset + len(chunk)
        sent = _sent_checksums(values)
        headers = {"X-Goog-Hash": f"crc32c={sent['crc32c']},md5={sent['md5']}"}
        headers["Content-Range"] = f"bytes {offset}-{total - 1}/{total}" if chunk else f"bytes */{total}"
        attempts = self._attempts("finish upload")
        while True:
            try:
                return self._send(
                    "PUT", session_uri, "finish upload", where, ok=(200, 201), data=chunk, headers=headers, retry=False
                )
            except PortshiftError as e:
                if not e.retryable or getattr(e, "status", None) == 400:
                    raise
                attempts.backoff(e)  # re-raises e when the policy is exhausted
                persisted = self._status(session_uri, where)
                if persisted == -1:  # already finalised by the lost request: ask for the object
                    return self._send(
                        "PUT",
                        session_uri,
                        "finish upload",
                        where,
                        ok=(200, 201),
                        data=b"",
                        headers={"Content-Range": f"bytes */{total}"},
                        retry=False,
                    )
                if persisted != offset:
                    raise SinkError(
                        f"GCS reports {persisted} bytes persisted before the last chunk, expected {offset}",
                        operation="finish upload",
                        location=where,
                        retryable=True,
                    ) from None

    # --- check / close --------------------------------------------------------------------------
    def close(self) -> None:
        self._session.close()
        self._token_session.close()


__all__ = ["GcsSink", "read_chunks"]
