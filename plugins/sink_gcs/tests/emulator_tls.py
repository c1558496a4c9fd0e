"""Run gcp-storage-emulator over HTTPS, with what real GCS does that the emulator lacks.

    python emulator_tls.py --port P --cert server.pem --key server.key --bucket b [--bucket c]

gcp-storage-emulator (PyPI, pure Python) is the local GCS server that verifies ``crc32c`` and
``md5Hash`` like real GCS. This launcher, used only by the plugin's tests, adds:

1. **TLS**: the emulator has no flag for it; its ``http.server`` socket is wrapped with an
   ``ssl.SSLContext`` (TLS 1.2+) using the test CA's server certificate.
2. **https session URIs**: the emulator builds the resumable ``Location`` from a hard-coded
   ``http://`` base; it is rewritten to ``https://`` (otherwise the sink, rightly, refuses it).
3. **X-Goog-Hash at finalize**: real GCS checks the ``X-Goog-Hash: crc32c=…,md5=…`` header of
   the final request of a resumable upload against the whole object (google-cloud-storage
   sends it, see ``google/cloud/storage/_media/requests/upload.py``); the emulator checks only
   hashes given in the metadata. The header's values are put into the pending object's
   metadata, so the emulator's own check (and its 400 answer) applies.
4. **Cancel**: ``DELETE`` on a session URI cancels the session, answering 499 like GCS.
5. ``GET /_test/resumable``: ``{"open": N, "cancelled": M, "ids": [...], "received": B}`` so
   that tests can prove no session is left behind, look for a session's id where it must not be,
   and count the bytes of chunk bodies the server received; ``DELETE`` cancels every open session
   (a session lost between two runs).
6. **ifGenerationMatch=0** (the emulator ignores preconditions): a multipart upload, a
   resumable session's initiation and its finalizing request that carry it are refused with
   412 ``conditionNotMet`` when an object of that name exists (nothing is written; a refused
   session is dropped). fake-gcs-server honours it natively for multipart uploads only.
7. ``--hold-file PATH``: while PATH exists and holds a number N, a chunk whose
   ``Content-Range`` starts at byte N or later is held (the server is single-threaded: everything
   waits) until PATH is removed, then answered 503: a test kills the uploading process there.
"""

from __future__ import annotations

import argparse
import http.server
import os
import ssl
import sys
import threading
import time
from http import HTTPStatus
from types import SimpleNamespace

from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator import settings
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects
from gcp_storage_emulator.server import Request
from gcp_storage_emulator.storage import Storage

CANCELLED = {"count": 0}
RECEIVED = {"bytes": 0}
HOLD: dict[str, str] = {}
_lock = threading.Lock()

_original_init = Request.__init__


def _https_request_init(self, request_handler, method):  # type: ignore[no-untyped-def]
    _original_init(self, request_handler, method)
    plain = "http" + "://"
    if self._base_url.startswith(plain):
        self._base_url = "https://" + self._base_url[len(plain) :]
        self._full_url = self._base_url + self._path


Request.__init__ = _https_request_init  # type: ignore[method-assign]

_original_upload_partial = objects.upload_partial


def _held(request) -> bool:  # type: ignore[no-untyped-def]
    """Hold a chunk at or past the hold file's offset until the file is removed (see 7.)."""
    path = HOLD.get("file")
    try:
        at = int(open(path).read().strip()) if path else -1  # noqa: SIM115
    except (OSError, ValueError):
        return False
    start = (request.get_header("Content-Range", "") or "").removeprefix("bytes ").split("-", 1)[0]
    if at < 0 or not start.isdigit() or int(start) < at:
        return False
    deadline = time.monotonic() + 120
    while path and os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def _upload_partial_with_hash(request, response, storage, *args, **kwargs):  # type: ignore[no-untyped-def]
    if _held(request):
        response.status = HTTPStatus.SERVICE_UNAVAILABLE
        return None
    with _lock:
        RECEIVED["bytes"] += int(request.get_header("Content-Length", "0") or 0)
    header = request.get_header("X-Goog-Hash", "") or ""
    if header:
        try:
            obj = storage.get_resumable_file_obj(request.query.get("upload_id")[0])
        except Exception:  # noqa: BLE001 - the original handler answers 404
            obj = None
        if obj is not None:
            for part in header.split(","):
                kind, _, value = part.strip().partition("=")
                if kind == "crc32c":
                    obj["crc32c"] = value
                elif kind == "md5":
                    obj["md5Hash"] = value
    return _original_upload_partial(request, response, storage, *args, **kwargs)


