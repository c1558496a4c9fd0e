"""The sink journal (issue 9) at the plugin API level, against moto over HTTPS: every multipart
upload is journaled from just before CreateMultipartUpload (the intent: bucket and key) and with
its upload id from S3's answer until it is completed or aborted, ``recover()`` aborts what is left
(an intent by listing the uploads of exactly that key), and what is journaled holds no secret.
Also: Content-Type from the stream.

The crash itself (a SIGKILLed ``portshift run``) is in test_end_to_end.py and test_crash_resume.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from portshift.api import Journal
from portshift.errors import AuthError, SinkError
from portshift.hashing import HashingStream
from portshift.testing import SourceFailure, chunked, failing_chunks, pattern_bytes

PART = 5 * 1024 * 1024


class MemoryJournal(Journal):
    """What the core's StateJournal does, in memory, with a log of every call."""

    def __init__(self, on_begin: Callable[[str, dict[str, str]], None] | None = None) -> None:
        self.open: dict[str, dict[str, str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.on_begin = on_begin

    def begin(self, key: str, data: dict[str, str]) -> None:
        self.calls.append(("begin", key))
        if self.on_begin:
            self.on_begin(key, data)
        self.open[key] = dict(data)

    def end(self, key: str) -> None:
        self.calls.append(("end", key))
        self.open.pop(key, None)

    def pending(self) -> list[tuple[str, dict[str, str]]]:
        return list(self.open.items())


def upload_ids(pending: Callable[[], list[dict[str, Any]]]) -> set[str]:
    return {u["UploadId"] for u in pending()}


def test_a_multipart_upload_is_journaled_while_open_and_only_then(
    make_sink: Callable[..., Any], pending: Callable[[], list[Any]], canaries: tuple[str, str, str]
) -> None:
    sink = make_sink(prefix="exports")
    seen: list[tuple[dict[str, str], set[str]]] = []
    sink.journal = MemoryJournal(on_begin=lambda key, data: seen.append((data, upload_ids(pending))))
    size = PART + 3
    sink.put("job/a/media.mp3", HashingStream(chunked(pattern_bytes(size))), size)

    ((intent, open_before), (data, open_then)) = seen
    # First the intent (bucket and full key), journaled before any upload existed on the server;
    # then exactly bucket, full key and upload id, journaled while that upload was open.
    assert intent == {"bucket": data["bucket"], "key": "exports/job/a/media.mp3"} and open_before == set()
    assert set(data) == {"bucket", "key", "upload_id"}
    assert data["key"] == "exports/job/a/media.mp3" and data["upload_id"] in open_then
    assert not any(c in v for c in canaries for d in (intent, data) for v in d.values())
    assert sink.journal.calls == [("begin", "job/a/media.mp3")] * 2 + [("end", "job/a/media.mp3")]
    assert sink.journal.open == {} and pending() == []

    sink.put("job/a/small.json", HashingStream(chunked(b"{}")), 2)  # a single PutObject: nothing to journal
    assert len(sink.journal.calls) == 3


def test_a_failed_upload_is_aborted_and_leaves_the_journal(
    make_sink: Callable[..., Any], pending: Callable[[], list[Any]]
) -> None:
    sink = make_sink()
    sink.journal = MemoryJournal()
    data = pattern_bytes(2 * PART)
    with pytest.raises(SourceFailure):  # after part 1 was sent
        sink.put("k.bin", HashingStream(failing_chunks(data, fail_after=PART + 300_000)), len(data))
    assert sink.journal.calls == [("begin", "k.bin"), ("begin", "k.bin"), ("end", "k.bin")]
    assert pending() == []


def test_an_abort_that_fails_stays_journaled_and_the_next_run_aborts_it(
    make_sink: Callable[..., Any], tls_proxy: Any, moto: Any, pending: Callable[[], list[Any]]
) -> None:
    # Part 2 fails for good, and so does the abort: the upload stays open, and journaled.
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(respond=tls_proxy.error_response(403, "Forbidden", "AccessDenied"))
        if ("partNumber=2" in req.target or req.method == "DELETE")
        else None
    )
    sink = make_sink(endpoint_url=tls_proxy.url)
    sink.journal = journal = MemoryJournal()
    data = pattern_bytes(PART + 1)
    with pytest.raises(AuthError):
        sink.put("k.bin", HashingStream(chunked(data)), len(data))
    ((key, entry),) = journal.pending()
    assert key == "k.bin" and upload_ids(pending) == {entry["upload_id"]}

    # The next run (a new sink, same journal) cleans up: still denied -> raised, entry kept.
    again = make_sink(endpoint_url=tls_proxy.url)
    again.journal = journal
    with pytest.raises(AuthError, match="AccessDenied"):
        again.recover(journal.pending())
    assert journal.pending() == [(key, entry)] and len(pending()) == 1
    # Allowed now: aborted, and out of the journal.
    tls_proxy.rule = lambda req: None
    again.recover(journal.pending())
    assert journal.pending() == [] and pending() == []
    aborts = [q for q in tls_proxy.seen if q.method == "DELETE"]
    assert len(aborts) == 3 and all(f"uploadId={entry['upload_id']}" in q.target for q in aborts)


def test_recover_treats_an_upload_that_is_gone_as_done(
    make_sink: Callable[..., Any], admin: Any, bucket: str, pending: Callable[[], list[Any]], tls_proxy: Any
) -> None:
    # One upload still open (a killed run), one completed before the crash, one unknown id.
    open_id = admin.create_multipart_upload(Bucket=bucket, Key="p/open.bin")["UploadId"]
    done_id = admin.create_multipart_upload(Bucket=bucket, Key="p/done.bin")["UploadId"]
    etag = admin.upload_part(Bucket=bucket, Key="p/done.bin", UploadId=done_id, PartNumber=1, Body=b"x")["ETag"]
    admin.complete_multipart_upload(
        Bucket=bucket, Key="p/done.bin", UploadId=done_id, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}
    )
    journal = MemoryJournal()
    journal.open = {
        "open.bin": {"bucket": bucket, "key": "p/open.bin", "upload_id": open_id},
        "done.bin": {"bucket": bucket, "key": "p/done.bin", "upload_id": done_id},
        "gone.bin": {"bucket": bucket, "key": "p/gone.bin", "upload_id": "no-such-upload-id"},
    }
    sink = make_sink(prefix="p", endpoint_url=tls_proxy.url)
    sink.journal = journal
    sink.recover(journal.pending())
    assert journal.pending() == [] and pending() == []
    assert admin.get_object(Bucket=bucket, Key="p/done.bin")["Body"].read() == b"x"  # untouched
    # Only aborts, one per entry (write-only: no listing to find them).
    assert [q.method for q in tls_proxy.seen] == ["DELETE"] * 3


