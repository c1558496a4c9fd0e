"""The local sink's folders (issue 16: the per-file cost): made once per process, checked to be
inside the destination without resolving every path again, and a stale temporary file of a
killed process still removed where one can be."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from portshift import HashingStream, SinkError
from portshift.default_plugins.local_folders import Folders
from portshift.default_plugins.local_sink import LocalOptions, LocalSink


def _put(sink: LocalSink, key: str, data: bytes) -> None:
    sink.put(key, HashingStream(iter([data])), len(data))


@pytest.mark.parametrize("key", ["../x.bin", "a/../../x.bin", "/etc/x.bin", "", ".", "a/..", "..", "a/\0/x.bin"])
def test_keys_that_leave_the_destination_are_refused_before_anything_is_made(tmp_path: Path, key: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SinkError, match="escapes"):
        Folders(str(dest)).place(key)
    assert list(dest.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["dest"]


def test_a_symbolic_link_out_of_the_destination_is_refused_one_inside_is_followed(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    (dest / "real").mkdir(parents=True)
    outside.mkdir()
    (dest / "out").symlink_to(outside)
    (dest / "in").symlink_to(dest / "real")
    sink = LocalSink(LocalOptions(path=dest, fsync=False))
    with pytest.raises(SinkError, match="escapes"):
        _put(sink, "out/2024/x.bin", b"secret call")
    assert list(outside.iterdir()) == []
    _put(sink, "in/y.bin", b"ok")
    assert (dest / "real" / "y.bin").read_bytes() == b"ok"


def test_a_file_in_the_way_of_a_folder_is_one_clear_error(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "2024").write_text("not a folder")
    sink = LocalSink(LocalOptions(path=dest, fsync=False))
    with pytest.raises(SinkError, match="cannot write .*Not a directory"):
        _put(sink, "2024/01/x.bin", b"x")
    assert (dest / "2024").read_text() == "not a folder"


def test_a_stale_temporary_file_is_removed_from_a_folder_this_process_did_not_make(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "a").mkdir(parents=True)
    stale = dest / "a" / ".x.bin.portshift-0badf00d.part"  # left by a killed process
    stale.write_bytes(b"half")
    other = dest / "a" / ".y.bin.portshift-12345678.part"  # another key's: not this put's business
    other.write_bytes(b"other")
    sink = LocalSink(LocalOptions(path=dest, fsync=False))
    data = os.urandom(1000)
    _put(sink, "a/x.bin", data)
    assert not stale.exists() and other.exists()
    assert hashlib.sha256((dest / "a" / "x.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_folders_are_made_once_and_remember_who_made_them(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "old").mkdir(parents=True)
    folders = Folders(str(dest))
    assert folders.place("new/deep/x.bin") == (str(dest / "new" / "deep"), "x.bin", True)
    assert folders.place("new/deep/y.bin")[2] is True  # remembered: not made again
    assert folders.place("old/z.bin") == (str(dest / "old"), "z.bin", False)
    assert folders.place("top.bin") == (str(dest), "top.bin", False)
    folders.forget("new/deep/x.bin")
    (dest / "new" / "deep").rmdir()
    assert folders.place("new/deep/x.bin")[2] is True


def test_a_folder_removed_behind_the_sinks_back_is_made_again(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    sink = LocalSink(LocalOptions(path=dest, fsync=False))
    _put(sink, "2024/01/a/x.bin", b"one")
    (dest / "2024" / "01" / "a" / "x.bin").unlink()
    (dest / "2024" / "01" / "a").rmdir()
    (dest / "2024" / "01").rmdir()
    _put(sink, "2024/01/a/y.bin", b"two")
    assert (dest / "2024" / "01" / "a" / "y.bin").read_bytes() == b"two"