def _cancel(request, response, storage, *args, **kwargs):  # type: ignore[no-untyped-def]
    upload_id = (request.query.get("upload_id") or [""])[0]
    try:
        storage.delete_resumable_file_obj(upload_id)
    except Exception:  # noqa: BLE001
        response.status = HTTPStatus.NOT_FOUND
        return
    try:
        storage._delete_file("_resumable", storage.safe_id(upload_id))
    except Exception:  # noqa: BLE001, S110
        pass
    with _lock:
        CANCELLED["count"] += 1
    response.status = SimpleNamespace(value=499, phrase="Client Closed Request")


class _PreconditionFailed(Exception):
    pass


#: set while a request with ifGenerationMatch=0 is handled (the server is single-threaded)
_absent_only = threading.local()
_original_create_file = Storage.create_file


def _exists(storage, bucket, name):  # type: ignore[no-untyped-def]
    try:
        storage.get_file_obj(bucket, name)
    except NotFound:
        return False
    return True


def _create_file_if_absent(self, bucket_name, file_name, content, file_obj, file_id=None):  # type: ignore[no-untyped-def]
    if getattr(_absent_only, "on", False) and _exists(self, bucket_name, file_name):
        if file_id is not None:  # a finalizing request: the session is over
            try:
                self.delete_resumable_file_obj(file_id)
            except Exception:  # noqa: BLE001, S110
                pass
        raise _PreconditionFailed()
    return _original_create_file(self, bucket_name, file_name, content, file_obj, file_id)


Storage.create_file = _create_file_if_absent  # type: ignore[method-assign]


def _precondition_failed(response):  # type: ignore[no-untyped-def]
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json(
        {
            "error": {
                "code": 412,
                "message": "At least one of the pre-conditions you specified did not hold.",
                "errors": [
                    {
                        "domain": "global",
                        "reason": "conditionNotMet",
                        "message": "At least one of the pre-conditions you specified did not hold.",
                        "locationType": "header",
                        "location": "If-Match",
                    }
                ],
            }
        }
    )


def _honouring_if_generation_match(handler, initiation):  # type: ignore[no-untyped-def]
    def wrapped(request, response, storage, *args, **kwargs):  # type: ignore[no-untyped-def]
        absent_only = (request.query.get("ifGenerationMatch") or [""])[0] == "0"
        if absent_only and initiation and (request.query.get("uploadType") or [""])[0] == "resumable":
            meta = request.data if isinstance(request.data, dict) else {}
            name = (request.query.get("name") or [meta.get("name")])[0]
            if name and _exists(storage, request.params["bucket_name"], name):
                _precondition_failed(response)
                return None
        _absent_only.on = absent_only
        try:
            return handler(request, response, storage, *args, **kwargs)
        except _PreconditionFailed:
            _precondition_failed(response)
            return None
        finally:
            _absent_only.on = False

    return wrapped


def _test_status(request, response, storage, *args, **kwargs):  # type: ignore[no-untyped-def]
    response.json(
        {
            "open": len(storage.resumable),
            "cancelled": CANCELLED["count"],
            "ids": list(storage.resumable),
            "received": RECEIVED["bytes"],
        }
    )


def _test_cancel_all(request, response, storage, *args, **kwargs):  # type: ignore[no-untyped-def]
    for upload_id in list(storage.resumable):
        storage.delete_resumable_file_obj(upload_id)
    response.json({"open": len(storage.resumable)})


def _patch_routes() -> None:
    upload_re = rf"^{settings.UPLOAD_API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o$"
    for regex, handlers in emu_server.HANDLERS:
        if regex == upload_re:
            handlers[emu_server.POST] = _honouring_if_generation_match(handlers[emu_server.POST], True)
            handlers[emu_server.PUT] = _honouring_if_generation_match(_upload_partial_with_hash, False)
            handlers[emu_server.DELETE] = _cancel
    emu_server.HANDLERS = (
        (r"^/_test/resumable$", {emu_server.GET: _test_status, emu_server.DELETE: _test_cancel_all}),
        *emu_server.HANDLERS,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--bucket", action="append", default=[])
    parser.add_argument("--hold-file", default="")
    args = parser.parse_args()
    if args.hold_file:
        HOLD["file"] = args.hold_file

    _patch_routes()
    storage = Storage(use_memory_fs=True)
    for name in args.bucket:
        buckets.create_bucket(name, storage)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)

    def handler(*a, **kw):  # type: ignore[no-untyped-def]
        return emu_server.RequestHandler(storage, *a, **kw)

    httpd = http.server.HTTPServer(("127.0.0.1", args.port), handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print("ready", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        httpd.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
