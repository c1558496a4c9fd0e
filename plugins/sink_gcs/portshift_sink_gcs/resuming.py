"""A big upload a crash stopped mid-file is continued in its GCS resumable session (issue 21).

What is journaled (the job's sink journal, from the session's initiation until it is finished or
cancelled), for uploads of at least ``PORTSHIFT_RESUME_ABOVE`` bytes, and only when the sink has
a service-account key to seal the session URI with (:mod:`.session_seal`):

- ``bucket``, ``name``: the object;
- ``session``: the session URI, sealed (AES-GCM under a key derived from the private key);
- ``piece_size`` and ``pieces``: per chunk GCS confirmed (in a row from the first), the CRC32C
  (its integer value) and the MD5 state (OpenSSL's ``MD5_CTX`` words, :mod:`portshift.hash_state`)
  of the object up to the chunk's end; the core's ``resume`` point with the SHA-256 state.

On :meth:`SessionResume.resume` the journal is checked against the configuration (bucket, object
name, ``chunk_size``) and against GCS: the session's persisted size (``PUT`` with
``Content-Range: bytes */*``) must be the journaled offset, or up to one chunk more (GCS persisted
a chunk whose answer the crash lost: those bytes are read from the source and hashed, not sent
again; the whole-object CRC32C and MD5 that GCS checks at finalize cover them). Then the source
sends the rest, the CRC32C and MD5 go on from the journaled states, and the session is finished
as a fresh upload would be. Anything else (the session gone or cancelled, finished already, a
key that does not open the sealed URI) is :class:`~portshift.ResumeRefused`: the core says so
once, cancels the session through :meth:`SessionResume.recover` and sends the file from byte 0.
"""

from __future__ import annotations

import logging
from typing import Any

from portshift import Continuation, HashingStream, PutResult, ResumableUpload, ResumeRefused, hash_state

from .chunks import Digests, read_chunks
from .options import CHUNK_QUANTUM
from .session import SessionGone, check_session_uri, mask_session_uri

log = logging.getLogger("portshift.sink.gcs")


