"""``check()`` for the GCS sink, and the bucket-location check behind ``allowed_regions``."""

from __future__ import annotations

import logging
import threading
import urllib.parse
import uuid
from typing import Any

from portshift import ConfigError, PortshiftError, check_failure, require_allowed

log = logging.getLogger("portshift.sink.gcs")


class BucketProbe:
    """The ``check()`` half of :class:`~.sink.GcsSink` (it supplies the HTTP calls)."""

    options: Any
    _endpoint: str
    _send: Any
    _where: Any
    _residency_lock: threading.Lock
    _residency_checked: bool
    _initiate: Any
    _cancel: Any
    object_name: Any
    _object_exists: type[Exception]

    def location(self) -> str:  # pragma: no cover - GcsSink's
        raise NotImplementedError

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
            except self._object_exists:  # a random name that exists: GCS checked the create permission
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


def _check_error(error: PortshiftError, location: str) -> PortshiftError:
    """What ``check()`` raises: a missing bucket is a configuration error, the rest as the core
    classifies a failed check (:func:`portshift.check_failure`)."""
    if getattr(error, "status", None) == 404:
        return ConfigError(
            f"[sink] bucket: {location} does not exist (GCS answered 404)",
            hint="check bucket and api_endpoint; the sink never creates buckets",
        )
    return check_failure(error)