def test_recover_aborts_what_it_can_and_raises_for_the_rest(
    make_sink: Callable[..., Any], admin: Any, bucket: str, pending: Callable[[], list[Any]], tls_proxy: Any
) -> None:
    ids = [admin.create_multipart_upload(Bucket=bucket, Key=f"k{i}")["UploadId"] for i in range(3)]
    denied = {ids[0], ids[2]}
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(respond=tls_proxy.error_response(403, "Forbidden", "AccessDenied"))
        if any(f"uploadId={i}" in req.target for i in denied)
        else None
    )
    journal = MemoryJournal()
    journal.open = {f"k{i}": {"bucket": bucket, "key": f"k{i}", "upload_id": u} for i, u in enumerate(ids)}
    sink = make_sink(endpoint_url=tls_proxy.url)
    sink.journal = journal
    with pytest.raises(SinkError, match="2 multipart uploads left by a previous run could not be aborted"):
        sink.recover(journal.pending())
    assert {k for k, _ in journal.pending()} == {"k0", "k2"}
    assert upload_ids(pending) == denied


def test_a_journal_entry_for_another_bucket_is_not_acted_on(make_sink: Callable[..., Any], tls_proxy: Any) -> None:
    journal = MemoryJournal()
    journal.open = {"x": {"bucket": "someone-elses", "key": "x", "upload_id": "u"}, "y": {"upload_id": "u"}}
    sink = make_sink(endpoint_url=tls_proxy.url)
    sink.journal = journal
    sink.recover(journal.pending())
    assert journal.pending() == [] and tls_proxy.seen == []


def test_an_upload_the_journal_cannot_record_is_aborted_at_once(
    make_sink: Callable[..., Any], pending: Callable[[], list[Any]], read_obj: Callable[[str], Any]
) -> None:
    class Full(MemoryJournal):
        def begin(self, key: str, data: dict[str, str]) -> None:
            raise OSError(28, "No space left on device")

    sink = make_sink()
    sink.journal = Full()
    data = pattern_bytes(PART + 1)
    with pytest.raises(OSError, match="No space"):
        sink.put("k.bin", HashingStream(chunked(data)), len(data))
    assert pending() == [] and read_obj("k.bin") is None


def test_an_upload_id_the_journal_cannot_record_is_aborted_at_once(
    make_sink: Callable[..., Any], pending: Callable[[], list[Any]], read_obj: Callable[[str], Any]
) -> None:
    class FullAfterIntent(MemoryJournal):
        def begin(self, key: str, data: dict[str, str]) -> None:
            if "upload_id" in data:
                raise OSError(28, "No space left on device")
            super().begin(key, data)

    sink = make_sink()
    sink.journal = journal = FullAfterIntent()
    data = pattern_bytes(PART + 1)
    with pytest.raises(OSError, match="No space"):
        sink.put("k.bin", HashingStream(chunked(data)), len(data))
    assert pending() == [] and read_obj("k.bin") is None
    assert journal.calls == [("begin", "k.bin"), ("end", "k.bin")] and journal.open == {}