class SessionResume:
    """Mixed into :class:`~.sink.GcsSink` (which supplies the session requests and the chunk loop)."""

    options: Any
    journal: Any
    _seal: Any
    _host: str
    _warned_no_seal = False
    object_name: Any
    _where: Any
    _persisted: Any
    _cancel: Any
    _send_chunks: Any
    _compare_existing: Any
    _object_exists: Any

    # --- while uploading ------------------------------------------------------------------------
    def _resumable_upload(self, key: str, name: str, stream: HashingStream, size: int | None) -> ResumableUpload:
        """The journaling helper of one upload; not ``enabled`` when this upload is not kept
        (small, no state, no saveable hash, or no key to seal the session URI with)."""
        big = size is None or size > self.options.chunk_size
        journal = self.journal if big and self._seal is not None and hash_state.available() else None
        resumable = ResumableUpload(journal, key, {"bucket": self.options.bucket, "name": name}, stream, self.options.chunk_size)
        offered = stream.resume_info is not None  # the core would keep this upload resumable
        if big and offered and self.journal is not None and self._seal is None and not SessionResume._warned_no_seal:
            SessionResume._warned_no_seal = True  # once per process
            log.info(
                "GCS uploads stopped by a crash start again from byte 0: without a service-account key the "
                "resumable session (a credential) cannot be kept for the next run (see the GCS plugin's README)"
            )
        return resumable

    def _journal_session(self, key: str, name: str, session_uri: str, resumable: ResumableUpload) -> None:
        """Journal the (sealed) session as soon as GCS created it, so that a crash before the
        first chunk is confirmed leaves an entry :meth:`recover` cancels."""
        if not resumable.enabled:
            return
        resumable.entry["session"] = self._seal.seal(session_uri, name)
        try:
            self.journal.begin(key, resumable.entry)
        except BaseException:
            self._cancel(session_uri, self._where(name))  # not journaled: do not leave it behind
            raise

    def _journal_end(self, key: str, resumable: ResumableUpload) -> None:
        if not resumable.enabled or self.journal is None:
            return
        try:
            self.journal.end(key)
        except Exception as e:  # noqa: BLE001 - a stale entry only costs one harmless cancel next run
            log.warning("could not record the end of an upload in the job state (%s)", type(e).__name__)

    def _opened_session(self, data: dict[str, str], name: str) -> str:
        if self._seal is None:
            raise ResumeRefused("the sink has no service-account key to open the journaled session with")
        sealed = data.get("session") or ""
        uri = self._seal.open(sealed, name)
        if uri is None:
            raise ResumeRefused("the journaled session does not open with this service-account key")
        mask_session_uri(uri)
        if not check_session_uri(uri, self._host):
            raise ResumeRefused("the journaled session is not on the configured endpoint")
        return uri

    # --- after a crash ----------------------------------------------------------------------------
    def resume(self, key: str, continuation: Continuation, size: int | None = None) -> PutResult:
        data = continuation.data
        name = self.object_name(key)
        where = self._where(name)
        if data.get("bucket") != self.options.bucket or data.get("name") != name:
            raise ResumeRefused("the journal entry names no upload of this object in this bucket")
        chunk_size, records = ResumableUpload.pieces_of(data, continuation.offset)
        if chunk_size != self.options.chunk_size:
            raise ResumeRefused(f"chunk_size changed from {chunk_size} to {self.options.chunk_size} bytes")
        offset = continuation.offset
        try:
            digests = Digests.resumed(records[-1], offset, chunk_size)
        except (ValueError, RuntimeError, IndexError):
            raise ResumeRefused("the journal holds no CRC32C and MD5 state at the resume point") from None
        session_uri = self._opened_session(data, name)
        try:
            persisted = self._persisted(session_uri, where)
        except SessionGone:
            raise ResumeRefused("GCS no longer has the resumable session (cancelled or expired)") from None
        if persisted == -1:
            raise ResumeRefused("GCS finished this session already")
        if persisted < offset or persisted > offset + chunk_size or persisted % CHUNK_QUANTUM:
            raise ResumeRefused(f"GCS holds {persisted} bytes of the session, the journal {offset}")
        stream = continuation.open()
        resumable = ResumableUpload(self.journal, key, {"bucket": self.options.bucket, "name": name}, stream, chunk_size)
        resumable.entry["session"] = data["session"]
        resumable.start_from(records)
        digests.follow(stream)
        chunks = read_chunks(stream, chunk_size)
        first = next(chunks)
        if first[1] and offset + len(first[0]) < persisted:
            raise ResumeRefused(f"GCS holds {persisted} bytes of the session, more than the file has")
        try:
            return self._send_chunks(key, name, session_uri, first, chunks, offset, persisted, digests, resumable)  # type: ignore[no-any-return]
        except self._object_exists:
            pass
        for _ in chunks:  # an object of this name appeared meanwhile: compare it with the file
            pass
        return self._compare_existing(name, where, stream.bytes_read, digests.values())  # type: ignore[no-any-return]

    def recover(self, pending: list[tuple[str, dict[str, str]]]) -> None:
        """Cancel the resumable sessions a killed run left (and the ones the core will not
        continue). A session whose sealed URI this key cannot open is left to GCS, which drops
        unfinished sessions after a week (nothing is visible under the name meanwhile)."""
        for key, data in pending:
            name = data.get("name") or ""
            if data.get("bucket") != self.options.bucket or not name:
                log.warning("ignoring a journal entry that is not an upload in gs://%s", self.options.bucket)
                self._end_quietly(key)
                continue
            try:
                uri = self._opened_session(data, name)
            except ResumeRefused as e:
                log.info(
                    "%s: a stopped upload's session cannot be cancelled (%s); GCS drops it within a week",
                    self._where(name),
                    e.message,
                )
            else:
                self._cancel(uri, self._where(name))
            self._end_quietly(key)

    def _end_quietly(self, key: str) -> None:
        if self.journal is not None:
            try:
                self.journal.end(key)
            except Exception as e:  # noqa: BLE001 - the core ends handled entries itself too
                log.debug("could not end a journal entry (%s)", type(e).__name__)
