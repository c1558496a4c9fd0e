"""The built-in ``example`` source: a deterministic synthetic tenant, generated on the fly.

It needs no network and no credentials. It exists so that the pipeline can be tried, tested and
benchmarked without any SaaS account: ``count`` recordings spread over the window, each with a
``media`` file of ``media_size`` bytes (generated in constant memory) and a ``metadata`` JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

from pydantic import Field

from portshift import hookimpl
from portshift.api import Artifact, Opened, Recording, Source, Window
from portshift.options import PluginOptions

BLOCK = 64 * 1024


class ExampleOptions(PluginOptions):
    section = "source"
    count: int = Field(default=12, ge=0, le=10_000_000, description="recordings in the tenant")
    first: datetime = Field(
        default=datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc), description="start time of the first recording"
    )
    every_minutes: float = Field(default=24 * 60, gt=0, description="minutes between two recordings")
    media_size: int = Field(default=256 * 1024, ge=0, description="bytes of each media file")
    seed: int = Field(default=0, description="changes every byte generated")
    chunk_size: int = Field(default=BLOCK, ge=1, le=16 * 1024 * 1024, description="bytes per chunk yielded")


def synthetic_chunks(size: int, seed: str, chunk_size: int = BLOCK) -> Iterator[bytes]:
    """``size`` deterministic bytes in ``chunk_size`` pieces, constant memory."""
    block = hashlib.sha256(seed.encode()).digest() * (BLOCK // 32)
    sent = 0
    counter = 0
    while sent < size:
        # vary each block so that reordering or duplication would change the hash
        head = counter.to_bytes(8, "big")
        piece = head + block[8:]
        want = min(chunk_size, size - sent)
        if want <= len(piece):
            out = piece[:want]
        else:
            out = (piece * (want // len(piece) + 1))[:want]
        yield out
        sent += len(out)
        counter += 1


def synthetic_sha256(size: int, seed: str, chunk_size: int = BLOCK) -> str:
    h = hashlib.sha256()
    for piece in synthetic_chunks(size, seed, chunk_size):
        h.update(piece)
    return h.hexdigest()


class ExampleSource(Source):
    Options = ExampleOptions
    description = "a synthetic tenant generated on the fly (no network), for trials and tests"

    def location(self) -> str:
        return f"example:seed={self.options.seed}"

    def recordings(self, window: Window) -> Iterator[Recording]:
        first = self.options.first
        if first.tzinfo is None:
            first = first.replace(tzinfo=timezone.utc)
        step = timedelta(minutes=self.options.every_minutes)
        for i in range(self.options.count):
            started = first + step * i
            if started >= window.end:
                return
            if started >= window.start:
                if self.on_listing is not None and i % 100 == 0:
                    self.on_listing(f"{started.date().isoformat()} onwards")
                rid = f"ex{self.options.seed:04d}{i:06d}"
                yield Recording(id=rid, started_at=started, fields={"type": "meeting"}, size=self.options.media_size)

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        seed = f"{self.options.seed}:{recording.id}"
        size = self.options.media_size
        chunk = self.options.chunk_size
        yield Artifact(
            name="media",
            open=lambda: Opened(chunks=synthetic_chunks(size, seed, chunk), size=size, content_type="audio/mpeg"),
            extension="mp3",
            size=size,
            content_type="audio/mpeg",
        )
        meta = {
            "id": recording.id,
            "started_at": recording.started_at.isoformat() if recording.started_at else None,
            "title": f"Example call {recording.id}",
        }
        yield Artifact.from_bytes("metadata", json.dumps(meta, indent=2).encode(), "json", "application/json")


@hookimpl
def register_sources(register):  # type: ignore[no-untyped-def]
    register("example", ExampleSource)
