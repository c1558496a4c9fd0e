"""Read an export back from Azure Blob Storage, for ``portshift verify --store``.

Same options as the sink (the verify file's ``[store]`` has the ``[sink]``'s keys), but the SAS
is checked for reading: read (``r``, Get Blob) and list (``l``, List Blobs) are required, and
anything that could change the export (create, write, delete...) is warned about.

- Blobs are streamed in ranges of at most :data:`READ_CHUNK` bytes through the same hardened
  transport as the sink (portshift's TLS policy, no environment, no redirects, no plain HTTP);
  nothing is written to disk and memory stays at about one range.
- Every range is requested with ``x-ms-range-get-content-md5``: the service sends the MD5 of
  that range and the SDK checks it, so bytes damaged in transit fail loudly instead of showing
  up as a "differ". Ranges after the first are bound to the first response's ETag: a blob
  replaced while it is read fails instead of mixing two versions.
- A missing blob is :class:`FileNotFoundError`; other failures are portshift errors without
  the SAS, raised ``from None``.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterator
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

from portshift import IntegrityError, PortshiftError, Reader, SinkError

from .client import connect, location_of
from .errors import error_code, translate
from .options import AzureOptions
from .sas import READ, inspect_sas, warn

log = logging.getLogger("portshift.sink.azure")

#: Bytes per ranged GET. 4 MiB is also the largest range the service will send an MD5 for.
READ_CHUNK = 4 * 1024 * 1024

#: Blobs per List Blobs page.
LIST_PAGE = 5000


class AzureReader(Reader):
    Options = AzureOptions
    description = "reads blobs back from Azure Blob Storage (SAS with read + list, sp=rl)"

    def __init__(self, options: AzureOptions) -> None:
        super().__init__(options)
        self.options: AzureOptions = options
        if options.sas is None:  # pragma: no cover - the options model requires it
            raise SinkError("no SAS token", retryable=False)
        # Options built from [store] were already checked (and warned about) for reading; options
        # built for [sink] were checked for writing, so check (and warn) here.
        self.sas_info = inspect_sas(options.sas, role=READ, section=options.section_name)
        if options.role != READ:
            warn(self.sas_info, options.section_name)
        self._base = options.account_url.rstrip("/")
        self._transport, self._service, self._container = connect(
            options, max_single_get_size=READ_CHUNK, max_chunk_get_size=READ_CHUNK
        )

    # --- names -------------------------------------------------------------------------------
    def location(self) -> str:
        return location_of(self.options)

    def blob_name(self, key: str) -> str:
        key = key.lstrip("/")
        if any(part in (".", "..") for part in key.split("/")):
            raise SinkError(f"refusing to read {key[:200]!r}: '.' and '..' are not blob name parts", retryable=False)
        return f"{self.options.prefix}/{key}" if self.options.prefix else key

    def _blob_location(self, name: str) -> str:
        return f"{self._base}/{self.options.container}/{urllib.parse.quote(name, safe='/')}"

    # --- the contract ------------------------------------------------------------------------
    def open(self, key: str) -> Iterator[bytes]:
        """The blob's bytes, in ranges of at most :data:`READ_CHUNK`; the first request is made
        here, so a missing blob raises :class:`FileNotFoundError` at once."""
        name = self.blob_name(key)
        location = self._blob_location(name)
        blob = self._container.get_blob_client(name)
        failure: PortshiftError | None = None
        downloader: Any = None
        try:
            downloader = blob.download_blob(max_concurrency=1, validate_content=True)
        except ResourceNotFoundError as e:
            if error_code(e) in ("BlobNotFound", ""):
                raise FileNotFoundError(location) from None
            failure = translate(e, "get blob", location, reading=True)
        except AzureError as e:
            failure = _translate(e, "get blob", location)
        if failure is not None:
            raise failure from None
        return self._ranges(downloader, location)

    def _ranges(self, downloader: Any, location: str) -> Iterator[bytes]:
        chunks = downloader.chunks()
        count = total = 0
        while True:
            failure: PortshiftError | None = None
            block = b""
            try:
                block = next(chunks)
            except StopIteration:
                log.debug("read %s: %d bytes in %d ranges", location, total, count)
                return
            except ResourceNotFoundError:
                # deleted between two ranges
                failure = SinkError(
                    "the blob disappeared while it was read", operation="get blob", status=404, location=location, retryable=True
                )
            except AzureError as e:
                failure = _translate(e, "get blob", location)
            if failure is not None:
                raise failure from None
            count += 1
            total += len(block)
            yield block

    def list(self, prefix: str) -> Iterator[str]:
        """Every committed blob whose name starts with ``prefix`` (relative to the configured
        prefix), relative to the configured prefix. Uncommitted blocks are not listed."""
        base = f"{self.options.prefix}/" if self.options.prefix else ""
        start = base + prefix.lstrip("/")
        location = self._blob_location(start)
        failure: PortshiftError | None = None
        pages: Any = None
        try:
            pages = self._container.list_blob_names(name_starts_with=start or None, results_per_page=LIST_PAGE).by_page()
        except AzureError as e:
            failure = _translate(e, "list blobs", location)
        if failure is not None:
            raise failure from None
        while True:
            names: list[str] = []
            try:
                names = list(next(pages))
            except StopIteration:
                return
            except AzureError as e:
                failure = _translate(e, "list blobs", location)
            if failure is not None:
                raise failure from None
            for name in names:
                if name.startswith(base):
                    yield name[len(base) :]

    def close(self) -> None:
        try:
            self._service.close()
        except Exception:  # noqa: BLE001 - closing must not fail a finished verification
            log.debug("closing the Azure client failed", exc_info=False)


def _translate(e: AzureError, operation: str, location: str) -> PortshiftError:
    if not isinstance(e, HttpResponseError) and "md5 mismatch" in str(getattr(e, "message", "") or e).lower():
        # the SDK's check of the per-range MD5 the service sent (validate_content)
        return IntegrityError(
            f"{operation} {location}: the MD5 of a range differs from the one Azure sent (bytes changed in transit)"
        )
    return translate(e, operation, location, reading=True)
