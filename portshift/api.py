"""The shapes a plugin implements: :class:`Source`, :class:`Sink`, :class:`ManifestWriter`.

A plugin registers its classes through the hooks in :mod:`portshift.hookspecs`. Each class has
an ``Options`` model (a :class:`portshift.options.PluginOptions`) that is both the schema of its
section of the job file and its documentation (``portshift plugins`` prints it).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from .hashing import HashingStream
from .options import PluginOptions
from .rate_auto import RateMemory

if TYPE_CHECKING:
    from .resume import Continuation
    from .retry import RateLimiter

__all__ = [
    "Artifact",
    "JobInfo",
    "ManifestEntry",
    "ManifestWriter",
    "Opened",
    "PutResult",
    "Reader",
    "Journal",
    "Recording",
    "Sink",
    "Source",
    "StoredFile",
    "Window",
]


@dataclass(frozen=True)
class Window:
    """The export window: recordings that started at or after ``start`` and before ``end``."""

    start: datetime
    end: datetime


@dataclass
class Recording:
    """One recorded call as the source lists it.

    ``id`` is the source's stable identifier (used for resume and in keys). ``fields`` are extra
    values the key template may use (``{type}``...); they are made key-safe by the core. Do not
    put call metadata (titles, participants) here: it never goes to the state DB.
    """

    id: str
    started_at: datetime | None = None
    fields: dict[str, str] = field(default_factory=dict)
    #: Set by a source that already knows, from the listing, that this recording is not exported
    #: by this run: a :class:`portshift.errors.SkipRecording` (filtered by the job's options,
    #: private, nothing to export) or a :class:`portshift.errors.RecordingPending` (not ready
    #: yet). The core records the outcome with its reason without calling ``artifacts()``.
    skipped: Exception | None = None
    #: the recording's size in bytes when the listing tells it (``--dry-run`` shows it)
    size: int | None = None


@dataclass
class Opened:
    """An artifact opened for reading: its bytes and what became known on opening."""

    chunks: Iterator[bytes]
    size: int | None = None  #: declared size (e.g. Content-Length), checked by the core
    extension: str | None = None  #: overrides Artifact.extension (e.g. from the Content-Type)
    content_type: str | None = None
    close: Callable[[], None] | None = None
    #: optional: fill the buffer with the next bytes, return how many (0 at the end); when given,
    #: the core may read a large artifact through it, into buffers it reuses, instead of ``chunks``
    readinto: Callable[[memoryview], int] | None = None
    #: optional: what changes when the bytes change (an HTTP ``ETag``); kept with a resumable
    #: upload and given back to :attr:`Artifact.open_from`, so a changed artifact is sent again
    validator: str | None = None


@dataclass
class Artifact:
    """One file of a recording (``media``, ``transcript``, ``metadata``, ``captions``...).

    ``open()`` may be called more than once: each call starts the download again (a retry).
    ``size`` and ``sha256``, when the source knows them in advance, are checked by the core: a
    mismatch is a failure, never a done file.
    """

    name: str
    open: Callable[[], Opened]
    extension: str = "bin"
    size: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    #: optional: open the artifact from byte ``offset`` on, for an upload a stopped worker left
    #: mid-file (``open_from(offset, validator)``). ``validator`` is the :attr:`Opened.validator`
    #: of the first download (or ``None``). The :class:`Opened` it returns has the bytes from
    #: ``offset`` in ``chunks`` and the *whole* artifact's size in ``size``. Raise
    #: :class:`portshift.ResumeRefused` when the source cannot (no range requests, or the bytes
    #: changed since: the validator differs): the core then sends the artifact again from byte 0.
    open_from: Callable[[int, str | None], Opened] | None = None

    @classmethod
    def from_bytes(cls, name: str, data: bytes, extension: str, content_type: str | None = None) -> Artifact:
        """An artifact whose content is already in memory (a small JSON document)."""
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        return cls(
            name=name,
            open=lambda: Opened(chunks=iter((data,)), size=len(data), content_type=content_type),
            extension=extension,
            size=len(data),
            sha256=digest,
            content_type=content_type,
        )


class Source(ABC):
    """Lists recordings in a window and yields each one's artifacts."""

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    #: One line shown by ``portshift plugins``.
    description: ClassVar[str] = ""

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    def location(self) -> str:
        """Where the data comes from, safe to log and store (no credentials)."""
        return ""

    def check(self) -> None:
        """Reach the source without exporting (``portshift check``); raise on failure."""

    @abstractmethod
    def recordings(self, window: Window) -> Iterable[Recording]:
        """Every recording in ``window``, each exactly once."""

    @abstractmethod
    def artifacts(self, recording: Recording) -> Iterable[Artifact]:
        """The artifacts of one recording. Raise :class:`portshift.errors.SkipRecording` to skip
        it with a reason, :class:`portshift.errors.AuthError` to stop the job."""

    #: Set by the core before listing: set when the run is asked to stop (SIGINT/SIGTERM, a fatal
    #: error elsewhere). Wait on it instead of ``time.sleep`` (``if self.cancel.wait(delay): ...``)
    #: so that a long ``Retry-After`` never holds up Ctrl-C. ``None`` outside a run.
    cancel: threading.Event | None = None

    #: What this source's listing cannot see, in one sentence for users (e.g. calls private to
    #: their owner); shown by ``portshift verify --against-source``. Empty: nothing known.
    listing_limits: ClassVar[str] = ""

    #: Set by the core before listing: call it with a short text saying what is being listed now
    #: (``"calls 2026-01-01 .. 2026-01-08, page 3"``); the progress line and the logs show it
    #: while the listing runs. ``None`` outside a run.
    on_listing: Callable[[str], None] | None = None

    #: The limiter that paces this source's requests, when it has one: the core shares it with
    #: every worker of the job (one ceiling for all, and a ``pause`` after a 429 stops them all),
    #: through the state. ``None``: the source paces nothing the core could share.
    rate_limiter: RateLimiter | None = None

    #: Set by the core before listing when the run has a state: where the source keeps what it
    #: found about the service for the next run, keyed by its location (the request rate found,
    #: see :class:`portshift.AutoRate`). ``None``: nothing is kept.
    rate_memory: RateMemory | None = None

    def status(self) -> str:
        """A few words on the source's own state for the progress line and the run summary
        (e.g. ``"API 4.2 req/s (auto)"``); empty: nothing to say."""
        return ""

    def close(self) -> None:
        """Release connections."""


