"""Where the ``local`` sink puts a key: the folder under the destination, made once per process
and checked to be a real folder inside the destination (a symbolic link is followed only while
it stays inside), without resolving every component of every path again for each file (at many
small calls that was a tenth of a worker's CPU)."""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import threading

from portshift import SinkError

#: folders remembered per process before the memory is cleared (a folder is then checked again)
REMEMBER = 50_000


class Folders:
    """The folders of one destination (``root``: its real path) that this process has made or
    checked: for each, whether this process created it (then no other process's temporary file
    can be in it)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._known: dict[str, bool] = {}
        self._lock = threading.Lock()

    def place(self, key: str) -> tuple[str, str, bool]:
        """``(folder, name, fresh)`` for ``key``: the folder's path (created if missing), the
        file's name in it, and whether this process created that folder. Raises
        :class:`~portshift.SinkError` for a key that leaves the destination, ``OSError`` when a
        folder cannot be made (a file in the way, no space, no permission)."""
        norm = posixpath.normpath(key) if key else "."
        if norm in (".", "..") or norm.startswith(("/", "../")) or "\0" in norm:
            raise SinkError(f"key {key!r} escapes the destination folder", retryable=False)
        folder, name = posixpath.split(norm)
        if not folder:
            return self.root, name, False
        fresh = self._known.get(folder)
        if fresh is None:
            fresh = self._make(folder, key)
        return os.path.join(self.root, folder), name, fresh

    def forget(self, key: str) -> None:
        """Check ``key``'s folders again at the next :meth:`place` (one was removed meanwhile)."""
        folder = posixpath.dirname(posixpath.normpath(key))
        with self._lock:
            while folder:
                self._known.pop(folder, None)
                folder = posixpath.dirname(folder)

    def _make(self, folder: str, key: str) -> bool:
        path, made = self.root, False
        parts = folder.split("/")
        for i, part in enumerate(parts):
            rel = "/".join(parts[: i + 1])
            path = os.path.join(path, part)
            known = self._known.get(rel)
            if known is not None:
                made = known
                continue
            try:
                os.mkdir(path)
                made = True
            except FileExistsError:
                made = False
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    real = os.path.realpath(path)
                    if not (real + os.sep).startswith(self.root.rstrip(os.sep) + os.sep) or not os.path.isdir(real):
                        raise SinkError(f"key {key!r} escapes the destination folder", retryable=False) from None
                elif not stat.S_ISDIR(mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
            with self._lock:
                if len(self._known) >= REMEMBER:
                    self._known.clear()
                self._known[rel] = made
        return made
