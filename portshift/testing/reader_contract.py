"""``ReaderContract``: the tests every reader (``portshift verify --store``) must pass."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

import pytest

from ..api import Reader
from .data import pattern_bytes

Store = Callable[[str, bytes], None]


class ReaderContract:
    """Contract tests every reader must pass. Provide ``reader`` (your reader, configured) and
    ``store`` (a function ``store(key, data)`` that puts an object under ``key``, relative to the
    reader's prefix: usually your sink's ``put``, or an admin client).

    Set ``many_size`` above your reader's download chunk, so that reading streams in pieces.
    """

    many_size: int = 3 * 1024 * 1024 + 12345
    #: the largest piece ``open()`` may yield: a reader streams, it never returns a whole object
    #: (an object of ``many_size`` must come in more than one piece)
    max_chunk: int = 8 * 1024 * 1024

    @pytest.fixture
    def reader(self) -> Reader:  # pragma: no cover - provided by the plugin's tests
        raise NotImplementedError("provide a `reader` fixture")

    @pytest.fixture
    def store(self) -> Store:  # pragma: no cover
        raise NotImplementedError("provide a `store` fixture")

    @staticmethod
    def _prefix() -> str:
        return f"reader-contract/{uuid.uuid4().hex[:12]}/"

    def test_open_streams_what_was_stored(self, reader: Reader, store: Store) -> None:
        key = self._prefix() + "large.bin"
        data = pattern_bytes(self.many_size, seed=21)
        store(key, data)
        pieces = reader.open(key)
        assert not isinstance(pieces, (bytes, bytearray)), "open() must return an iterator of chunks"
        digest, size, biggest = hashlib.sha256(), 0, 0
        for piece in pieces:
            digest.update(piece)
            size += len(piece)
            biggest = max(biggest, len(piece))
        assert size == len(data) and digest.digest() == hashlib.sha256(data).digest()
        assert biggest < len(data) and biggest <= self.max_chunk, (
            f"open() yielded {biggest} of {len(data)} bytes at once: stream in pieces (at most max_chunk = {self.max_chunk})"
        )

    def test_open_an_empty_object(self, reader: Reader, store: Store) -> None:
        key = self._prefix() + "empty.bin"
        store(key, b"")
        assert b"".join(reader.open(key)) == b""

    def test_a_missing_object_is_file_not_found(self, reader: Reader, store: Store) -> None:
        prefix = self._prefix()
        store(prefix + "present.bin", b"x")
        with pytest.raises(FileNotFoundError):
            b"".join(reader.open(prefix + "absent.bin"))

    def test_list_gives_every_key_under_the_prefix_and_nothing_else(self, reader: Reader, store: Store) -> None:
        prefix = self._prefix()
        keys = [prefix + "a.bin", prefix + "sub/b.bin", prefix + "sub/deeper/c.json"]
        for i, key in enumerate(keys):
            store(key, pattern_bytes(10 + i, seed=i))
        store(prefix.rstrip("/") + "-sibling/d.bin", b"d")  # shares the prefix's text, not its folder
        listed = list(reader.list(prefix))
        assert len(listed) == len(set(listed)), "a key was listed twice"
        assert sorted(listed) == sorted(keys)

    def test_list_of_an_empty_prefix(self, reader: Reader) -> None:
        assert list(reader.list(self._prefix())) == []

    def test_location_has_no_secret(self, reader: Reader) -> None:
        loc = reader.location()
        assert "?" not in loc and "@" not in loc, f"location {loc!r} may carry credentials"

    def test_close_twice(self, reader: Reader) -> None:
        reader.close()
        reader.close()
