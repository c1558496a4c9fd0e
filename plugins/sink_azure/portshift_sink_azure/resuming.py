"""``resume()`` for the Azure sink: continue a block upload a stopped worker left mid-file.

The journal entry names the blob (container, name), the random part of its block ids, and a record
per block staged in a row from the first (:mod:`.blocks`): its id, its MD5, the whole file's MD5
state after it. On resume:

1. The entry must be this blob's, with the sink's current ``block_size``, ids that follow from
   its attempt, and an MD5 state at exactly the offset the core continues from.
2. Azure is asked for the blob's uncommitted blocks (Get Block List): each journaled id must be
   there with ``block_size`` bytes. Azure reports no block's MD5 (Get Block List returns ids and
   sizes only), so MD5s cannot be compared; each was checked by Azure when it was staged, and an
   id names one block of one upload attempt (a random 64-bit part). Get Block List needs the SAS's
   read permission (``r``): without it the blocks are not listed, and Put Block List, which
   refuses a list naming a block Azure does not hold (``InvalidBlockList``), is the check.
3. The source sends the rest; it is staged as the next blocks, and Put Block List commits them
   all with the whole-file MD5 (continued from the journaled state) as Content-MD5 and the
   SHA-256 (continued by the core) as metadata: the blob and its properties are what a fresh
   upload gives.

Anything that does not match raises :class:`portshift.ResumeRefused`: the core says so once and
sends the file again from byte 0 (its Put Block List then drops the old uncommitted blocks).
"""

from __future__ import annotations

import logging
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError

from portshift import Continuation, PutResult, ResumableUpload, ResumeRefused, hash_state

from .blocks import ATTEMPT, Upload, block_id, parse_record, read_blocks
from .errors import error_code, translate

log = logging.getLogger("portshift.sink.azure")


class BlockResume:
    """Mixed into :class:`~.sink.AzureSink` (which supplies the container client and the block loop)."""

    options: Any
    journal: Any
    _container: Any
    blob_name: Any
    _blob_location: Any
    _entry: Any
    _send_blocks: Any

    def resume(self, key: str, continuation: Continuation, size: int | None = None) -> PutResult:
        data = continuation.data
        name = self.blob_name(key)
        location = self._blob_location(name)
        attempt = data.get("attempt", "")
        if data.get("container") != self.options.container or data.get("blob") != name or not ATTEMPT.fullmatch(attempt):
            raise ResumeRefused("the journal entry names no upload of this blob in this container")
        block_size, records = ResumableUpload.pieces_of(data, continuation.offset)
        if block_size != self.options.block_size:
            raise ResumeRefused(f"block_size changed from {block_size} to {self.options.block_size} bytes")
        ids, state = _journaled(records, attempt)
        try:
            whole = hash_state.restore(state)
        except (ValueError, RuntimeError):
            raise ResumeRefused("the journal holds no whole-file MD5 this process can continue") from None
        if whole.name != "md5" or whole.length != continuation.offset:
            raise ResumeRefused("the journaled whole-file MD5 is not at the offset continued from")
        blob = self._container.get_blob_client(name)
        held = self._uncommitted(blob, location)
        if held is not None:
            for n, block in enumerate(ids, start=1):
                if block not in held:
                    raise ResumeRefused(
                        f"Azure no longer holds block {n} uncommitted (discarded, or the blob was committed since)"
                    )
                if held[block] != block_size:
                    raise ResumeRefused(f"Azure holds block {n} with {held[block]} bytes, {block_size} were staged")
        stream = continuation.open()
        resumable = ResumableUpload(self.journal, key, {**self._entry(name), "attempt": attempt}, stream, block_size)
        resumable.start_from(records)
        up = Upload(blob, key, name, location, attempt, size, whole, resumable, ids=ids, unlisted=held is None)
        return self._send_blocks(up, stream, read_blocks(stream, block_size), [])  # type: ignore[no-any-return]

    def _uncommitted(self, blob: Any, location: str) -> dict[str, int] | None:
        """``{block id: size}`` of the blob's uncommitted blocks; ``None`` when the SAS may not
        read the block list (no ``r``)."""
        try:
            _, uncommitted = blob.get_block_list(block_list_type="uncommitted")
        except AzureError as e:
            if isinstance(e, HttpResponseError) and error_code(e) == "AuthorizationPermissionMismatch":
                log.debug("%s: the SAS cannot read the block list (no r): Put Block List checks the blocks", location)
                return None
            if isinstance(e, HttpResponseError) and error_code(e) == "BlobNotFound":
                return {}  # no block staged under this name at all
            error = translate(e, "get block list", location)
            raise error from None
        return {str(b.id): int(b.size) for b in uncommitted}


def _journaled(records: list[str], attempt: str) -> tuple[list[str], str]:
    """The block ids of the journal's records, checked against the attempt, and the whole-file MD5
    state after the last one."""
    ids: list[str] = []
    state = ""
    for n, record in enumerate(records, start=1):
        try:
            block, _md5, state = parse_record(record)
        except ValueError:
            raise ResumeRefused(f"the journal's record of block {n} is not one this version reads") from None
        if block != block_id(attempt, n):
            raise ResumeRefused(f"the journal's block {n} has an id this upload does not give it")
        ids.append(block)
    if not ids or state == "-":
        raise ResumeRefused("the journal holds no whole-file MD5 to continue from")
    return ids, state