@dataclass
class PutResult:
    """What the store confirmed about one object."""

    key: str
    size: int
    #: provider-confirmed checksums, e.g. ``{"sha256": <hex>}``, ``{"md5": <base64>}``
    checksums: dict[str, str] = field(default_factory=dict)
    version: str | None = None  #: ETag, version id or generation
    #: what the provider verified, for the record (``"S3 checked SHA-256 of each part"``)
    verified: str = ""


class Sink(ABC):
    """Stores objects. Needs write access only: never lists, reads or deletes."""

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    description: ClassVar[str] = ""

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    def location(self) -> str:
        """Where the data goes (``s3://bucket/prefix``), safe to log and store."""
        return ""

    def check(self) -> None:
        """Reach the destination without writing an export (``portshift check``)."""

    @abstractmethod
    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        """Store ``stream`` under ``key`` (relative to the sink's own prefix).

        Read ``stream`` to its end. ``size`` is the declared size when known. On any failure,
        leave nothing visible under ``key`` (abort multipart uploads, remove temporary files)
        and raise. Return only after the store confirmed a durable write.
        """

    def resume(self, key: str, continuation: Continuation, size: int | None = None) -> PutResult:
        """Optional: finish an upload of ``key`` that a stopped worker left mid-file.

        ``continuation.data`` is the journal entry this sink wrote for it, with the core's
        ``"resume"`` field (see :meth:`HashingStream.resume_point`). Check what the store holds
        against the entry (the parts, their checksums); then ``continuation.open()`` gives the rest
        of the artifact, from ``continuation.offset`` on, with the whole-file SHA-256 taken up
        where it stopped. Read it to the end and complete the upload, as :meth:`put` does: the
        result is what a fresh upload would give. Raise :class:`portshift.ResumeRefused` (before
        opening, or when something does not match) to have the core abort the old upload (through
        :meth:`recover`) and send the artifact again from byte 0; any other error fails the
        artifact as a failed :meth:`put` does. Only called on sinks that override it.
        """
        from .resume import ResumeRefused

        raise ResumeRefused("this destination cannot continue an upload")

    def recover(self, pending: list[tuple[str, dict[str, str]]]) -> None:
        """Clean up what a killed process left behind (called once per run, before transfers).

        ``pending`` holds what this sink wrote with :meth:`Journal.begin` and did not
        :meth:`Journal.end` in an earlier run of the same job: e.g. an S3 multipart upload id to
        abort. Only called on sinks that set :attr:`journal`; never store a credential there.
        """

    #: Set by the core before the first put when the job has a state DB: an append-only record
    #: of in-flight operations that survives a crash (SIGKILL, power loss). ``None`` otherwise.
    journal: Journal | None = None

    #: Set by the core before the first put: set when the run is asked to stop (SIGINT/SIGTERM,
    #: a fatal error elsewhere). Retry through :mod:`portshift.retry` with it (or wait on it
    #: instead of ``time.sleep``) so that a backoff never holds up Ctrl-C. ``None`` outside a run.
    cancel: threading.Event | None = None

    def close(self) -> None:
        """Release connections."""