def test_an_intent_without_upload_id_aborts_the_uploads_of_exactly_that_key(
    make_sink: Callable[..., Any], admin: Any, bucket: str, pending: Callable[[], list[Any]], tls_proxy: Any
) -> None:
    # A run killed between CreateMultipartUpload's answer and the journal write (twice for one
    # key: e.g. a retried create); another key that merely starts with it; a key nothing opened.
    mine = {admin.create_multipart_upload(Bucket=bucket, Key="p/a.bin")["UploadId"] for _ in range(2)}
    other = admin.create_multipart_upload(Bucket=bucket, Key="p/a.bin.2")["UploadId"]
    journal = MemoryJournal()
    journal.open = {"a.bin": {"bucket": bucket, "key": "p/a.bin"}, "none.bin": {"bucket": bucket, "key": "p/none.bin"}}
    sink = make_sink(prefix="p", endpoint_url=tls_proxy.url)
    sink.journal = journal
    sink.recover(journal.pending())
    assert journal.pending() == []
    assert upload_ids(pending) == {other}, "only the uploads of exactly p/a.bin are aborted"
    lists = [q.target for q in tls_proxy.seen if q.method == "GET"]
    assert len(lists) == 2 and all("uploads" in t for t in lists)
    assert "prefix=p%2Fa.bin" in lists[0] and "prefix=p%2Fnone.bin" in lists[1]
    aborts = sorted(q.target.split("uploadId=")[1].split("&")[0] for q in tls_proxy.seen if q.method == "DELETE")
    assert aborts == sorted(mine)


def test_an_intent_whose_listing_is_denied_warns_once_and_never_fails_the_job(
    make_sink: Callable[..., Any],
    admin: Any,
    bucket: str,
    pending: Callable[[], list[Any]],
    tls_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    left = admin.create_multipart_upload(Bucket=bucket, Key="a.bin")["UploadId"]
    known = admin.create_multipart_upload(Bucket=bucket, Key="c.bin")["UploadId"]
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(respond=tls_proxy.error_response(403, "Forbidden", "AccessDenied")) if req.method == "GET" else None
    )
    journal = MemoryJournal()
    journal.open = {
        "a.bin": {"bucket": bucket, "key": "a.bin"},
        "b.bin": {"bucket": bucket, "key": "b.bin"},
        "c.bin": {"bucket": bucket, "key": "c.bin", "upload_id": known},
    }
    sink = make_sink(endpoint_url=tls_proxy.url)
    sink.journal = journal
    caplog.set_level("INFO", logger="portshift.s3")
    sink.recover(journal.pending())  # no exception
    assert journal.pending() == []  # the intents are dropped, the known upload aborted
    assert upload_ids(pending) == {left}  # the lifecycle rule's job now
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "s3:ListBucketMultipartUploads" in warnings[0] and "AbortIncompleteMultipartUpload" in warnings[0]
    assert "(2 keys)" in warnings[0]


def test_an_intent_whose_listing_fails_otherwise_stays_for_the_next_run(
    make_sink: Callable[..., Any], admin: Any, bucket: str, pending: Callable[[], list[Any]], tls_proxy: Any
) -> None:
    admin.create_multipart_upload(Bucket=bucket, Key="a.bin")
    tls_proxy.rule = lambda req: (
        tls_proxy.Action(respond=tls_proxy.error_response(501, "Not Implemented", "NotImplemented"))
        if req.method == "GET"
        else None
    )
    journal = MemoryJournal()
    journal.open = {"a.bin": {"bucket": bucket, "key": "a.bin"}}
    sink = make_sink(endpoint_url=tls_proxy.url)
    sink.journal = journal
    with pytest.raises(SinkError, match="NotImplemented"):
        sink.recover(journal.pending())
    assert [k for k, _ in journal.pending()] == ["a.bin"] and len(pending()) == 1
    tls_proxy.rule = lambda req: None
    sink.recover(journal.pending())
    assert journal.pending() == [] and pending() == []


CONTENT_TYPES = [
    ("audio/mpeg", PART + 100, "audio/mpeg"),  # multipart: set on CreateMultipartUpload
    ('application/json; charset="utf-8"', 100, 'application/json; charset="utf-8"'),
    (None, 100, None),
    ("audio/mpeg\r\nx-amz-acl: public-read", PART + 100, None),  # never becomes a header
    ("not a type", 100, None),
]


def test_content_type_comes_from_the_stream(make_sink: Callable[..., Any], admin: Any, bucket: str, tls_proxy: Any) -> None:
    sink = make_sink(endpoint_url=tls_proxy.url)
    for i, (given, size, stored) in enumerate(CONTENT_TYPES):
        tls_proxy.seen.clear()
        sink.put(f"ct{i}.bin", HashingStream(chunked(pattern_bytes(size)), content_type=given), size)
        head = admin.head_object(Bucket=bucket, Key=f"ct{i}.bin")
        # Without one S3 stores its default; moto and AWS both say binary/octet-stream.
        assert head["ContentType"] == (stored or "binary/octet-stream"), given
        first = tls_proxy.seen[0]  # PutObject or CreateMultipartUpload
        assert first.method == ("POST" if size > PART else "PUT")
        assert not any(k.lower() == "x-amz-acl" or "public-read" in v for k, v in first.headers.items())
        if given and not stored:
            assert given not in str(first.headers)
