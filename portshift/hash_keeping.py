"""The part of :class:`~portshift.hashing.HashingStream` that makes an upload resumable after a
crash (issue 21): the SHA-256's state kept at every part boundary, and the resume point a sink
journals once the parts up to one are stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .hashing_thread import _Hasher


class KeptStates:
    """Mixed into :class:`~portshift.hashing.HashingStream` (whose attributes these are)."""

    _sha: Any
    _every: int
    _states: dict[int, str]
    _hash: Callable[[Any], object]
    _hasher: _Hasher | None
    _hasher_from: int
    _expect_size: int | None
    resume_info: dict[str, str | None] | None
    resumed_at: int
    bytes_read: int

    def keep_states(self, every: int) -> bool:
        """Make this upload resumable after a crash, at every multiple of ``every`` bytes (the
        sink's part size): the SHA-256's state is kept at each, and :meth:`resume_point` gives what
        to journal once the parts up to there are stored. Call it before the first read. ``False``
        (nothing kept) when the core does not offer it for this artifact (no state, smaller than
        ``PORTSHIFT_RESUME_ABOVE``), this process has no saveable SHA-256, or ``every`` is not a
        multiple of 64."""
        from . import hash_state

        if self.bytes_read > self.resumed_at:
            raise RuntimeError("keep_states() must be called before the first read")
        if self.resume_info is None or every <= 0 or every % 64:
            return False
        if not self.resumed_at:
            fresh = hash_state.new("sha256")
            if fresh is None:
                return False
            self._sha = fresh
        self._every = every
        self._hash = self._hash_keeping
        return True

    def wait_hashed(self, offset: int) -> None:
        """Wait until the SHA-256 and the observers have taken in the first ``offset`` bytes. With
        ``readinto`` (and ``pieces`` of a large download) they run on a thread of the stream, a
        few buffers behind the bytes handed out: a sink that reads an observer's state at a piece
        boundary from another thread (when the store confirms the piece) waits for it here.
        Returns at once otherwise, or when that thread failed or has nothing left to hash."""
        hasher = self._hasher
        if hasher is not None:
            hasher.wait_for(offset - self._hasher_from)

    def resume_point(self, offset: int) -> str | None:
        """What the sink journals, in its entry's ``"resume"`` field, once the first ``offset``
        bytes (a multiple of the ``every`` given to :meth:`keep_states`) are stored and confirmed:
        text that :class:`portshift.Continuation` gives back to the sink's ``resume``. ``None``
        when nothing was kept. A point is given once (and the ones before it are forgotten)."""
        self.wait_hashed(offset)  # readinto(): the state at offset is taken by the hashing thread
        state = self._states.pop(offset, None)
        for older in [o for o in list(self._states) if o < offset]:
            self._states.pop(older, None)
        info = self.resume_info
        if state is None or info is None:
            return None
        from .resume import ResumePoint

        return ResumePoint(
            offset=offset,
            sha256_state=state,
            size=self._expect_size,
            validator=info.get("validator"),
            recording_id=info["recording"],
            artifact=info["artifact"],
            extension=info["ext"],
        ).encode()

    def _hash_keeping(self, data: Any) -> None:
        sha, every = self._sha, self._every
        view = memoryview(data)
        while view:
            to_mark = every - sha.length % every
            if len(view) < to_mark:
                sha.update(view)
                return
            sha.update(view[:to_mark])
            self._states[sha.length] = sha.export()
            view = view[to_mark:]
