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
  499), so no upload is left behind, and the error is raised.
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
  as a mask, never logged, stored or put in an error, and must point at the configured
  endpoint's host over https.
- Memory: about one chunk (plus one chunk of the source) per transfer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import google_crc32c
import requests
from google.auth.credentials import Credentials

from portshift import (
    Attempts,
    AuthError,
    Backoff,
    ConfigError,
    FatalError,
    HashingStream,
    IntegrityError,
    PortshiftError,
    PutResult,
    Sink,
    SinkError,
    content_type_for,
    parse_retry_after,
    register_mask,
    require_allowed,
)

from . import errors
from .credentials import connect
from .options import GcsOptions

log = logging.getLogger("portshift.sink.gcs")

_MULTIPART_BOUNDARY_PREFIX = "portshift-"


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def read_chunks(stream: HashingStream, chunk_size: int) -> Iterator[tuple[bytes, bool]]:
    """``(chunk, is_last)`` pairs of up to ``chunk_size`` bytes; at least one (empty) chunk."""
    carry = b""
    while True:
        chunk = carry + stream.read(chunk_size - len(carry))
        carry = stream.read(1)
        yield chunk, not carry
        if not carry:
            return


class _Digests:
    """CRC32C and MD5 of everything the stream yields, fed by ``HashingStream.observe``."""

    def __init__(self) -> None:
        self.crc32c = google_crc32c.Checksum()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def update(self, data: bytes) -> None:
        self.crc32c.update(data)
        self.md5.update(data)

    def values(self) -> dict[str, str]:
        return {"crc32c": _b64(self.crc32c.digest()), "md5": _b64(self.md5.digest())}


class _ObjectExists(Exception):
    """GCS answered 412 to an upload carrying ``ifGenerationMatch=0``: an object exists."""


#: Sent with every upload: create the object only if none exists under the name.
_ONLY_IF_ABSENT = {"ifGenerationMatch": "0"}


def _sent_checksums(values: dict[str, str]) -> dict[str, str]:
    """The checksums put on the wire. A module-level function so that tests can make it lie
    (a test-only corruption path) and watch GCS refuse the upload."""
    return dict(values)


