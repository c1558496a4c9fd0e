"""A test-only plugin that kills its own process at a chosen point (SIGKILL: no cleanup at all).

Loaded into a real ``portshift run`` subprocess through a fake distribution on PYTHONPATH. The
kill point comes from the environment, not the job file, so the crash run and the resume run are
the same job: ``PORTSHIFT_TEST_KILL=<phase>:<n>`` with phase one of

- ``list``      while listing, after n recordings were listed
- ``download``  in the middle of reading the n-th artifact from the source
- ``upload``    in the middle of writing the n-th object into the sink
- ``committed`` after the n-th object is stored, before the state knows it
- ``recorded``  after the n-th file was recorded as done
- ``manifest``  in the middle of writing the manifest
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

from portshift import hookimpl
from portshift.api import Artifact, Opened, Recording, Window
from portshift.default_plugins.example_source import ExampleSource
from portshift.default_plugins.local_sink import LocalSink
from portshift.hashing import HashingStream

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _spec() -> tuple[str, int]:
    raw = os.environ.get("PORTSHIFT_TEST_KILL", "")
    if ":" not in raw:
        return "", 0
    phase, n = raw.split(":", 1)
    return phase, int(n)


def _tick(phase: str) -> bool:
    want, n = _spec()
    if want != phase:
        return False
    with _lock:
        _counts[phase] = _counts.get(phase, 0) + 1
        return _counts[phase] == n


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class FaultySource(ExampleSource):
    def recordings(self, window: Window) -> Iterator[Recording]:
        for rec in super().recordings(window):
            if _tick("list"):
                die()
            yield rec

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        for art in super().artifacts(recording):
            inner = art.open

            def open_(inner=inner) -> Opened:  # noqa: ANN001
                opened = inner()
                if not _tick("download"):
                    return opened

                def chunks() -> Iterator[bytes]:
                    # die when asked for more after the first chunk: some bytes are in flight
                    for c in opened.chunks:
                        yield c
                        die()
                    die()

                return Opened(chunks=chunks(), size=opened.size, content_type=opened.content_type)

            yield Artifact(
                name=art.name,
                open=open_,
                extension=art.extension,
                size=art.size,
                sha256=art.sha256,
                content_type=art.content_type,
            )


class FaultySink(LocalSink):
    def put(self, key: str, stream: HashingStream, size: int | None = None):  # noqa: ANN201
        manifest = key.endswith("portshift-manifest.txt")
        if (manifest and _tick("manifest")) or (not manifest and _tick("upload")):
            pieces, views = stream.chunks, stream.views

            def chunks(size: int) -> Iterator[bytes]:
                # die after the sink wrote the first piece into its temporary file
                for piece in pieces(size):
                    yield piece
                    die()

            def views_then_die() -> Iterator[memoryview]:  # the same for a sink reading buffers
                for piece in views():
                    yield piece
                    die()

            stream.chunks = chunks  # type: ignore[method-assign]
            stream.views = views_then_die  # type: ignore[method-assign]
        result = super().put(key, stream, size)
        if not manifest and _tick("committed"):
            die()
        return result


@hookimpl
def register_sources(register):  # noqa: ANN001, ANN201
    register("faulty-example", FaultySource)


@hookimpl
def register_sinks(register):  # noqa: ANN001, ANN201
    register("faulty-local", FaultySink)


@hookimpl
def file_exported(job, file):  # noqa: ANN001, ANN201
    if _tick("recorded"):
        die()
