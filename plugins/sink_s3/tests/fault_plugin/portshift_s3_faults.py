"""A test-only plugin that SIGKILLs its own ``portshift run`` at a chosen point of an S3 export.

Loaded into a real ``portshift run`` subprocess through a fake distribution on PYTHONPATH (see
``tests/test_crash_resume.py``). The kill point comes from the environment, not the job file, so
the crash run and the resume run are the same job: ``PORTSHIFT_TEST_KILL=<phase>:<n>[:<part>]``.
Counting is per phase and starts at 1; SIGKILL means no cleanup of any kind.

- ``list:n``         while listing, after n recordings were listed
- ``download:n``     the n-th artifact opened from the source: everything but its last chunk is
                     read, then the process dies (for media above the part size, part 1 is
                     already uploaded or in flight: the multipart upload is open)
- ``upload:n``       the n-th object put into S3: dies with half of the body of its first
                     request on the wire (PutObject, or an UploadPart of a multipart upload)
- ``part:n:p``       the n-th multipart upload: dies with half of part p's body on the wire
- ``complete:n``     the n-th multipart upload: dies with half of CompleteMultipartUpload's body
                     on the wire (every part is stored)
- ``created:n``      the n-th multipart upload: dies as soon as CreateMultipartUpload answered,
                     before the sink journals the upload id
- ``completed:n``    the n-th multipart upload: dies as soon as CompleteMultipartUpload answered,
                     before the sink ends its journal entry and returns
- ``committed:n``    after the n-th object is stored (S3 confirmed it), before the state knows
- ``committed-mp:n`` the same, counting only the objects stored by a multipart upload
- ``recorded:n``     after the n-th file was recorded as done in the state DB
- ``manifest:n``     the n-th manifest file put (the JSON index, then portshift-manifest.txt):
                     dies with half of its PutObject body on the wire

The source (``faulty-example``) is the built-in example source with ``large_every`` /
``large_size``: every ``large_every``-th recording's media is ``large_size`` bytes, so that it
goes up as a multipart upload while the rest stay small.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from portshift_sink_s3 import S3Sink
from pydantic import Field

from portshift import hookimpl
from portshift.api import Artifact, Opened, PutResult, Recording, Window
from portshift.default_plugins.example_source import ExampleOptions, ExampleSource, synthetic_chunks
from portshift.hashing import HashingStream

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _spec() -> tuple[str, int, int]:
    parts = os.environ.get("PORTSHIFT_TEST_KILL", "").split(":")
    if len(parts) < 2:
        return "", 0, 0
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 0


def _tick(phase: str) -> bool:
    want, n, _ = _spec()
    if want != phase:
        return False
    with _lock:
        _counts[phase] = _counts.get(phase, 0) + 1
        return _counts[phase] == n


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# --- source -------------------------------------------------------------------------------------


class FaultyExampleOptions(ExampleOptions):
    large_every: int = Field(default=0, ge=0, description="every n-th recording gets large media (0: none)")
    large_size: int = Field(default=0, ge=0, description="bytes of a large media file")


def is_large(index: int, every: int) -> bool:
    return every > 0 and index % every == every // 2


class FaultySource(ExampleSource):
    Options = FaultyExampleOptions

    def recordings(self, window: Window) -> Iterator[Recording]:
        for rec in super().recordings(window):
            if _tick("list"):
                die()
            yield rec

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        opts = self.options
        for art in super().artifacts(recording):
            if art.name == "media" and is_large(int(recording.id[-6:]), opts.large_every):
                size, seed, chunk = opts.large_size, f"{opts.seed}:{recording.id}", opts.chunk_size

                def large(size: int = size, seed: str = seed, chunk: int = chunk) -> Opened:
                    return Opened(chunks=synthetic_chunks(size, seed, chunk), size=size, content_type="audio/mpeg")

                art = Artifact(name=art.name, open=large, extension=art.extension, size=size, content_type=art.content_type)
            yield self._dying(art)

    @staticmethod
    def _dying(art: Artifact) -> Artifact:
        inner = art.open

        def open_() -> Opened:
            opened = inner()
            if not _tick("download"):
                return opened

            def chunks() -> Iterator[bytes]:
                # hold one chunk back: everything but the last one reaches the sink, then death
                held: bytes | None = None
                for c in opened.chunks:
                    if held is not None:
                        yield held
                    held = c
                die()

            return Opened(chunks=chunks(), size=opened.size, content_type=opened.content_type)

        return Artifact(
            name=art.name, open=open_, extension=art.extension, size=art.size, sha256=art.sha256, content_type=art.content_type
        )


# --- sink ---------------------------------------------------------------------------------------


class DyingBody:
    """A request body that hands out its first half, then kills the process when asked for more:
    the request's headers and half of its body are on the wire when the process dies."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.half = max(1, len(data) // 2)

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.half:
            die()
        end = self.half if n is None or n < 0 else min(self.half, self.pos + n)
        out = self.data[self.pos : end]
        self.pos = end
        return out


