"""Saveable hashes and the resume points a sink journals (issue 21): a state saved in one process
and taken up in another gives hashlib's digest; a point names its offset exactly; nothing of the
content is in it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from portshift import HashingStream, ResumableUpload, ResumeRefused, hash_state
from portshift.resume import ResumePoint, resume_above

KiB = 1024


def test_openssl_gives_saveable_hashes_here() -> None:
    # every machine portshift is tested on must resume: a missing libcrypto is a failure here
    assert hash_state.available()


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
@pytest.mark.parametrize("cut", [0, 64, 64 * 1000, 1024 * KiB])
def test_a_state_saved_anywhere_on_a_block_boundary_gives_hashlibs_digest(algorithm: str, cut: int) -> None:
    data = os.urandom(1024 * KiB + 77)
    first = hash_state.new(algorithm)
    assert first is not None
    first.update(data[:cut])
    state = first.export()
    again = hash_state.restore(state)
    assert again.length == cut
    again.update(memoryview(data)[cut:].toreadonly())  # a read-only view goes through without a copy
    assert again.hexdigest() == hashlib.new(algorithm, data).hexdigest()
    first.update(bytearray(data[cut:]))
    assert first.digest() == hashlib.new(algorithm, data).digest()


def test_a_state_is_taken_up_in_another_process() -> None:
    data = bytes(range(256)) * 4096
    h = hash_state.new()
    assert h is not None
    h.update(data[: 512 * KiB])
    code = (
        "import sys; from portshift import hash_state; h = hash_state.restore(sys.argv[1]); "
        "h.update((bytes(range(256)) * 4096)[512 * 1024:]); print(h.hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code, h.export()], capture_output=True, text=True, check=True).stdout.strip()
    assert out == hashlib.sha256(data).hexdigest()


def test_a_state_is_saved_only_on_a_block_boundary_and_bad_text_is_refused() -> None:
    h = hash_state.new()
    assert h is not None
    h.update(b"x" * 65)
    with pytest.raises(ValueError, match="multiple of 64"):
        h.export()
    for text in ("", "sha256-v1:zz", "sha256-v1:" + "00" * 39, "sha1-v1:" + "00" * 40, "md5-v1:" + "00" * 40):
        with pytest.raises(ValueError, match="not a saved hash state"):
            hash_state.restore(text)


def _stream(data: bytes, chunk: int) -> HashingStream:
    return HashingStream((data[i : i + chunk] for i in range(0, len(data), chunk)), expect_size=len(data))


@pytest.mark.parametrize("chunk", [1000, 64 * KiB, 300 * KiB])  # chunks that straddle the part boundaries
def test_a_stream_keeps_the_state_at_each_part_boundary_and_a_resumed_stream_ends_with_the_same_digest(chunk: int) -> None:
    data = os.urandom(1000 * KiB)
    part = 256 * KiB
    s = _stream(data, chunk)
    s.resume_info = {"recording": "r1", "artifact": "media", "ext": "mp4", "validator": '"e1"'}
    assert s.keep_states(part)
    got = b"".join(s.chunks(part))
    assert got == data and s.sha256_hex() == hashlib.sha256(data).hexdigest()
    text = s.resume_point(2 * part)
    assert text is not None
    point = ResumePoint.decode(text)
    assert point is not None and point.offset == 2 * part and point.size == len(data)
    assert (point.recording_id, point.artifact, point.extension, point.validator) == ("r1", "media", "mp4", '"e1"')
    assert s.resume_point(part) is None  # given once, and the older ones are gone with it
    rest = data[point.offset :]
    resumed = HashingStream(iter([rest]), expect_size=len(data), resume=(point.offset, point.sha256_state))
    assert resumed.bytes_read == point.offset
    assert resumed.read() == rest and resumed.finished
    assert resumed.sha256_hex() == hashlib.sha256(data).hexdigest()
    assert data[:64].hex() not in text and data[point.offset - 64 : point.offset].hex() not in text  # no content


def test_nothing_is_kept_when_the_core_does_not_offer_it_or_the_part_size_is_odd() -> None:
    s = _stream(b"a" * 1000, 100)
    assert not s.keep_states(256 * KiB)  # no resume_info: the core did not offer it
    s.resume_info = {"recording": "r", "artifact": "a", "ext": "bin", "validator": None}
    assert not s.keep_states(1000)  # not a multiple of 64
    s.read(10)
    with pytest.raises(RuntimeError, match="before the first read"):
        s.keep_states(1024)


def test_a_resume_state_at_another_offset_is_refused() -> None:
    h = hash_state.new()
    assert h is not None
    h.update(b"y" * 128)
    with pytest.raises(ValueError, match="not at the offset"):
        HashingStream(iter([b""]), resume=(64, h.export()))
    md5 = hash_state.new("md5")
    assert md5 is not None
    with pytest.raises(ValueError, match="not a saved SHA-256"):
        HashingStream(iter([b""]), resume=(0, md5.export()))


class _Journal:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, str]]] = []

    def begin(self, key: str, data: dict[str, str]) -> None:
        self.entries.append((key, data))

    def end(self, key: str) -> None:
        pass


def test_a_resumable_upload_journals_only_the_pieces_stored_in_a_row() -> None:
    data = os.urandom(4 * 128 * KiB + 10)
    s = _stream(data, 100 * KiB)
    s.resume_info = {"recording": "r", "artifact": "media", "ext": "bin", "validator": None}
    journal = _Journal()
    up = ResumableUpload(journal, "root/r/media.bin", {"upload_id": "u1"}, s, 128 * KiB)  # type: ignore[arg-type]
    assert up.enabled
    pieces = list(s.chunks(128 * KiB))
    assert b"".join(pieces) == data
    up.confirmed(1, "sum-2")  # the second piece first: nothing in a row yet
    assert journal.entries == []
    up.confirmed(0, "sum-1")
    up.confirmed(3, "sum-4")
    up.confirmed(2, "sum-3")
    assert [json.loads(d["pieces"]) for _, d in journal.entries] == [["sum-1", "sum-2"], ["sum-1", "sum-2", "sum-3", "sum-4"]]
    key, last = journal.entries[-1]
    assert key == "root/r/media.bin" and last["upload_id"] == "u1" and last["piece_size"] == str(128 * KiB)
    assert up.journaled and up.stored == 4 * 128 * KiB
    assert ResumableUpload.pieces_of(last, 4 * 128 * KiB) == (128 * KiB, ["sum-1", "sum-2", "sum-3", "sum-4"])
    with pytest.raises(ResumeRefused, match="do not add up"):
        ResumableUpload.pieces_of(last, 3 * 128 * KiB)


def test_the_size_from_which_uploads_are_kept_resumable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTSHIFT_RESUME_ABOVE", raising=False)
    assert resume_above() == 64 * 1024 * KiB
    monkeypatch.setenv("PORTSHIFT_RESUME_ABOVE", "16MiB")
    assert resume_above() == 16 * 1024 * KiB
    monkeypatch.setenv("PORTSHIFT_RESUME_ABOVE", "off")
    assert resume_above() == -1
