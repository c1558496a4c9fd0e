"""The built-in ``local`` sink: a folder on this machine (or a mounted volume).

Each object is written to a temporary name in its destination folder, fsynced, and renamed
into place atomically; the folder is fsynced too. A partial file never exists under the final
name. This folder is the destination, the one place portshift writes recording bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

from pydantic import Field, field_validator

from portshift import (
    ConfigError,
    ExitCode,
    FatalError,
    HashingStream,
    IntegrityError,
    PluginOptions,
    PutResult,
    Reader,
    Sink,
    SinkError,
    hookimpl,
)

from .local_folders import Folders

CHUNK = 1024 * 1024
WRITE_BEHIND = 32 * 1024 * 1024  #: bytes written between two hints to write the file out (large files only)
_DONTNEED: int | None = getattr(os, "POSIX_FADV_DONTNEED", None)


class LocalOptions(PluginOptions):
    section = "sink"
    path: Path = Field(description="destination folder; created if missing")
    fsync: bool = Field(default=True, description="fsync each file and its folder before it counts as written")

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path) -> Path:
        # checked when the job file is read: nothing (no state, no job) exists yet
        expanded = value.expanduser()
        if expanded.exists() and not expanded.is_dir():
            raise ConfigError(
                f"[{cls.section}] path: {expanded} is a file, not a folder",
                hint="give the folder to export into (it is created if missing)",
            )
        return value


class DestinationNotWritable(FatalError):
    """The destination folder refuses writes (permission denied, read-only file system): every
    later file would fail the same way, so the job stops at once. A configuration problem."""

    exit_code = ExitCode.USAGE


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalSink(Sink):
    Options = LocalOptions
    description = "a folder on this machine: atomic rename, fsynced"

    def __init__(self, options: LocalOptions) -> None:
        super().__init__(options)
        self.root = Path(options.path).expanduser()
        self._root_seen = False
        self._root_lock = threading.Lock()
        self._folders: Folders | None = None  #: the folders made under the resolved root, once each

    def _ensure_root(self) -> None:
        """Create the destination folder once; if it vanishes later (an unmounted volume, a
        deleted folder), stop the job rather than write into whatever is there now."""
        with self._root_lock:
            if self._root_seen:
                if not self.root.is_dir():
                    raise FatalError(
                        f"the destination folder {self.root} disappeared during the export",
                        operation="put",
                        hint="check the volume is mounted, then re-run the same command to resume",
                    )
                return
            with _disk_errors(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
            self._root_seen = True

    def location(self) -> str:
        return str(self.root.resolve())

    def check(self) -> None:
        """The destination (or, while it does not exist yet, the folder it will be created in)
        must be a folder this process can create files in: a real probe file in the destination
        (created and removed at once), ``os.access`` on a parent that portshift would create it in."""
        probe_dir = self.root
        while not probe_dir.exists():
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise ConfigError(f"[sink] path: {probe_dir} is not a folder", hint="give the folder to export into")
        if probe_dir != self.root:
            if not os.access(probe_dir, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"[sink] path: cannot create {self.root}: {probe_dir} is not writable by this user",
                    hint="create the folder with the right owner, or choose another path",
                )
            return
        probe = self.root / f".portshift-check-{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise ConfigError(f"[sink] path: cannot write into {self.root}: {e.strerror}", hint=_hint(e.errno)) from None
        os.close(fd)
        _unlink_quietly(probe)

    def _place(self, key: str) -> tuple[Path, bool]:
        """The file's path for ``key`` (its folder made if missing) and whether this process
        created that folder."""
        folders = self._folders
        if folders is None:
            folders = self._folders = Folders(os.path.realpath(self.root))
        with _disk_errors(self.root / key):
            folder, name, fresh = folders.place(key)
        return Path(folder, name), fresh

    def put(self, key: str, stream: HashingStream, size: int | None = None) -> PutResult:
        self._ensure_root()
        target, fresh = self._place(key)
        stale_prefix = f".{target.name}.portshift-"
        tmp = target.parent / f"{stale_prefix}{os.urandom(4).hex()}.part"
        fd = -1
        written = 0
        pieces: Generator[memoryview, None, None] | None = None
        try:
            with _disk_errors(target):
                if not fresh:
                    # a process killed mid-write (SIGKILL, power loss) leaves its temporary file:
                    # the next put of the same key removes it (a folder this process made has none)
                    with os.scandir(target.parent) as entries:
                        stale = [e.path for e in entries if e.name.startswith(stale_prefix) and e.name.endswith(".part")]
                    for path in stale:
                        _unlink_quietly(Path(path))
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileNotFoundError:  # its folder was removed since this process made it
                    assert self._folders is not None
                    self._folders.forget(key)
                    target, fresh = self._place(key)
                    tmp = target.parent / tmp.name
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            # errors raised by the stream (the source) pass through unchanged: they are retryable
            advised = 0
            pieces = stream.views()  # a large download's own buffers, hashed meanwhile
            for piece in pieces:
                with _disk_errors(target):
                    view = piece
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                written += len(piece)
                if written - advised >= WRITE_BEHIND and _DONTNEED is not None:
                    # start writing the file out now and keep its pages out of the cache: the
                    # fsync at the end has little left to do, and writing into a full cache
                    # (kernel page reclaim) costs several times what the write itself does
                    with contextlib.suppress(OSError):  # only a hint: a file system may not take it
                        os.posix_fadvise(fd, 0, written, _DONTNEED)
                    advised = written
            with _disk_errors(target):
                if self.options.fsync:
                    os.fsync(fd)
                on_disk = os.fstat(fd).st_size
                os.close(fd)
                fd = -1
                os.replace(tmp, target)
                if self.options.fsync:
                    _fsync_dir(target.parent)
        except BaseException:
            if pieces is not None:
                pieces.close()  # ends the stream's hashing thread now, not when the generator is collected
            if fd >= 0:
                os.close(fd)
            _unlink_quietly(tmp)
            raise
        if on_disk != written:
            raise IntegrityError(f"{target}: {on_disk} bytes on disk, {written} written")
        return PutResult(key=key, size=written, verified="size re-read from disk after fsync")


#: errors after which every later write to the destination fails the same way
_FULL = (errno.ENOSPC, errno.EDQUOT)
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _hint(code: int | None) -> str:
    if code in _FULL:
        return "free space, then re-run the same command to resume"
    if code == errno.EROFS:
        return "the file system is mounted read-only: remount it read-write or choose another path, then re-run"
    if code in (errno.EACCES, errno.EPERM):
        return "let the user running portshift create files in the folder, or choose another path, then re-run"
    return "check the destination folder"


@contextlib.contextmanager
def _disk_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        # every later write would fail the same way: stop the job at once, keep what is done
        if e.errno in _FULL:
            raise FatalError(f"cannot write {target}: {e.strerror}", operation="put", hint=_hint(e.errno)) from None
        if e.errno in _REFUSED:
            raise DestinationNotWritable(f"cannot write {target}: {e.strerror}", operation="put", hint=_hint(e.errno)) from None
        raise SinkError(f"cannot write {target}: {e.strerror or type(e).__name__}", operation="put", retryable=False) from None


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class LocalReader(Reader):
    """Reads an export back from a local folder (``portshift verify --store``)."""

    Options = LocalOptions
    description = "reads a local folder"

    def __init__(self, options: LocalOptions) -> None:
        super().__init__(options)
        self.root = Path(options.path).expanduser()

    def location(self) -> str:
        return str(self.root.resolve())

    def open(self, key: str) -> Iterator[bytes]:
        path = self.root / key
        with open(path, "rb") as f:  # FileNotFoundError when missing
            while True:
                block = f.read(CHUNK)
                if not block:
                    return
                yield block

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        for path in sorted(base.rglob("*")):
            if path.is_file():
                yield path.relative_to(self.root).as_posix()


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("local", LocalSink)


@hookimpl
def register_readers(register):  # type: ignore[no-untyped-def]
    register("local", LocalReader)