class FaultyS3Sink(S3Sink):
    """The real S3 sink; botocore event handlers on its own client place the kills."""

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        self._armed: dict[str, tuple[str, ...]] = {}  # URL path -> operations to die in
        self._armed_part: dict[str, int] = {}
        events = self.client.meta.events
        for op in ("PutObject", "UploadPart", "CompleteMultipartUpload", "CreateMultipartUpload"):
            events.register_first(f"before-send.s3.{op}", self._before_send, unique_id=f"faults-{op}")
        events.register_first("after-call.s3.CreateMultipartUpload", self._answered("created"), unique_id="faults-created")
        events.register_first("after-call.s3.CompleteMultipartUpload", self._answered("completed"), unique_id="faults-completed")

    def _path(self, key: str) -> str:
        return f"/{self.options.bucket}/{self._full_key(key)}"

    def _arm(self, path: str, *ops: str, part: int = 0) -> None:
        with _lock:
            self._armed[path] = ops
            if part:
                self._armed_part[path] = part

    def _before_send(self, request: Any, **_: Any) -> None:
        url = urlsplit(request.url)
        path = unquote(url.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if request.method == "POST" and "uploads" in query:  # CreateMultipartUpload
            _, _, part = _spec()
            if _tick("part"):
                self._arm(path, "UploadPart", part=part or 1)
            elif _tick("complete"):
                self._arm(path, "CompleteMultipartUpload")
            return None
        if request.method == "POST":
            op = "CompleteMultipartUpload"
        elif "partNumber" in query:
            op = "UploadPart"
        else:
            op = "PutObject"
        with _lock:
            ops = self._armed.get(path, ())
            want_part = self._armed_part.get(path, 0)
        if op not in ops:
            return None
        if op == "UploadPart" and want_part and int(query["partNumber"][0]) != want_part:
            return None
        body = request.body
        data = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else body.read()
        request.body = DyingBody(data)
        return None

    @staticmethod
    def _answered(phase: str) -> Any:
        def handler(http_response: Any = None, **_: Any) -> None:
            if http_response is not None and http_response.status_code == 200 and _tick(phase):
                die()

        return handler

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        manifest = key.rsplit("/", 1)[-1].startswith("portshift-manifest")
        if manifest and _tick("manifest"):
            self._arm(self._path(key), "PutObject")
        if not manifest and _tick("upload"):
            self._arm(self._path(key), "PutObject", "UploadPart")
        result = super().put(key, stream, size)
        if not manifest:
            if _tick("committed"):
                die()
            if "s3-sha256-composite" in result.checksums and _tick("committed-mp"):
                die()
        return result


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("faulty-example", FaultySource)


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("faulty-s3", FaultyS3Sink)


@hookimpl
def file_exported(job, file):  # type: ignore[no-untyped-def]
    if _tick("recorded"):
        die()
