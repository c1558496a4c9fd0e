"""The Azure sink's side of a continued upload, in process against Azurite over TLS, with the kit's
in-memory journal and the core's own HashingStream / Continuation: what put() journals, when the
entry is kept or ended, what resume() refuses before anything is sent, and that a continued blob
is the one a fresh upload gives (Content-MD5 and sha256 metadata as Azure reports them)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from azure.storage.blob import BlobServiceClient
from portshift_sink_azure import AzureSink

from portshift import Continuation, Interrupted, ResumeRefused, Secret
from portshift.hashing import HashingStream
from portshift.resume import ResumePoint
from portshift.testing import chunked, pattern_bytes
from portshift.testing.data import SourceFailure
from portshift.testing.journal import RecordingJournal

from .conftest import CONTAINER, Azurite, MiB, download, md5, unique

SIZE = 6 * MiB + 4321  # 7 blocks of 1 MiB, the last one short


def _stream(data: bytes, cancel: threading.Event | None = None, chunks: Iterator[bytes] | None = None) -> HashingStream:
    stream = HashingStream(chunks if chunks is not None else chunked(data), cancel=cancel, expect_size=len(data))
    stream.resume_info = {"recording": "rec-1", "artifact": "media", "ext": "mp3", "validator": '"etag-1"'}  # as the core sets it
    return stream


def _stopped_after(data: bytes, journal: RecordingJournal, cancel: threading.Event, blocks: int) -> Iterator[bytes]:
    """The data; once a block past ``blocks`` is handed over and ``blocks`` blocks are journaled,
    a stop request (SIGTERM, Ctrl-C): the next read raises Interrupted."""
    sent = 0
    for piece in chunked(data):
        if sent > (blocks + 1) * MiB and not cancel.is_set():
            deadline = time.monotonic() + 30
            while _offset(journal) < blocks * MiB and time.monotonic() < deadline:
                time.sleep(0.01)
            cancel.set()
        yield piece
        sent += len(piece)


def _offset(journal: RecordingJournal) -> int:
    points = [json.loads(d["resume"])["offset"] for _, d in journal.pending() if "resume" in d]
    return max(points, default=0)


def _continuation(key: str, data: dict[str, str], whole: bytes) -> Continuation:
    """What the core hands resume(): the entry, and the rest of the data hashed on from the point."""
    point = ResumePoint.decode(data["resume"])
    assert point is not None

    def rest() -> HashingStream:
        stream = HashingStream(chunked(whole[point.offset :]), expect_size=len(whole), resume=(point.offset, point.sha256_state))
        stream.resume_info = {"recording": "rec-1", "artifact": "media", "ext": "mp3", "validator": point.validator}
        return stream

    return Continuation(key=key, data=data, offset=point.offset, size=point.size, _open=rest)


def _stopped_upload(sink: AzureSink, data: bytes) -> tuple[str, RecordingJournal, dict[str, str]]:
    journal = RecordingJournal(secrets=[sink.options.sas.reveal()] if sink.options.sas else [])
    sink.journal = journal
    key = unique("media.mp3")
    cancel = threading.Event()
    with pytest.raises(Interrupted):
        sink.put(key, _stream(data, cancel, _stopped_after(data, journal, cancel, 3)), len(data))
    ((pending_key, entry),) = journal.pending()
    assert pending_key == key and not journal.misuse
    return key, journal, entry


def test_a_stopped_upload_is_kept_and_resume_completes_the_blob_a_fresh_upload_gives(
    make_sink: Callable[..., AzureSink], admin: BlobServiceClient
) -> None:
    data = pattern_bytes(SIZE, seed=21)
    sink = make_sink()
    key, journal, entry = _stopped_upload(sink, data)
    offset = json.loads(entry["resume"])["offset"]
    assert offset >= 3 * MiB and offset % MiB == 0
    assert download(admin, sink.blob_name(key)) is None  # nothing visible: the blocks are uncommitted
    records = json.loads(entry["pieces"])
    assert len(records) == offset // MiB
    for n, record in enumerate(records):
        block, digest, _ = record.split(" ")
        assert block == f"{entry['attempt']}-{n + 1:06d}"
        assert digest == base64.b64encode(md5(data[n * MiB : (n + 1) * MiB])).decode()

    result = sink.resume(key, _continuation(key, entry, data), len(data))
    assert result.size == len(data)
    assert download(admin, sink.blob_name(key)) == data
    props = admin.get_blob_client(CONTAINER, sink.blob_name(key)).get_blob_properties()
    assert bytes(props.content_settings.content_md5) == md5(data)
    assert props.metadata["sha256"] == hashlib.sha256(data).hexdigest()
    assert props.content_settings.content_type == "audio/mpeg"
    assert journal.pending() == [] and journal.ended[-1] == key


def test_a_failed_upload_ends_its_journal_entry(make_sink: Callable[..., AzureSink]) -> None:
    data = pattern_bytes(SIZE, seed=3)
    sink = make_sink()
    sink.journal = journal = RecordingJournal()

    def breaking() -> Iterator[bytes]:
        yield from chunked(data[: 4 * MiB + 17])
        raise SourceFailure("connection dropped")

    with pytest.raises(SourceFailure):
        sink.put(unique("media.mp3"), _stream(data, chunks=breaking()), len(data))
    assert journal.begun and journal.pending() == []  # journaled as blocks were stored, then ended


def test_nothing_is_journaled_for_one_block_or_when_the_core_offers_no_point(make_sink: Callable[..., AzureSink]) -> None:
    sink = make_sink()
    sink.journal = journal = RecordingJournal()
    small = pattern_bytes(MiB - 1)
    sink.put(unique("small.mp3"), _stream(small), len(small))
    data = pattern_bytes(SIZE)
    plain = HashingStream(chunked(data), expect_size=len(data))  # no resume_info: not offered
    sink.put(unique("big.mp3"), plain, len(data))
    assert journal.begun == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"block_size": 2 * MiB}, "block_size changed from 1048576 to 2097152 bytes"),
        ({"container": "elsewhere"}, "names no upload of this blob in this container"),
        ({"attempt": "0" * 16}, "has an id this upload does not give it"),
        ({"md5_state": "md5-v1:" + "00" * 24}, "the journaled whole-file MD5 is not at the offset continued from"),
        ({"blocks": "gone"}, "Azure no longer holds block 1 uncommitted"),
    ],
)
def test_resume_refuses_what_does_not_match_before_the_source_is_asked(
    make_sink: Callable[..., AzureSink], azurite: Azurite, admin: BlobServiceClient, change: dict[str, object], reason: str
) -> None:
    data = pattern_bytes(SIZE, seed=5)
    sink = make_sink(sas=Secret(azurite.sas(permission="rcw"), "sas"))
    key, _, entry = _stopped_upload(sink, data)
    if "block_size" in change:
        sink = make_sink(block_size=change["block_size"])
    if "container" in change:
        entry = {**entry, "container": str(change["container"])}
    if "attempt" in change:
        entry = {**entry, "attempt": str(change["attempt"])}
    if "md5_state" in change:
        records = json.loads(entry["pieces"])
        block, digest, _ = records[-1].split(" ")
        records[-1] = f"{block} {digest} {change['md5_state']}"
        entry = {**entry, "pieces": json.dumps(records)}
    if "blocks" in change:  # someone committed the blob since: Azure dropped the uncommitted blocks
        other = admin.get_blob_client(CONTAINER, sink.blob_name(key))
        other.stage_block("someone-else-0000000001", b"x")
        other.commit_block_list(["someone-else-0000000001"])
    opened: list[bool] = []
    cont = _continuation(key, entry, data)
    inner = cont._open
    cont._open = lambda: (opened.append(True), inner())[1]
    with pytest.raises(ResumeRefused, match=reason):
        sink.resume(key, cont, len(data))
    assert opened == []  # refused before a byte was asked of the source
