"""The first listed recordings reach the claims at once: a transfer that finds nothing to claim
asks the lister (``want``), which writes what it holds and the next row as soon as it is listed,
and tells the claims (``on_rows``) instead of leaving them to look again later. Real SQLite
state; a source whose listing stops mid-page until the test lets it go on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from portshift.api import Recording, Window
from portshift.pipeline.listing import BATCH, Lister
from portshift.pipeline.planning import Plan
from portshift.state import open_state
from portshift.state.claims import listing_lock

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


class GatedSource:
    """Lists ``first`` recordings, then waits for ``go`` before the rest."""

    def __init__(self, first: int, rest: int) -> None:
        self.first, self.rest = first, rest
        self.go = threading.Event()
        self.waiting = threading.Event()

    def recordings(self, window: Window) -> Iterator[Recording]:
        for n in range(self.first + self.rest):
            if n == self.first:
                self._pause()
            yield Recording(id=f"call-{n:03d}", started_at=T0, fields={"type": "meeting"}, size=10)
        if not self.rest:
            self._pause()

    def _pause(self) -> None:
        self.waiting.set()
        assert self.go.wait(30)


def lister_for(state, source: GatedSource, woken: threading.Event) -> Lister:  # type: ignore[no-untyped-def]
    state.create_job(id="J1", job_key="k", started_at=T0.isoformat())
    job = state.job("J1")
    assert state.try_lock(listing_lock("J1"))
    plan = Plan(key="k", window=Window(T0, datetime(2024, 2, 1, tzinfo=timezone.utc)))
    return Lister(
        state,
        job,
        plan,
        source,  # type: ignore[arg-type]
        attempt=1,
        cancel=threading.Event(),
        outcome=lambda rec, e: None,
        on_listed=lambda size: None,
        on_already=lambda: None,
        on_rows=woken.set,
    )


@contextmanager
def listing(state, source: GatedSource, woken: threading.Event) -> Iterator[Lister]:  # type: ignore[no-untyped-def]
    """The lister running in its own thread, stopped at the source's gate; let go and joined after."""
    lister = lister_for(state, source, woken)
    thread = threading.Thread(target=lister.run)
    thread.start()
    try:
        assert source.waiting.wait(30)
        yield lister
    finally:
        source.go.set()
        thread.join(30)


def test_a_hungry_transfer_gets_the_rows_listed_so_far_and_the_next_one_at_once(tmp_path: Path) -> None:
    with open_state(tmp_path / "state.db") as state:
        source = GatedSource(first=3, rest=2)
        woken = threading.Event()
        with listing(state, source, woken) as lister:
            # three rows listed, far from a batch of BATCH and its 0.3 s: nothing written yet
            assert BATCH > 3 and state.todo_counts("J1") == (0, 0) and not woken.is_set()
            lister.want()  # a transfer found nothing to claim
            assert state.todo_counts("J1") == (3, 0) and woken.is_set()
            claimed = state.claim("J1", "w1", 10)
            assert [c.id for c in claimed] == ["call-000", "call-001", "call-002"]
            woken.clear()
            lister.want()
            source.go.set()  # the next row is written as soon as it is listed, and the claims told
            assert woken.wait(10)
        assert lister.complete
        assert sorted(c.id for c in state.claim("J1", "w1", 10)) == ["call-003", "call-004"]


def test_without_a_hungry_transfer_rows_are_written_in_batches(tmp_path: Path) -> None:
    with open_state(tmp_path / "state.db") as state:
        source = GatedSource(first=3, rest=0)
        woken = threading.Event()
        with listing(state, source, woken) as lister:
            lister.flush(stale_only=True)  # not stale yet: kept for the batch
            assert state.todo_counts("J1") == (0, 0)
        assert state.todo_counts("J1") == (3, 0) and woken.is_set()  # the end of the listing writes them
