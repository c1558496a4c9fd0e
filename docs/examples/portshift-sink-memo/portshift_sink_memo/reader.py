"""The memo reader: reads a memo sink's folder back, for ``portshift verify --store``.

It takes the same options as the sink, so the verify file's ``[store]`` section can be a copy of
the job file's ``[sink]``. It only reads: open a file, list a folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from portshift import Reader

from .options import MemoOptions

CHUNK = 1024 * 1024


class MemoReader(Reader):
    Options = MemoOptions
    description = "reads a memo sink's folder back"

    def __init__(self, options: MemoOptions) -> None:
        super().__init__(options)
        self.root = Path(options.path).expanduser().resolve()

    def location(self) -> str:
        return str(self.root)

    def open(self, key: str) -> Iterator[bytes]:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise FileNotFoundError(key)
        with open(path, "rb") as f:  # FileNotFoundError when there is no such file
            while block := f.read(CHUNK):
                yield block

    def list(self, prefix: str) -> Iterator[str]:
        for path in sorted((self.root / prefix).rglob("*")):
            if path.is_file():
                yield path.relative_to(self.root).as_posix()
