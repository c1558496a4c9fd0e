"""Sinks that are wrong the way a storage vendor's first attempt often is, and one that is right.

``tests/test_testing_kit.py`` runs the conformance kit against each (through ``contract_runs.py``
in a pytest subprocess) and checks that the kit fails every broken one for its defect.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

from portshift import HashingStream, PluginOptions, PutResult, Reader, Sink

CHUNK = 1024 * 1024


class FolderSink(Sink):
    """Right: a temporary file renamed into place, removed on any failure; streams in 1 MiB pieces."""

    def __init__(self, root: Path) -> None:
        super().__init__(PluginOptions())
        self.root = root

    def location(self) -> str:
        return str(self.root)

    def _write(self, key: str, chunks: Iterator[bytes]) -> Path:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(tmp, "xb") as out:
                for chunk in chunks:
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        self._write(key, stream.chunks(CHUNK))
        return PutResult(key=key, size=stream.bytes_read, checksums={"sha256": stream.sha256_hex()}, verified="renamed")


class SharedSqliteSink(Sink):
    """Wrong: one SQLite connection, opened in ``__init__``, shared by every thread that puts."""

    def __init__(self, db: Path) -> None:
        super().__init__(PluginOptions())
        self.db = sqlite3.connect(db)
        self.db.execute("create table if not exists blobs (key text, n integer, data blob)")
        self.db.commit()

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        try:
            self.db.execute("delete from blobs where key = ?", [key])
            for n, chunk in enumerate(stream.chunks(CHUNK)):
                self.db.execute("insert into blobs values (?, ?, ?)", [key, n, chunk])
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return PutResult(key=key, size=stream.bytes_read, checksums={"sha256": stream.sha256_hex()}, verified="committed")

    def close(self) -> None:
        self.db.close()


def read_sqlite(db: Path, key: str) -> bytes | None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select data from blobs where key = ? order by n", [key]).fetchall()
    return b"".join(r[0] for r in rows) if rows else None


class BufferingSink(FolderSink):
    """Wrong: reads the whole file into memory, then writes it."""

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        data = stream.read()
        self._write(key, iter([data]))
        return PutResult(key=key, size=len(data), checksums={"sha256": stream.sha256_hex()}, verified="renamed")


class NoChecksumSink(FolderSink):
    """Wrong: confirms nothing about what it stored."""

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        self._write(key, stream.chunks(CHUNK))
        return PutResult(key=key, size=stream.bytes_read)


class CrashingSink(FolderSink):
    """Wrong: every put fails, with a bare Exception."""

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        raise Exception("boom")  # noqa: TRY002 - the defect under test


class JournalAssumedSink(FolderSink):
    """Wrong: the old docs snippet, which assumes ``self.journal`` is set (it is ``None`` outside
    a run with a state DB) and ends the entry in ``finally``."""

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        self.journal.begin(key, {"upload_id": uuid.uuid4().hex})  # type: ignore[union-attr]
        try:
            return super().put(key, stream, size)
        finally:
            self.journal.end(key)  # type: ignore[union-attr]


class JournalLeakSink(FolderSink):
    """Wrong: begins a journal entry per put and never ends it (nor stores str values)."""

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        if self.journal is not None:
            self.journal.begin(key, {"upload_id": uuid.uuid4().int})  # type: ignore[dict-item]
        return super().put(key, stream, size)


class WholeObjectReader(Reader):
    """Wrong: returns each object as one piece, read whole into memory."""

    def __init__(self, root: Path) -> None:
        super().__init__(PluginOptions())
        self.root = root

    def open(self, key: str) -> Iterator[bytes]:
        return iter([(self.root / key).read_bytes()])

    def list(self, prefix: str) -> Iterator[str]:
        return iter(p.relative_to(self.root).as_posix() for p in (self.root / prefix).rglob("*") if p.is_file())