class GcsSink(Sink):
    Options = GcsOptions
    description = "Google Cloud Storage: resumable streaming uploads checked by GCS with CRC32C and MD5"

    options: GcsOptions

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
        digests = _Digests()
        stream.observe(digests.update)
        chunks = read_chunks(stream, self.options.chunk_size)
        first, last = next(chunks)
        try:
            if last:
                return self._multipart(name, where, content_type, first, digests)
            return self._resumable(name, where, content_type, first, chunks, digests, size)
        except _ObjectExists:
            pass
        del first
        for _ in chunks:  # the rest of the file, hashed as it goes by (one chunk in memory)
            pass
        return self._compare_existing(name, where, stream.bytes_read, digests.values())

    def _compare_existing(self, name: str, where: str, size: int, values: dict[str, str]) -> PutResult:
        """GCS refused the upload because an object exists under ``name``: compare it with the
        file just read. Equal (size, CRC32C and, when GCS reports it, MD5): the file is stored.
        Anything else fails the put for good; portshift never replaces an object."""
        url = (
            f"{self._endpoint}/storage/v1/b/{urllib.parse.quote(self.options.bucket, safe='')}/o/"
            f"{urllib.parse.quote(name, safe='')}"
        )
        response = self._send(
            "GET", url, "compare existing object", where, ok=(200, 403, 404), params={"fields": "size,crc32c,md5Hash,generation"}
        )
        status = response.status_code
        try:
            obj = response.json() if status == 200 else None
        except ValueError:
            obj = None
        finally:
            response.close()
        if status == 403:
            raise SinkError(
                "an object already exists under this name (left by an earlier attempt, or another writer); "
                "portshift never replaces an object, and cannot compare this one with the file: reading its "
                "metadata needs storage.objects.get",
                operation="compare existing object",
                status=403,
                location=where,
                retryable=False,
                hint="grant storage.objects.get as well (docs/permissions/gcs.md), or delete the object "
                "if it is not wanted, then run the job again",
            )
        if status == 404:  # it was there a moment ago: deleted since; a new attempt can write it
            raise SinkError(
                "GCS refused the upload because an object existed under this name, which is now gone",
                operation="compare existing object",
                status=404,
                location=where,
                retryable=True,
            )
        if not isinstance(obj, dict):
            raise SinkError(
                "GCS did not return the existing object's metadata",
                operation="compare existing object",
                location=where,
                retryable=True,
            )
        try:
            stored_size = int(obj.get("size", -1))
        except (TypeError, ValueError):
            stored_size = -1
        md5 = obj.get("md5Hash")
        if stored_size != size or obj.get("crc32c") != values["crc32c"] or (md5 is not None and md5 != values["md5"]):
            raise SinkError(
                f"an object already exists under this name with other content ({stored_size} bytes stored, "
                f"{size} in this file, or different CRC32C/MD5); portshift never replaces an object",
                operation="upload object",
                status=412,
                location=where,
                retryable=False,
                hint="an earlier export or another writer used this name: move or delete that object, or "
                "export into another prefix",
            )
        checksums = {"crc32c": values["crc32c"]}
        how = (
            f"an object with the same size and CRC32C{' and MD5' if md5 is not None else ''} already existed "
            "under the name (an earlier attempt's upload); GCS refused to replace it (ifGenerationMatch=0)"
        )
        if md5 is not None:
            checksums["md5"] = values["md5"]
        generation = obj.get("generation")
        log.info("%s already stored with the same content (generation %s); not uploaded again", where, generation)
        return PutResult(key=name, size=size, checksums=checksums, version=str(generation) if generation else None, verified=how)

    def _multipart(self, name: str, where: str, content_type: str, data: bytes, digests: _Digests) -> PutResult:
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

    def _resumable(
        self,
        name: str,
        where: str,
        content_type: str,
        first: bytes,
        rest: Iterator[tuple[bytes, bool]],
        digests: _Digests,
        size: int | None,
    ) -> PutResult:
        session_uri = self._initiate(name, where, content_type, size)
        try:
            offset = 0
            count = 0
            chunk, last = first, False
            while True:
                count += 1
                if last:
                    values = digests.values()
                    response = self._final_chunk(session_uri, where, chunk, offset, values)
                    return self._confirm(
                        name,
                        where,
                        response,
                        offset + len(chunk),
                        values,
                        f"GCS checked CRC32C and MD5 of the whole object at finalize (resumable upload, {count} chunks)",
                    )
                self._chunk(session_uri, where, chunk, offset)
                offset += len(chunk)
                chunk, last = next(rest)
        except BaseException:
            self._cancel(session_uri, where)
            raise

    def _initiate(self, name: str, where: str, content_type: str, size: int | None) -> str:
        headers = {"Content-Type": "application/json; charset=UTF-8", "X-Upload-Content-Type": content_type}
        if size is not None:
            headers["X-Upload-Content-Length"] = str(size)
        response = self._send(
            "POST",
            self._upload_url(),
            "start resumable upload",
            where,
            ok=(200, 201),
            data=json.dumps(self._metadata(name, content_type)).encode(),
            params={"uploadType": "resumable", **_ONLY_IF_ABSENT},
            headers=headers,
        )
        session_uri = response.headers.get("Location", "")
        response.close()
        if session_uri:
            register_mask(session_uri)
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(session_uri).query)
            for value in query.get("upload_id", []):
                register_mask(value)
        parts = urllib.parse.urlsplit(session_uri)
        if parts.scheme != "https" or parts.netloc.lower() != self._host:
            # never send data (or the bearer token) anywhere but the configured endpoint: such a
            # session cannot even be cancelled; GCS drops unused sessions after a week
            raise SinkError(
                "GCS returned a resumable session URI that is not https on the configured endpoint's host",
                operation="start resumable upload",
                location=where,
                retryable=False,
            )
        return session_uri

    def _chunk(self, session_uri: str, where: str, chunk: bytes, offset: int) -> None:
        """PUT one non-final chunk; resend what GCS did not persist."""
        end = offset + len(chunk)
        pos = offset
        attempts = self._attempts("upload chunk")
        while pos < end:
            piece = chunk[pos - offset :]
            headers = {"Content-Range": f"bytes {pos}-{end - 1}/*"}
            try:
                response = self._send(
                    "PUT", session_uri, "upload chunk", where, ok=(308,), data=piece, headers=headers, retry=False
                )
                persisted = _persisted(response)
                response.close()
            except PortshiftError as e:
                if not e.retryable:
                    raise
                attempts.backoff(e)  # re-raises e when the policy is exhausted
                persisted = self._status(session_uri, where)
            if persisted < pos or persisted > end:
                raise SinkError(
                    f"GCS reports {persisted} bytes persisted, expected between {pos} and {end}",
                    operation="upload chunk",
                    location=where,
                    retryable=True,
                )
            if persisted == pos:
                if attempts.exhausted():
                    raise SinkError("GCS persisted none of the chunk", operation="upload chunk", location=where)
                attempts.wait(0)  # counts the attempt; raises Interrupted if the run is stopping
                continue
            pos = persisted

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

    def _status(self, session_uri: str, where: str) -> int:
        """Bytes GCS persisted in the session, or -1 when the upload is already complete."""
        response = self._send(
            "PUT", session_uri, "query upload status", where, ok=(200, 201, 308), data=b"", headers={"Content-Range": "bytes */*"}
        )
        response.close()
        if response.status_code in (200, 201):
            return -1
        return _persisted(response)

    def _cancel(self, session_uri: str, where: str) -> None:
        """Cancel a resumable session (GCS answers 499); never raises."""
        try:
            response = self._session.request("DELETE", session_uri, timeout=self._timeout)
            status = response.status_code
            response.close()
        except Exception as e:  # noqa: BLE001 - best effort, never masks the original failure
            log.warning("could not cancel the resumable upload of %s (%s)", where, type(e).__name__)
            return
        if status in (499, 200, 204, 404, 410):
            log.debug("cancelled the resumable upload of %s (HTTP %d)", where, status)
        else:
            log.warning("cancelling the resumable upload of %s: GCS answered HTTP %d", where, status)

    def _confirm(
        self, name: str, where: str, response: requests.Response, size: int, values: dict[str, str], how: str
    ) -> PutResult:
        try:
            obj = response.json()
        except ValueError:
            obj = None
        finally:
            response.close()
        if not isinstance(obj, dict):
            raise SinkError(
                "GCS did not return the stored object's metadata", operation="confirm upload", location=where, retryable=True
            )
        problems = []
        if str(obj.get("name", name)) != name:
            problems.append("name")
        try:
            stored_size = int(obj.get("size", -1))
        except (TypeError, ValueError):
            stored_size = -1
        if stored_size != size:
            problems.append(f"size ({stored_size} stored, {size} sent)")
        reported = {"crc32c": obj.get("crc32c"), "md5": obj.get("md5Hash")}
        if reported["crc32c"] != values["crc32c"]:
            problems.append("CRC32C")
        if reported["md5"] is not None and reported["md5"] != values["md5"]:
            problems.append("MD5")
        if problems:
            raise IntegrityError(f"GCS stored an object at {where} that differs from what was sent: {', '.join(problems)}")
        checksums = {"crc32c": values["crc32c"]}
        if reported["md5"] is not None:
            checksums["md5"] = values["md5"]
            how += "; the CRC32C and MD5 GCS reported match"
        else:
            how += "; the CRC32C GCS reported matches (no MD5 reported)"
        generation = obj.get("generation")
        log.debug("stored %s (%d bytes, generation %s)", where, size, generation)
        return PutResult(key=name, size=size, checksums=checksums, version=str(generation) if generation else None, verified=how)

    # --- check / close --------------------------------------------------------------------------
    def check(self) -> None:
        """Open a resumable upload session for a probe name and cancel it: proves the
        credentials, the bucket and the create permission (and the TLS path) without writing
        an object. With ``allowed_regions``, the bucket's location first.

        Raises :class:`ConfigError` for a missing bucket, :class:`AuthError` for refused
        credentials or a missing permission, :class:`FatalError` for anything else (an
        unreachable endpoint), so that ``portshift run`` stops before listing the source."""
        try:
            self._check_residency()
            name = self.object_name(f".portshift-check-{uuid.uuid4().hex[:12]}")
            where = self._where(name)
            try:
                session_uri = self._initiate(name, where, "application/octet-stream", 0)
            except _ObjectExists:  # a random name that exists: GCS checked the create permission
                return
        except PortshiftError as e:
            raise _check_error(e, self.location()) from None
        self._cancel(session_uri, where)

    def _check_residency(self) -> None:
        """Once per sink, before the first upload: the bucket's location (JSON API bucket
        metadata, ``storage.buckets.get``) must match ``allowed_regions``."""
        if self._residency_checked:
            return
        with self._residency_lock:
            if self._residency_checked:
                return
            where = f"gs://{self.options.bucket}"
            url = f"{self._endpoint}/storage/v1/b/{urllib.parse.quote(self.options.bucket, safe='')}"
            fields = {"fields": "location,locationType"}
            response = self._send("GET", url, "read bucket location", where, ok=(200,), params=fields)
            try:
                doc = response.json()
            except ValueError:
                doc = None
            finally:
                response.close()
            location = doc.get("location") if isinstance(doc, dict) else None
            require_allowed(
                str(location) if location else None,
                self.options.allowed_regions,
                what="the bucket's location",
                location=where,
            )
            log.debug("%s is in %s, allowed by allowed_regions", where, location)
            self._residency_checked = True

    def close(self) -> None:
        self._session.close()
        self._token_session.close()


def _check_error(error: PortshiftError, location: str) -> PortshiftError:
    """What ``check()`` raises for a failed probe: a missing bucket is a configuration error;
    refused credentials stay an :class:`AuthError`; anything else stops the run."""
    if getattr(error, "status", None) == 404:
        return ConfigError(
            f"[sink] bucket: {location} does not exist (GCS answered 404)",
            hint="check bucket and api_endpoint; the sink never creates buckets",
        )
    if isinstance(error, AuthError | ConfigError | FatalError):
        return error
    return FatalError(str(error))


def _persisted(response: requests.Response) -> int:
    """Bytes persisted according to a 308's ``Range: bytes=0-N`` (none when absent)."""
    value = response.headers.get("Range", "")
    if not value:
        return 0
    try:
        return int(value.rsplit("-", 1)[1]) + 1
    except (IndexError, ValueError):
        raise SinkError("GCS answered an unreadable Range header", operation="upload chunk", retryable=True) from None


__all__ = ["GcsSink", "read_chunks"]
