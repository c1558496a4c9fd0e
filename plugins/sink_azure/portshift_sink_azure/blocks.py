"""The blocks of one upload: how a stream is cut into them, how they are named, and what the job's
journal keeps of each so that a stopped upload can be continued (see :mod:`.resuming`).

A block's journal record is ``"<block id> <MD5 base64> <whole-file MD5 state>"``: the id it was
staged under, the MD5 Azure checked when it arrived (Azure never reports a block's MD5 back, so
this is for the record, not compared on resume), and the state of the whole file's MD5 after the
block (:mod:`portshift.hash_state`: four 32-bit chaining words and a bit count), from which a
continued upload computes the blob's Content-MD5 without reading the stored bytes again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from portshift import HashingStream, ResumableUpload, hash_state

#: the random part of a block id, one per upload attempt: 16 hex digits
ATTEMPT = re.compile(r"[0-9a-f]{16}")


def read_blocks(stream: HashingStream, size: int) -> Iterator[tuple[bytes, bool]]:
    """``(block, is_last)`` pairs of up to ``size`` bytes (:meth:`portshift.HashingStream.pieces`)."""
    return stream.pieces(size)


def block_id(attempt: str, n: int) -> str:
    """The id of block ``n`` (1-based) of an upload attempt: the same length for every block (Azure
    requires it within a blob), a fresh ``attempt`` keeps a retried upload's blocks apart from a
    failed attempt's leftovers, and a journaled ``attempt`` gives every id back."""
    return f"{attempt}-{n:06d}"


def block_record(block: str, md5: bytes, state: str) -> str:
    """A block's journal record (see the module's doc)."""
    import base64

    return f"{block} {base64.b64encode(md5).decode('ascii')} {state}"


def parse_record(record: str) -> tuple[str, str, str]:
    """``(block id, MD5 base64, whole-file MD5 state)`` of a record; ``ValueError`` if it is none."""
    parts = record.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ValueError("not a block record")
    return parts[0], parts[1], parts[2]


def whole_md5(resumable: bool) -> Any:
    """The whole file's MD5, computed in order as blocks are read: a saveable one (its state is
    journaled with each block) when the upload is resumable, else :mod:`hashlib`'s."""
    if resumable:
        saved = hash_state.new("md5")
        if saved is not None:
            return saved
    return hashlib.md5(usedforsecurity=False)


@dataclass
class Upload:
    """One blob being uploaded in blocks (fresh or continued)."""

    blob: Any  #: the SDK's BlobClient
    key: str  #: the key the core gave (the journal's key)
    name: str  #: the blob's name in the container
    location: str  #: for messages: the blob's URL without a query string
    attempt: str  #: the random part of this upload's block ids
    size: int | None  #: the declared size of the whole file
    whole: Any  #: the whole file's MD5 (hashlib or a saveable :mod:`portshift.hash_state` one)
    resumable: ResumableUpload
    ids: list[str] = field(default_factory=list)  #: blocks staged so far, in order
    #: a continued upload whose blocks could not be listed (the SAS has no read): Put Block List
    #: is the check that they are all still there
    unlisted: bool = False


__all__ = ["ATTEMPT", "Upload", "block_id", "block_record", "parse_record", "read_blocks", "whole_md5"]
