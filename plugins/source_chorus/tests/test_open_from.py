"""The media of a call opened from a byte offset, for an upload continued after a crash (issue
21): a Range request with If-Range; the exact rest of the same bytes, or ResumeRefused."""

from __future__ import annotations

import time

import pytest
from portshift_source_chorus import ChorusSource
from portshift_source_chorus.simulator import ChorusSimulator

from portshift import Artifact, ResumeRefused

from .conftest import WINDOW


def _media(source: ChorusSource, size: int) -> Artifact:
    """The media artifact of the call whose media has ``size`` bytes."""
    for rec in source.recordings(WINDOW):
        if rec.skipped is not None:
            continue
        try:
            arts = list(source.artifacts(rec))
        except Exception:  # noqa: BLE001 - calls the tenant makes unexportable
            continue
        for a in arts:
            if a.name == "media":
                opened = a.open()
                if opened.close:
                    opened.close()
                if opened.size == size:
                    return a
    raise AssertionError(f"no call with {size} bytes of media")


def _read(opened: object) -> bytes:
    return b"".join(opened.chunks)  # type: ignore[attr-defined]


def _media_bytes_settled(sim: ChorusSimulator) -> int:
    """The media bytes sent so far, once the simulator's threads have stopped writing and counting
    (those of the media ``_media`` opened and closed unread go on until the closed socket fails
    them; a piece is counted after its write returned, which can be after the client read it)."""
    last, same = sim.stats.media_bytes, 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sim.stats.media_bytes
        same = same + 1 if now == last else 0
        if same == 3:  # unchanged for 0.3 s
            return now
        last = now
    raise AssertionError("the simulator kept sending media for 10 s")


def test_the_rest_of_the_media_is_sent_from_the_offset_if_unchanged(source: ChorusSource, sim: ChorusSimulator) -> None:
    media = _media(source, 1_500_000)
    assert media.open_from is not None
    whole = media.open()
    data = _read(whole)
    assert whole.validator  # the media host's ETag
    before = _media_bytes_settled(sim)
    rest = media.open_from(1_048_576, whole.validator)
    assert rest.size == 1_500_000 and rest.validator == whole.validator  # the whole size, as the core checks it
    assert _read(rest) == data[1_048_576:]
    # the simulator counts a piece once its write returned: after the client may have read it
    assert _media_bytes_settled(sim) - before == 1_500_000 - 1_048_576  # only the rest was sent


def test_media_that_changed_since_is_refused_not_mixed(source: ChorusSource, sim: ChorusSimulator) -> None:
    media = _media(source, 1_500_000)
    assert media.open_from is not None
    # another ETag: the media host answers If-Range with the whole body (200), which is refused
    with pytest.raises(ResumeRefused, match=r"HTTP 200 to a range request \(it changed\)"):
        media.open_from(1_048_576, '"an-older-version"')
