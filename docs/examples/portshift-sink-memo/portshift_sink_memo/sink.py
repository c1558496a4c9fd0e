"""The memo sink: each file goes into a folder, then one memo line goes into the memo file.

A file is written under a temporary name in its destination folder, fsynced and renamed into
place, so nothing half-written is ever visible under its key. It is then read back and hashed;
only when that matches what passed through the stream is the memo line appended (fsynced too).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from portshift import ConfigError, HashingStream, IntegrityError, PutResult, Sink, SinkError

from .memo import memo_line
from .options import MemoOptions

CHUNK = 1024 * 1024


class MemoSink(Sink):
    Options = MemoOptions
    description = "a folder, plus a memo line (size, SHA-256, optional HMAC) for every stored file"

    def __init__(self, options: MemoOptions) -> None:
        super().__init__(options)
        self.options: MemoOptions = options
        self.root = Path(options.path).expanduser().resolve()
        self.memo_path = self.root / options.memo
        self._memo_lock = threading.Lock()  # put() is called from several threads at once

    def location(self) -> str:
        return str(self.root)

    def check(self) -> None:
        existing = self.root
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise ConfigError(f"[sink] path: {existing} is not a folder")
        if not os.access(existing, os.W_OK):
            raise ConfigError(f"[sink] path: {existing} is not writable by this user")
        if self.memo_path.exists() and not os.access(self.memo_path, os.W_OK):
            raise ConfigError(f"[sink] memo: {self.memo_path} is not writable by this user")

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        target = self._target(key)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with _disk_errors(key):
                target.parent.mkdir(parents=True, exist_ok=True)
                for stale in target.parent.glob(f".{target.name}.*.part"):
                    stale.unlink(missing_ok=True)  # left by a process killed mid-write
                out = open(tmp, "xb")  # closed by the "with out" block below
            with out:
                # Errors raised by the stream come from the source: let them through unchanged
                # (the core retries them). Only errors of our own disk become SinkError.
                for chunk in stream.chunks(CHUNK):
                    with _disk_errors(key):
                        out.write(chunk)
                with _disk_errors(key):
                    out.flush()
                    os.fsync(out.fileno())
            with _disk_errors(key):
                os.replace(tmp, target)
                _fsync_dir(target.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

        try:
            stored_size, stored_sha256 = _hash_file(target)
            if stored_size != stream.bytes_read or stored_sha256 != stream.sha256_hex():
                raise IntegrityError(f"{key}: the file read back differs from the bytes written")
            stored_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._append_memo(memo_line(key, stored_size, stored_sha256, stored_at, self.options.memo_key))
        except BaseException:
            target.unlink(missing_ok=True)  # no memo line, so no file either
            raise
        return PutResult(
            key=key,
            size=stored_size,
            checksums={"sha256": stored_sha256},
            verified="read back from disk after fsync; SHA-256 matches",
        )

    def _target(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if self.root not in target.parents:
            raise SinkError(f"key {key!r} escapes the destination folder", retryable=False)
        if target == self.memo_path:
            raise SinkError(f"key {key!r} is the memo file", retryable=False)
        return target

    def _append_memo(self, line: bytes) -> None:
        with self._memo_lock, _disk_errors(self.options.memo):
            fd = os.open(self.memo_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    """OSError -> SinkError, with the reason and no traceback chain (``from None``)."""
    try:
        yield
    except OSError as e:
        raise SinkError(f"cannot write {what}: {e.strerror or type(e).__name__}", operation="put", retryable=False) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