class Journal(ABC):
    """Records in-flight operations of a sink in the job state, so a later run can clean them up."""

    @abstractmethod
    def begin(self, key: str, data: dict[str, str]) -> None:
        """An operation on ``key`` started (``data``: ids needed to undo it, never a secret)."""

    @abstractmethod
    def end(self, key: str) -> None:
        """The operation on ``key`` finished (completed or aborted)."""


class Reader(ABC):
    """Reads an export back from a store, for ``portshift verify --store`` (read-only access).

    Usually registered under the same name as the sink, with the same ``Options`` model, so that
    the verify file looks like the job file's ``[sink]`` — with separate, read-only credentials.
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    description: ClassVar[str] = ""

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    def location(self) -> str:
        return ""

    @abstractmethod
    def open(self, key: str) -> Iterator[bytes]:
        """The bytes stored under ``key`` (relative to the configured prefix), streamed. Raise
        :class:`FileNotFoundError` when there is no such object."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Every key under ``prefix`` (relative to the configured prefix)."""

    def close(self) -> None:
        """Release connections."""


@dataclass
class ManifestEntry:
    """One exported file as a manifest writer sees it."""

    path: str  #: relative to the export root, ``/``-separated, key-safe
    size: int
    sha256: str
    recording_id: str
    artifact: str
    content_type: str | None = None
    recorded_at: str | None = None  #: the recording's start time (ISO 8601), if known
    verified: str = ""


@dataclass
class JobInfo:
    """The finished job, as manifest writers and lifecycle hooks see it (no secrets)."""

    id: str
    window_start: str
    window_end: str
    started_at: str
    finished_at: str | None
    source: str  #: "<type> <location>"
    sink: str
    export_root: str
    file_count: int = 0
    total_bytes: int = 0
    tool_version: str = ""
    status: str = "running"
    #: recordings of the window not exported, and artifacts missing at the source, each a dict
    #: with ``recording_id``, ``status`` (skipped, pending, failed, missing), ``reason``,
    #: ``message`` and, for a missing artifact, ``artifact``: the manifest's inventory
    not_exported: list[dict[str, str]] = field(default_factory=list)
    #: the source's inventory of the window: recordings per outcome and reason, files missing
    #: per reason, and ``listed_ids_sha256`` (see docs/manifest.md); empty before the job ends
    inventory: dict[str, object] = field(default_factory=dict)
    #: recordings of the window a ``--since last`` job found exported by an earlier job:
    #: ``recording_id`` and ``job``
    exported_earlier: list[dict[str, str]] = field(default_factory=list)


@dataclass
class StoredFile:
    """A manifest file the core stored for a writer."""

    path: str
    size: int
    sha256: str


class ManifestWriter(ABC):
    """Renders the finished job into files stored through the same sink."""

    Options: ClassVar[type[PluginOptions]] = PluginOptions
    description: ClassVar[str] = ""
    #: A folder every exported file goes under when this writer is configured (BagIt: ``data/``).
    payload_prefix: ClassVar[str] = ""

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    @abstractmethod
    def write(
        self,
        job: JobInfo,
        entries: Callable[[], Iterator[ManifestEntry]],
        store: Callable[[str, Iterable[bytes]], StoredFile],
    ) -> str:
        """Write the manifest. ``entries()`` streams the done files (sorted by path; call it as
        often as needed). ``store(path, chunks)`` stores one file under the export root and
        returns its size and SHA-256. Return the path of the primary file, whose SHA-256 the
        core prints and keeps with the job."""
