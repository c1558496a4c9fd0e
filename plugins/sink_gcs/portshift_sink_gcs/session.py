"""The requests of a GCS resumable session: initiate, send a chunk, ask what is persisted, cancel.

Mixed into :class:`~.sink.GcsSink`, which supplies ``_send`` (one request with retries) and the
HTTP session. The session URI is a capability: it is registered as a mask as soon as GCS hands it
out, never logged, and must be https on the configured endpoint's host.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

from portshift import PortshiftError, SinkError, register_mask

from .chunks import persisted_of

log = logging.getLogger("portshift.sink.gcs")

#: Sent with every upload: create the object only if none exists under the name.
_ONLY_IF_ABSENT = {"ifGenerationMatch": "0"}


class SessionGone(Exception):
    """GCS no longer has the resumable session (cancelled, expired, or finished and forgotten)."""


def check_session_uri(uri: str, host: str) -> bool:
    """Whether ``uri`` is https on ``host`` (the configured endpoint's): the only place the sink
    sends data and its bearer token to."""
    parts = urllib.parse.urlsplit(uri)
    return parts.scheme == "https" and parts.netloc.lower() == host


def mask_session_uri(uri: str) -> None:
    if uri:
        register_mask(uri)
        for value in urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("upload_id", []):
            register_mask(value)
            register_mask(urllib.parse.quote(value, safe=""))


class SessionRequests:
    """The resumable-session half of :class:`~.sink.GcsSink`."""

    _session: Any
    _timeout: Any
    _host: str
    _send: Any
    _attempts: Any
    _upload_url: Any
    _metadata: Any

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
        mask_session_uri(session_uri)
        if not check_session_uri(session_uri, self._host):
            # never send data (or the bearer token) anywhere but the configured endpoint: such a
            # session cannot even be cancelled; GCS drops unused sessions after a week
            raise SinkError(
                "GCS returned a resumable session URI that is not https on the configured endpoint's host",
                operation="start resumable upload",
                location=where,
                retryable=False,
            )
        return session_uri

    def _chunk(self, session_uri: str, where: str, chunk: bytes, offset: int, start: int = 0) -> None:
        """PUT one non-final chunk (from its byte ``start``: GCS holds the ones before); resend
        what GCS did not persist."""
        end = offset + len(chunk)
        pos = offset + start
        attempts = self._attempts("upload chunk")
        while pos < end:
            piece = chunk[pos - offset :]
            headers = {"Content-Range": f"bytes {pos}-{end - 1}/*"}
            try:
                response = self._send(
                    "PUT", session_uri, "upload chunk", where, ok=(308,), data=piece, headers=headers, retry=False
                )
                persisted = persisted_of(response)
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

    def _status(self, session_uri: str, where: str) -> int:
        """Bytes GCS persisted in the session, or -1 when the upload is already complete."""
        response = self._send(
            "PUT", session_uri, "query upload status", where, ok=(200, 201, 308), data=b"", headers={"Content-Range": "bytes */*"}
        )
        response.close()
        if response.status_code in (200, 201):
            return -1
        return persisted_of(response)

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

    def _persisted(self, session_uri: str, where: str) -> int:
        """Bytes GCS holds in a session another process began (``-1``: the upload is finished);
        :class:`SessionGone` when GCS does not know the session (404, 410, 499)."""
        try:
            return self._status(session_uri, where)  # type: ignore[no-any-return]
        except PortshiftError as e:
            if getattr(e, "status", None) in (404, 410, 499):
                raise SessionGone() from None
            raise
