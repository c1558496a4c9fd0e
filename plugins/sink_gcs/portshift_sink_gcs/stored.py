"""What GCS stored: the object resource returned by an upload compared with what was sent, and,
when GCS refused an upload because the name is taken (412), the existing object compared with
the file just read (portshift never replaces an object)."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import requests

from portshift import IntegrityError, PutResult, SinkError

log = logging.getLogger("portshift.sink.gcs")


class StoredObjects:
    """The comparing half of :class:`~.sink.GcsSink` (it supplies the HTTP calls)."""

    options: Any
    _endpoint: str
    _send: Any
    _where: Any

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
