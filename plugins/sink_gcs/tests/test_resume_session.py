"""``GcsSink.resume`` and ``recover`` against gcp-storage-emulator over TLS, in process, with the
canary service-account key: an upload stopped mid-file is journaled with its session sealed; the
session is continued from the journaled offset, also when GCS persisted one chunk more than the
journal heard of; anything else is refused in one line (and the session cancelled by recover);
without a key nothing is journaled. The end-to-end runs with SIGKILL are in test_resume_midfile."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator

import google_crc32c
import pytest
from portshift_sink_gcs import GcsSink
from portshift_sink_gcs.chunks import Digests
from portshift_sink_gcs.resuming import SessionResume

from portshift import Continuation, HashingStream, Interrupted, PortshiftError, ResumeRefused, hash_state
from portshift.resume import ResumePoint
from portshift.testing import RecordingJournal

from .conftest import CHUNK, CanaryKey, Server, TokenServer, key_secret, make_canary_key, unique

pytestmark = pytest.mark.skipif(not hash_state.available(), reason="this Python's OpenSSL offers no saveable hash")

SIZE = 10 * CHUNK + 1000
INFO = {"recording": "r1", "artifact": "media", "ext": "bin", "validator": None}


def _pieces(data: bytes, start: int = 0, stop_at: int | None = None) -> Iterator[bytes]:
    for i in range(start, len(data), 64 * 1024):
        if stop_at is not None and i >= stop_at:
            raise Interrupted("stopped")
        yield data[i : i + 64 * 1024]


def _stream(data: bytes, stop_at: int | None = None) -> HashingStream:
    stream = HashingStream(_pieces(data, stop_at=stop_at), expect_size=len(data))
    stream.resume_info = dict(INFO)
    return stream


def _stopped(sink: GcsSink, key: str, data: bytes, stop_at: int) -> dict[str, str]:
    """Upload ``data`` until the source stops at ``stop_at`` (Interrupted): the session is kept,
    journaled with the chunks GCS confirmed."""
    journal = RecordingJournal()
    sink.journal = journal
    with pytest.raises(Interrupted):
        sink.put(key, _stream(data, stop_at), len(data))
    (entry,) = [d for k, d in journal.pending() if k == key]
    assert not journal.misuse, journal.misuse
    return entry


def _lagging(entry: dict[str, str], data: bytes, lag: int) -> dict[str, str]:
    """The entry as the journal would hold it had the last ``lag`` confirmations been lost."""
    pieces = json.loads(entry["pieces"])[:-lag]
    offset = len(pieces) * CHUNK
    sha = hash_state.new("sha256")
    assert sha is not None
    sha.update(data[:offset])
    point = ResumePoint.decode(entry["resume"])
    assert point is not None
    moved = ResumePoint(offset, sha.export(), point.size, None, "r1", "media", "bin").encode()
    return {**entry, "pieces": json.dumps(pieces, separators=(",", ":")), "resume": moved}


def _continuation(key: str, entry: dict[str, str], data: bytes) -> Continuation:
    point = ResumePoint.decode(entry["resume"])
    assert point is not None

    def rest() -> HashingStream:
        stream = HashingStream(_pieces(data, point.offset), expect_size=len(data), resume=(point.offset, point.sha256_state))
        stream.resume_info = dict(INFO)
        return stream

    return Continuation(key=key, data=entry, offset=point.offset, size=len(data), _open=rest)


def _check_object(emulator: Server, name: str, data: bytes) -> None:
    assert emulator.admin.download(name) == data
    meta = emulator.admin.meta(name) or {}
    assert meta["crc32c"] == base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    assert meta["md5Hash"] == base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


@pytest.fixture
def keyed(make_sink: Callable[..., GcsSink], canary: CanaryKey) -> Callable[..., GcsSink]:
    return lambda key=canary, **kw: make_sink(key=key_secret(key), **kw)


@pytest.mark.parametrize("lag", [0, 1])
def test_a_stopped_upload_is_continued_in_its_session(emulator: Server, keyed: Callable[..., GcsSink], lag: int) -> None:
    """lag 1: GCS persisted a chunk whose confirmation the journal never got (a crash between the
    two): its bytes are read and hashed, not sent again, and the object is whole."""
    data, key = os.urandom(SIZE), unique("resume.bin")
    entry = _stopped(keyed(), key, data, stop_at=7 * CHUNK + 5000)
    assert entry["session"].startswith("gs1:") and "upload_id" not in json.dumps(entry)
    assert ResumePoint.decode(entry["resume"]).offset == 7 * CHUNK  # type: ignore[union-attr]
    entry = _lagging(entry, data, lag) if lag else entry
    sink = keyed()
    journal = sink.journal = RecordingJournal()
    before = emulator.admin.resumable()
    result = sink.resume(key, _continuation(key, entry, data), len(data))
    sent = emulator.admin.resumable()["received"] - before["received"]
    assert result.size == len(data)
    assert f"resumable upload continued at byte {(7 - lag) * CHUNK} after a stop" in result.verified
    assert sent == len(data) - 7 * CHUNK, "only the bytes GCS did not hold were sent"
    _check_object(emulator, sink.object_name(key), data)
    assert journal.pending() == [] and key in journal.ended
    assert emulator.admin.resumable()["open"] == before["open"] - 1


def test_more_than_a_chunk_beyond_the_journal_is_refused_and_recover_cancels(
    emulator: Server, keyed: Callable[..., GcsSink]
) -> None:
    data, key = os.urandom(SIZE), unique("resume.bin")
    entry = _lagging(_stopped(keyed(), key, data, stop_at=7 * CHUNK + 5000), data, 2)
    sink = keyed()
    sink.journal = RecordingJournal()
    with pytest.raises(ResumeRefused, match=f"GCS holds {7 * CHUNK} bytes of the session, the journal {5 * CHUNK}"):
        sink.resume(key, _continuation(key, entry, data), len(data))
    before = emulator.admin.resumable()
    sink.recover([(key, entry)])
    after = emulator.admin.resumable()
    assert (after["open"], after["cancelled"]) == (before["open"] - 1, before["cancelled"] + 1)
    assert emulator.admin.download(sink.object_name(key)) is None


def test_another_key_cannot_open_the_session(
    emulator: Server, keyed: Callable[..., GcsSink], token_server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    data, key = os.urandom(SIZE), unique("resume.bin")
    entry = _stopped(keyed(), key, data, stop_at=4 * CHUNK)
    other = make_canary_key(token_server.token_uri)
    token_server.public_pems.append(other.public_pem)
    sink = keyed(other)
    with pytest.raises(ResumeRefused, match="does not open with this service-account key"):
        sink.resume(key, _continuation(key, entry, data), len(data))
    before = emulator.admin.resumable()
    sink.recover([(key, entry)])  # it cannot cancel what it cannot open: left to GCS's week
    assert emulator.admin.resumable()["open"] == before["open"]
    keyed().recover([(key, entry)])  # the key it was sealed with can
    assert emulator.admin.resumable()["open"] == before["open"] - 1


def test_a_wrong_checksum_state_is_caught_by_gcs_at_finalize(emulator: Server, keyed: Callable[..., GcsSink]) -> None:
    """The whole-object CRC32C and MD5 sent at finalize are checked by GCS: a continued state that
    is wrong (here: the CRC32C altered in the journal) creates no object."""
    data, key = os.urandom(SIZE), unique("resume.bin")
    entry = _stopped(keyed(), key, data, stop_at=7 * CHUNK + 5000)
    pieces = json.loads(entry["pieces"])
    crc, _, md5 = pieces[-1].partition(" ")
    pieces[-1] = f"{(int(crc) + 1) % 2**32} {md5}"
    sink = keyed()
    sink.journal = RecordingJournal()
    with pytest.raises(PortshiftError, match="400"):
        sink.resume(key, _continuation(key, {**entry, "pieces": json.dumps(pieces)}, data), len(data))
    assert emulator.admin.download(sink.object_name(key)) is None


def test_without_a_key_no_session_is_journaled(
    make_sink: Callable[..., GcsSink], emulator: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous (and ADC) sinks have no secret to seal the session URI with: nothing is
    journaled, the session is cancelled when the upload stops, a crash means the file is sent
    again from byte 0 (said once, at info)."""
    data, key = os.urandom(SIZE), unique("resume.bin")
    sink = make_sink()
    journal = sink.journal = RecordingJournal()
    monkeypatch.setattr(SessionResume, "_warned_no_seal", False)
    caplog.set_level("INFO", logger="portshift.sink.gcs")
    before = emulator.admin.resumable()
    for _ in range(2):
        with pytest.raises(Interrupted):
            sink.put(key, _stream(data, stop_at=7 * CHUNK), len(data))
    assert journal.begun == [] and journal.pending() == []
    assert emulator.admin.resumable()["open"] == before["open"]
    assert [r.getMessage() for r in caplog.records].count(
        "GCS uploads stopped by a crash start again from byte 0: without a service-account key the resumable session "
        "(a credential) cannot be kept for the next run (see the GCS plugin's README)"
    ) == 1
    sink.put(key, _stream(data), len(data))
    _check_object(emulator, sink.object_name(key), data)


@pytest.mark.parametrize("saveable", [False, True])
def test_digests_take_views_of_a_reused_buffer(saveable: bool) -> None:
    """A large download read ahead hands the observers views of a reused bytearray (which
    google_crc32c refuses: a TypeError that failed every big Chorus recording into GCS before);
    the digests, and the states kept at chunk boundaries, are those of the bytes."""
    data = os.urandom(3 * CHUNK + 777)
    digests = Digests.saveable(CHUNK) if saveable else Digests()
    assert digests is not None
    buffer = bytearray(100_000)
    for i in range(0, len(data), len(buffer)):
        piece = data[i : i + len(buffer)]
        buffer[: len(piece)] = piece
        digests.update(memoryview(buffer)[: len(piece)])
    assert digests.values() == {
        "crc32c": base64.b64encode(google_crc32c.Checksum(data).digest()).decode(),
        "md5": base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
    }
    if saveable:
        resumed = Digests.resumed(digests.kept(2 * CHUNK), 2 * CHUNK, CHUNK)
        resumed.update(data[2 * CHUNK :])
        assert resumed.values() == digests.values()
