"""The Chorus simulator, started in-process on free loopback ports over HTTPS, and helpers that
export a whole window through the source and compare every byte with what the tenant holds.

The simulator's token is a canary: tests grep logs, errors and files for it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from portshift_source_chorus import ChorusOptions, ChorusSource
from portshift_source_chorus.options import DEFAULT_FIELDS
from portshift_source_chorus.simulator import Behaviour, ChorusSimulator, Faults, MediaConfig, Paging, Tenant, TenantSpec

from portshift import ArtifactMissing, RecordingPending, Secret, SkipRecording, Window
from portshift.testing import PlainListener, read_artifact

CANARY = "CANARY-chorus-tok-7f3a9e21"
WINDOW = Window(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 4, 1, tzinfo=timezone.utc))


def tenant(**kw: Any) -> Tenant:
    spec = dict(
        calls=48,
        seed=11,
        media_size=(1, 300_000),
        media_sizes={3: 0, 5: 1_500_000},  # one call with empty media, one with several chunks
        not_found_ratio=0.06,
        forbidden_ratio=0.06,
    )
    spec.update(kw)
    return Tenant(TenantSpec(**spec))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def simulator() -> Iterator[ChorusSimulator]:
    with ChorusSimulator(tenant(), token=CANARY) as sim:
        yield sim


@pytest.fixture
def sim(simulator: ChorusSimulator) -> Iterator[ChorusSimulator]:
    """The session simulator with default behaviour; whatever a test configures is undone."""
    simulator.configure(faults=Faults(), paging=Paging(), media=MediaConfig(), behaviour=Behaviour())
    yield simulator
    simulator.configure(faults=Faults(), paging=Paging(), media=MediaConfig(), behaviour=Behaviour())


@pytest.fixture
def plain() -> Iterator[PlainListener]:
    """A plain TCP listener (the kit's): its ``connections`` and ``received`` must stay empty."""
    with PlainListener() as listener:
        yield listener


@pytest.fixture
def window() -> Window:
    return WINDOW


def options(sim: ChorusSimulator, **kw: Any) -> ChorusOptions:
    base: dict[str, Any] = dict(
        base_url=sim.base_url,
        token=Secret(CANARY, "token"),
        ca_bundle=sim.ca_path,
        requests_per_second=0,
        backoff_base=0.01,
        backoff_cap=0.05,
        connect_timeout=5,
        read_timeout=5,
    )
    base.update(kw)
    return ChorusOptions(**base)


class Sleeps:
    """Records the delays the client chose; sleeps ``scale`` of each (0: not at all)."""

    def __init__(self, scale: float = 0.0) -> None:
        self.delays: list[float] = []
        self.scale = scale

    def __call__(self, seconds: float) -> None:
        import time

        self.delays.append(seconds)
        if self.scale:
            time.sleep(seconds * self.scale)


def make_source(sim: ChorusSimulator, sleeps: Sleeps | None = None, **kw: Any) -> ChorusSource:
    source = ChorusSource(options(sim, **kw))
    source.client.sleep = sleeps if sleeps is not None else Sleeps()
    return source


@pytest.fixture
def source(sim: ChorusSimulator) -> Iterator[ChorusSource]:
    s = make_source(sim)
    yield s
    s.close()


read = read_artifact  #: the kit's: open once, read whole, close


@dataclass
class Export:
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  #: call id -> artifact -> bytes
    extensions: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  #: call id -> reason
    pending: dict[str, str] = field(default_factory=dict)  #: call id -> reason (processing, live...)
    missing: dict[str, dict[str, str]] = field(default_factory=dict)  #: call id -> artifact -> reason
    listed: list[str] = field(default_factory=list)


def export_all(source: ChorusSource, window: Window = WINDOW) -> Export:
    """What the core does, minus the sink: list, then open and read every artifact; a recording
    listed as pending or skipped, or whose ``artifacts()`` says so, is recorded with its reason."""
    out = Export()
    for rec in source.recordings(window):
        out.listed.append(rec.id)
        try:
            if rec.skipped is not None:
                raise rec.skipped
            artifacts = list(source.artifacts(rec))
            got: dict[str, bytes] = {}
            exts: dict[str, str] = {}
            for a in artifacts:
                try:
                    data, opened = read(a)
                except ArtifactMissing as e:
                    out.missing.setdefault(rec.id, {})[a.name] = e.reason
                    continue
                if opened.size is not None:
                    assert len(data) == opened.size, f"{rec.id}/{a.name}: short read accepted"
                if a.sha256:
                    assert hashlib.sha256(data).hexdigest() == a.sha256
                got[a.name] = data
                exts[a.name] = opened.extension or a.extension
        except RecordingPending as e:
            out.pending[rec.id] = e.reason
            continue
        except SkipRecording as e:
            out.skipped[rec.id] = e.reason
            continue
        out.files[rec.id] = got
        out.extensions[rec.id] = exts
    return out


EXT = {"video/mp4": "mp4", "audio/mpeg": "mp3", "audio/mp4": "m4a", "audio/wav": "wav"}


def check_export(
    sim: ChorusSimulator,
    got: Export,
    window: Window = WINDOW,
    artifacts: tuple[str, ...] | None = None,
    **flags: bool,
) -> None:
    """Every call listed in the window yielded exactly once and ending in one outcome: exported
    (each artifact byte-identical to the tenant's truth, media missing where the tenant has none),
    pending (not processed yet) or skipped with its reason (hidden from the token's user, nothing
    recorded). Nothing dropped."""
    t = sim.tenant
    outcomes = t.outcomes(window.start, window.end, **flags)
    assert len(got.listed) == len(set(got.listed)), "a call was listed twice"
    assert sorted(got.listed) == sorted(outcomes), "a listed call was dropped, or one outside the window yielded"
    wanted = artifacts or ("media", "transcript", "captions", "metadata")
    for cid, outcome in outcomes.items():
        c = t.by_id[cid]
        kind, _, reason = outcome.partition(":")
        if kind == "pending":
            assert got.pending.get(cid) == reason, (cid, outcome)
            continue
        if kind == "skipped":
            assert got.skipped.get(cid) == reason, (cid, outcome)
            continue
        if kind == "metadata":
            if "metadata" not in wanted:
                assert got.skipped.get(cid) == "no_recording"
            else:
                assert sorted(got.files[cid]) == ["metadata"]
            continue
        if c.hidden and {"media", "transcript", "captions"} & set(wanted):  # 403/404 once asked: skipped
            assert got.skipped.get(cid) == c.hidden, (cid, got.skipped.get(cid))
            continue
        files = got.files[cid]
        expect = [a for a in wanted if not (a == "media" and not c.has_media)]
        assert sorted(files) == sorted(expect), cid
        if not c.has_media and "media" in wanted:
            assert got.missing[cid] == {"media": "media_not_found"}
        else:
            assert cid not in got.missing, got.missing.get(cid)
        if "media" in files:
            media = files["media"]
            assert len(media) == c.media_size
            assert hashlib.sha256(media).hexdigest() == t.media_sha256(cid), cid
            assert got.extensions[cid]["media"] == EXT[c.content_type]
        if "transcript" in wanted:
            assert files["transcript"] == t.conversation_bytes(cid, set(DEFAULT_FIELDS))
        if "metadata" in wanted:
            assert json.loads(files["metadata"]) == t.engagement(c)
        if "captions" in wanted:
            assert files["captions"].startswith(b"WEBVTT\n")
    # an export reads: no request that would change the tenant (a write, a summary generation)
    assert sim.stats.writes == [], sim.stats.writes
