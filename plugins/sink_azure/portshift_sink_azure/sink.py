"""The Azure Blob sink: one block blob per file, streamed in blocks, each checked by Azure.

How one file is stored:

- It is read in blocks of ``block_size`` bytes, with one byte of look-ahead to know whether a
  block is the last. A file that fits in one block is a single **Put Blob**; a larger one is
  one **Put Block** per block, then **Put Block List** (commit).
- Every Put Blob / Put Block carries the MD5 of its body (``Content-MD5``); Azure computes the
  MD5 of what arrived and refuses the request (HTTP 400) when they differ.
- The MD5 of the whole file, computed in the same pass, is stored as the blob's Content-MD5
  property (``x-ms-blob-content-md5``) and its SHA-256 as metadata ``sha256``, so anyone can
  compare them later.
- Nothing is visible under the blob's name until the commit (or the single Put Blob)
  succeeds. Staged blocks that are never committed are invisible to readers and are discarded
  by Azure (after a week); a failed upload therefore leaves no blob, and an existing blob of
  the same name stays as it was.
- Blocks are uploaded while the next one is read: up to ``max_concurrency`` Put Block requests in
  flight at once (:class:`portshift.InFlight`). Memory: about ``max_concurrency + 1`` blocks
  (plus one chunk of the source) per transfer.
- A big upload (one the core offers a resume point to) is journaled block by block (ids, MD5s,
  the whole-file MD5 state): after a crash the next run continues it (:mod:`.resuming`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import BlobType, ContentSettings, StandardBlobTier

from portshift import (
    ConfigError,
    HashingStream,
    InFlight,
    IntegrityError,
    PortshiftError,
    PutResult,
    ResumableUpload,
    ResumeRefused,
    Sink,
    SinkError,
    check_failure,
)
from portshift import (
    content_type_for as _content_type_for,
)

from .blocks import Upload, block_record, read_blocks
from .blocks import block_id as _block_id
from .blocks import whole_md5 as _whole_md5
from .client import connect, location_of
from .errors import error_code, translate
from .options import MAX_BLOCKS, AzureOptions
from .resuming import BlockResume
from .sas import WRITE, inspect_sas

log = logging.getLogger("portshift.sink.azure")

T = TypeVar("T")


def content_type_for(stream: HashingStream, name: str) -> str:
    """The blob's Content-Type: the media type the source gave with the artifact
    (``stream.content_type``), else a guess from the file extension, else octet-stream.

    A value that is not a well-formed media type (e.g. with a line break) is not sent.
    """
    return _content_type_for(getattr(stream, "content_type", None), name)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _transactional_md5(data: bytes) -> bytes:
    """The Content-MD5 sent with a request body (Azure recomputes it on receipt).

    A module-level function so that tests can make it lie and watch the server refuse.
    """
    return _md5(data)


def _b64(digest: bytes | bytearray) -> str:
    return base64.b64encode(bytes(digest)).decode("ascii")


class AzureSink(BlockResume, Sink):
    Options = AzureOptions
    description = "Azure Blob Storage: block blobs, MD5 checked by Azure per block, SAS credential"

    def __init__(self, options: AzureOptions) -> None:
        super().__init__(options)
        self.options: AzureOptions = options
        if options.sas is None:  # pragma: no cover - the options model requires it
            raise SinkError("no SAS token", retryable=False)
        # raises on an expired token (again, just before use)
        self.sas_info = inspect_sas(options.sas, role=WRITE, section=options.section_name)
        self._base = options.account_url.rstrip("/")
        self._transport, self._service, self._container = connect(
            options, cancel=lambda: self.cancel, max_single_put_size=options.block_size, max_block_size=options.block_size
        )
        self._tier = StandardBlobTier(options.access_tier) if options.access_tier else None

    # --- names -------------------------------------------------------------------------------
    def location(self) -> str:
        return location_of(self.options)

    def blob_name(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.options.prefix}/{key}" if self.options.prefix else key

    def _blob_location(self, name: str) -> str:
        return f"{self._base}/{self.options.container}/{urllib.parse.quote(name, safe='/')}"

    def _call(self, operation: str, location: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except AzureError as e:
            error = translate(e, operation, location)
        raise error from None

    def _common(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.options.encryption_scope:
            out["encryption_scope"] = self.options.encryption_scope
        return out

    # --- the contract ------------------------------------------------------------------------
    def check(self) -> None:
        """Stage one 1-byte block on a probe name, never committed.

        This proves, without creating any blob, that the endpoint is reachable over TLS, the
        container exists, the SAS is accepted with write permission, the encryption scope is
        usable and Azure checks MD5. The uncommitted block is invisible and Azure discards it.
        """
        name = self.blob_name(f".portshift-check/{uuid.uuid4().hex}")
        blob = self._container.get_blob_client(name)
        data = b"\n"
        try:
            self._call(
                "check (put block)",
                self._blob_location(name),
                blob.stage_block,
                _block_id(uuid.uuid4().hex[:16], 1),
                data,
                length=len(data),
                transactional_content_md5=_transactional_md5(data),
                **self._common(),
            )
        except PortshiftError as e:
            raise _check_error(e, self.location()) from None

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        name = self.blob_name(key)
        location = self._blob_location(name)
        block_size = self.options.block_size
        if size is not None and size > block_size * MAX_BLOCKS:
            raise SinkError(
                f"{size} bytes need more than Azure's {MAX_BLOCKS} blocks at block_size {block_size}",
                operation="put",
                location=location,
                retryable=False,
                hint="raise block_size",
            )
        blob = self._container.get_blob_client(name)
        # Before the first read: a big upload is journaled block by block, to be continued after a crash.
        resumable = ResumableUpload(
            self.journal if size is None or size > block_size else None, key, self._entry(name), stream, block_size
        )
        blocks = read_blocks(stream, block_size)
        data, last = next(blocks)
        if last:
            return self._put_single(blob, name, location, data, stream, size, content_type_for(stream, name))
        attempt = uuid.uuid4().hex[:16]
        resumable.entry["attempt"] = attempt
        upload = Upload(blob, key, name, location, attempt, size, _whole_md5(resumable.enabled), resumable)
        return self._send_blocks(upload, stream, blocks, [data])

    def _entry(self, name: str) -> dict[str, str]:
        """What the journal keeps of an upload besides its blocks: names, never a URL or a SAS."""
        return {"container": self.options.container, "blob": name}

    def _send_blocks(
        self, up: Upload, stream: HashingStream, blocks: Iterator[tuple[bytes, bool]], seed: list[bytes]
    ) -> PutResult:
        """Stage the rest of the stream as blocks after ``up.ids`` (those staged already), then
        commit them all. On a failure the journal entry ends (uncommitted blocks are invisible and
        Azure discards them), unless the run was stopped with blocks journaled: then it is kept,
        and the next run continues the upload."""
        block_size = self.options.block_size
        total = len(up.ids) * block_size
        try:
            # Up to max_concurrency blocks in flight (worker threads) while the next one is read.
            with InFlight[str](self.options.max_concurrency, "portshift-azure-block") as inflight:
                data, last = (seed.pop(), False) if seed else next(blocks)
                while data or not up.ids:  # a resumed upload may have nothing left to stage
                    if len(up.ids) >= MAX_BLOCKS:
                        raise SinkError(
                            f"more than Azure's {MAX_BLOCKS} blocks at block_size {block_size}",
                            operation="put block",
                            location=up.location,
                            retryable=False,
                            hint="raise block_size",
                        )
                    up.whole.update(data)
                    total += len(data)
                    block_id = _block_id(up.attempt, len(up.ids) + 1)
                    # the whole-file MD5 as it is after this block: what a continued upload starts from
                    state = up.whole.export() if up.resumable.enabled and not up.whole.length % 64 else "-"
                    inflight.submit(self._stage_block, up.blob, up.location, block_id, data, up.resumable, len(up.ids), state)
                    up.ids.append(block_id)
                    if last:
                        break
                    data = b""  # drop the reference before reading the next block
                    data, last = next(blocks)
                del data
                inflight.finish()
            self._check_size(total, up.size, up.location)
            digest = up.whole.digest()
            response = self._commit(up, stream, digest)
        except BaseException as exc:
            if up.resumable.kept(exc, self.cancel, up.location):  # stopped with blocks staged: continued next run
                raise
            self._journal_end(up)
            raise
        self._journal_end(up)
        self._check_scope(response, up.location)
        log.debug("stored %s: %d bytes in %d blocks", up.location, total, len(up.ids))
        verified = f"Azure checked MD5 of each of {len(up.ids)} blocks; Content-MD5 set"
        return PutResult(key=up.name, size=total, checksums={"md5": _b64(digest)}, version=_etag(response), verified=verified)

    def _commit(self, up: Upload, stream: HashingStream, digest: bytes) -> Any:
        """Put Block List: every block, the whole file's MD5 as Content-MD5, its SHA-256 as metadata."""
        try:
            return up.blob.commit_block_list(
                up.ids,
                content_settings=ContentSettings(content_type=content_type_for(stream, up.name), content_md5=bytearray(digest)),
                metadata={"sha256": stream.sha256_hex()},
                standard_blob_tier=self._tier,
                **self._common(),
            )
        except AzureError as e:
            if up.unlisted and isinstance(e, HttpResponseError) and error_code(e) == "InvalidBlockList":
                # a continued upload whose blocks could not be listed (no read permission): Azure
                # itself says that a journaled block is gone
                raise ResumeRefused("Azure no longer holds the blocks staged before (Put Block List: InvalidBlockList)") from None
            error = translate(e, "put block list", up.location)
        raise error from None

    def _journal_end(self, up: Upload) -> None:
        if self.journal is None or not up.resumable.journaled:
            return
        try:
            self.journal.end(up.key)
        except Exception as e:  # noqa: BLE001 - a stale entry is only cleaned up (a no-op) by a later run
            log.warning("could not record the end of an upload in the job state (%s)", type(e).__name__)

    def recover(self, pending: list[tuple[str, dict[str, str]]]) -> None:
        """Uploads a stopped worker left mid-file that will not be continued: nothing to undo.

        Their blocks were staged, never committed: no reader sees them, an existing blob of that
        name is unchanged, and Azure discards uncommitted blocks a week after the last block was
        staged (or at once, when the blob is committed again: Put Block List drops every
        uncommitted block it does not list). The sink has no call that deletes only uncommitted
        blocks (Delete Blob needs delete permission and would remove a committed blob), so it
        removes nothing; the core then forgets the entries."""
        if pending:
            log.info(
                "%d uploads left mid-file are not continued: their uncommitted blocks are invisible, and Azure "
                "discards them within 7 days",
                len(pending),
            )

    def _stage_block(
        self,
        blob: Any,
        location: str,
        block_id: str,
        data: bytes,
        resumable: ResumableUpload | None = None,
        index: int = 0,
        state: str = "-",
    ) -> str:
        sent_md5 = _transactional_md5(data)
        response = self._call(
            "put block",
            location,
            blob.stage_block,
            block_id,
            data,
            length=len(data),
            transactional_content_md5=sent_md5,
            **self._common(),
        )
        _check_echo(response, sent_md5, location, "put block")
        if resumable is not None:
            # Azure checked this block's MD5: journal it (with the whole-file MD5 state after it)
            resumable.confirmed(index, block_record(block_id, sent_md5, state))
        return block_id

    def _put_single(
        self,
        blob: Any,
        name: str,
        location: str,
        data: bytes,
        stream: HashingStream,
        size: int | None,
        content_type: str,
    ) -> PutResult:
        self._check_size(len(data), size, location)
        digest = _md5(data)
        sent_md5 = _transactional_md5(data)
        # The same MD5 goes as Content-MD5 (checked by Azure against the body) and as the blob's
        # stored Content-MD5: Azurite checks the latter against the body when both are sent.
        response = self._call(
            "put blob",
            location,
            blob.upload_blob,
            data,
            length=len(data),
            blob_type=BlobType.BLOCKBLOB,
            overwrite=True,
            max_concurrency=1,
            transactional_content_md5=sent_md5,
            content_settings=ContentSettings(content_type=content_type, content_md5=bytearray(sent_md5)),
            metadata={"sha256": stream.sha256_hex()},
            standard_blob_tier=self._tier,
            **self._common(),
        )
        # Put Blob answers with the MD5 Azure computed over what it stored.
        _check_echo(response, digest, location, "put blob")
        self._check_scope(response, location)
        log.debug("stored %s: %d bytes in one Put Blob", location, len(data))
        return PutResult(
            key=name,
            size=len(data),
            checksums={"md5": _b64(digest)},
            version=_etag(response),
            verified="Azure checked MD5 of the single Put Blob; Content-MD5 set",
        )

    def _check_size(self, total: int, size: int | None, location: str) -> None:
        # Before anything becomes visible: a short stream must not be committed.
        if size is not None and total != size:
            raise IntegrityError(f"{location}: {total} bytes read, {size} declared; nothing was committed")

    def _check_scope(self, response: Any, location: str) -> None:
        want = self.options.encryption_scope
        got = response.get("encryption_scope") if isinstance(response, dict) else None
        if want and got and got != want:
            raise IntegrityError(f"{location}: Azure stored the blob with encryption scope {got!r}, not {want!r}")

    def close(self) -> None:
        try:
            self._service.close()
        except Exception:  # noqa: BLE001 - closing must not fail a finished job
            log.debug("closing the Azure client failed", exc_info=False)


def _check_error(error: PortshiftError, location: str) -> PortshiftError:
    """What ``check()`` raises: a missing container is a configuration error, the rest as the
    core classifies a failed check (:func:`portshift.check_failure`)."""
    if getattr(error, "status", None) == 404 and "ContainerNotFound" in str(error):
        return ConfigError(
            f"[sink] container: {location} does not exist (Azure answered ContainerNotFound)",
            hint="check account_url and container; the sink never creates containers",
        )
    return check_failure(error)


def _etag(response: Any) -> str | None:
    if isinstance(response, dict):
        etag = response.get("etag")
        return str(etag).strip('"') if etag else None
    return None


def _check_echo(response: Any, sent: bytes, location: str, operation: str) -> None:
    """Compare the Content-MD5 Azure returned (when it returned one) with ours."""
    got = response.get("content_md5") if isinstance(response, dict) else None
    if got and bytes(got) != bytes(sent):
        raise IntegrityError(f"{operation} {location}: Azure reports MD5 {_b64(got)}, portshift sent {_b64(sent)}")
