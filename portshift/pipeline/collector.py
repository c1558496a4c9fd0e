"""Python's cyclic garbage collector while a worker transfers.

Every full collection walks every object the process holds, and most of those were made at start
(modules, plugins, the job's configuration) and live until the end. Exporting many small calls
allocates enough containers per call to run a collection every few calls. During the transfer,
:func:`fewer_collections` sets what exists at its start aside (``gc.freeze``: not walked again)
and collects the youngest generation less often; both are undone at the end, so a process that
runs many jobs (the service) keeps collecting what they leave behind.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: allocations (net) between two collections of the youngest generation (Python's default: 700)
YOUNG_THRESHOLD = 20_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(previous[0], YOUNG_THRESHOLD), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
