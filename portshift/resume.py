"""Uploads continued mid-file after a crash: what a sink journals, and what it is given back.

A big upload (at least :func:`resume_above` bytes) that a worker was killed in the middle of is
not started again: the sink journaled, at each part the store confirmed, a *resume point* (the
offset, the whole-file SHA-256's state there, the source's validator, the artifact's size); the
next worker that exports the recording asks the sink to :meth:`~portshift.Sink.resume` it, the
sink checks the store against its entry, and the source sends only the rest
(:attr:`~portshift.Artifact.open_from`, an HTTP ``Range`` with ``If-Range``). What is stored and
recorded is exactly what a fresh upload would give; when anything does not match, the core says so
once and starts the artifact again from byte 0.

A resume point holds no content and no secret: an offset, a size, the source's ETag, ids the key
is built from (recording id, artifact name, extension: already in the state), and a SHA-256 state
at a part boundary (eight 32-bit chaining words and a bit count: a one-way digest of the prefix,
from which no byte of it can be computed; docs/security.md).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import PortshiftError
from .sizes import parse_size

if TYPE_CHECKING:
    from .api import Journal
    from .hashing import HashingStream

log = logging.getLogger("portshift.run")

#: the journal field a resumable upload's point is kept in (the sink copies it from the stream)
RESUME_FIELD = "resume"
#: uploads smaller than this start again from byte 0 after a crash (``PORTSHIFT_RESUME_ABOVE``)
DEFAULT_RESUME_ABOVE = 64 * 1024 * 1024


def resume_above() -> int:
    """The size from which an upload is kept resumable (``PORTSHIFT_RESUME_ABOVE``, e.g. ``64MiB``;
    ``off``: none, -1)."""
    from .settings import read_settings

    raw = read_settings().resume_above
    if raw.lower() in ("off", "none", "never"):
        return -1
    return parse_size(raw, "PORTSHIFT_RESUME_ABOVE")


class ResumeRefused(PortshiftError):
    """An upload cannot be continued where it stopped (the store lost it, a part differs, the
    source changed or cannot send a range): the core starts the artifact again from byte 0."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a stopped upload can be taken up: ``offset`` bytes are stored and confirmed."""

    offset: int
    sha256_state: str
    size: int | None
    validator: str | None
    recording_id: str
    artifact: str
    extension: str

    def encode(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "offset": self.offset,
                "sha256_state": self.sha256_state,
                "size": self.size,
                "validator": self.validator,
                "recording": self.recording_id,
                "artifact": self.artifact,
                "ext": self.extension,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> ResumePoint | None:
        """The point in a journal entry's ``resume`` field; ``None`` when it is not one we read."""
        try:
            raw = json.loads(text)
            if raw.get("v") != 1:
                return None
            offset, size = int(raw["offset"]), raw.get("size")
            return cls(
                offset=offset,
                sha256_state=str(raw["sha256_state"]),
                size=int(size) if size is not None else None,
                validator=str(raw["validator"]) if raw.get("validator") is not None else None,
                recording_id=str(raw["recording"]),
                artifact=str(raw["artifact"]),
                extension=str(raw["ext"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass
class Continuation:
    """What :meth:`portshift.Sink.resume` is given: its own journal entry and the way to the rest."""

    key: str  #: the key given to :meth:`~portshift.Sink.put` when the upload began
    data: dict[str, str]  #: what the sink journaled, with the core's ``resume`` field
    offset: int  #: bytes stored and confirmed; the stream from :meth:`open` starts here
    size: int | None  #: the whole artifact's size, when known
    _open: Callable[[], HashingStream]

    def open(self) -> HashingStream:
        """The rest of the artifact, from :attr:`offset` on, hashing on from the saved state
        (``bytes_read`` starts at :attr:`offset`). Raises :class:`ResumeRefused` when the source
        cannot send it or it changed."""
        return self._open()


class ResumableUpload:
    """What a sink uses to keep a multipart upload resumable: the same for S3 parts, Azure blocks
    and GCS chunks. Made before the stream's first read; :meth:`confirmed` is called (from any
    thread) as the store confirms each piece, and journals the entry with the pieces confirmed
    in a row from the first one and the resume point at their end.

    ``entry`` is the sink's journal entry (what :meth:`~portshift.Sink.recover` needs to abort
    the upload); the pieces' records (a checksum each, as the store reports it back) are kept
    under ``"pieces"`` as a JSON list, the piece size under ``"piece_size"``, the point under
    ``"resume"``. :attr:`enabled` is ``False`` (and nothing is journaled) when the core does not
    offer it for this stream (no state, a small artifact, no saveable SHA-256)."""

    def __init__(self, journal: Journal | None, key: str, entry: dict[str, str], stream: HashingStream, piece_size: int):
        self._journal, self._key, self._stream, self.piece_size = journal, key, stream, piece_size
        self.entry = dict(entry)
        self.enabled = journal is not None and stream.keep_states(piece_size)
        self._lock = threading.Lock()
        self._records: dict[int, str] = {}  #: piece index (0-based) -> its record
        self._in_a_row = 0  #: pieces confirmed from the first one on, without a gap
        self.journaled = False  #: a resume point was journaled (the upload can be continued)
        self.stored = 0  #: bytes of the journaled point

    def start_from(self, records: list[str]) -> None:
        """A continued upload: these pieces (the first ones) are stored already."""
        with self._lock:
            self._records = dict(enumerate(records))
            self._in_a_row = len(records)
            self.journaled, self.stored = bool(records), len(records) * self.piece_size

    def confirmed(self, index: int, record: str) -> None:
        """Piece ``index`` (0-based, ``piece_size`` bytes unless it is the last) is stored."""
        if not self.enabled:
            return
        with self._lock:
            self._records[index] = record
            n = self._in_a_row
            while n in self._records:
                n += 1
            if n == self._in_a_row:
                return
            self._in_a_row = n
            point = self._stream.resume_point(n * self.piece_size)
            if point is None:  # the last piece (shorter) or the state was already given
                return
            data = {
                **self.entry,
                "piece_size": str(self.piece_size),
                "pieces": json.dumps([self._records[i] for i in range(n)], separators=(",", ":")),
                RESUME_FIELD: point,
            }
            assert self._journal is not None
            self._journal.begin(self._key, data)
            self.journaled, self.stored = True, n * self.piece_size

    def kept(self, exc: BaseException, cancel: threading.Event | None, where: str) -> bool:
        """Whether an upload that failed with ``exc`` stays open for the next run instead of being
        aborted: the run is being stopped (SIGTERM, Ctrl-C; a part's failure may surface first)
        and parts are journaled. Said once, in the log."""
        from .errors import Interrupted

        stopping = isinstance(exc, Interrupted) or (cancel is not None and cancel.is_set())
        if not (stopping and self.journaled):
            return False
        log.info("%s: upload kept at %d bytes, to be continued by the next run", where, self.stored)
        return True

    @staticmethod
    def pieces_of(data: dict[str, str], offset: int) -> tuple[int, list[str]]:
        """The piece size and the records of the pieces stored, from a journal entry; raises
        :class:`ResumeRefused` when the entry does not add up to ``offset``."""
        try:
            size = int(data["piece_size"])
            records = json.loads(data["pieces"])
        except (KeyError, ValueError, TypeError):
            raise ResumeRefused("the journal entry holds no list of stored pieces") from None
        if not isinstance(records, list) or not all(isinstance(r, str) for r in records) or size * len(records) != offset:
            raise ResumeRefused("the journal entry's pieces do not add up to the offset") from None
        return size, records


__all__ = [
    "ResumableUpload",
    "Continuation",
    "DEFAULT_RESUME_ABOVE",
    "RESUME_FIELD",
    "ResumePoint",
    "ResumeRefused",
    "resume_above",
]
