"""What runs after a worker is gone, and the plugin calls that must not hold up a cancel.

:func:`recover_orphans` lets the sink clean up the operations a gone worker left in flight (open
multipart uploads, uncommitted blocks, resumable sessions): a starting worker does it for the
workers before it, and a running worker does it as soon as it finds another dead, so an upload a
killed worker left open is aborted while the job goes on, not only at the next run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..api import Sink
from ..errors import Interrupted
from ..redact import sanitize_message
from ..state import State

log = logging.getLogger("portshift.run")
T = TypeVar("T")


def cancellable(fn: Callable[[], T], cancel: threading.Event, what: str) -> T:
    """Run ``fn`` (a plugin call: a check, a clean-up, a manifest upload) in a thread of its own and
    wait for it, so that a cancel ends the wait at once even when the plugin is blocked (a long
    backoff, a socket read): :class:`Interrupted` is raised and the daemon thread is left behind."""
    return cancellable_all([(fn, what)], cancel)[0]


def cancellable_all(calls: list[tuple[Callable[[], Any], str]], cancel: threading.Event) -> list[Any]:
    """:func:`cancellable` for independent calls at once (each in its own thread): their
    results in order, or the first failure in that order once all ended."""
    boxes: list[list[Any]] = [[] for _ in calls]
    done = threading.Semaphore(0)

    def call(fn: Callable[[], Any], box: list[Any]) -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box.append((False, e))
        finally:
            done.release()

    threads = [threading.Thread(target=call, args=(fn, box), name=what, daemon=True) for (fn, what), box in zip(calls, boxes)]
    for thread in threads:
        thread.start()
    left = len(threads)
    while left:
        if done.acquire(timeout=0.05):  # a call ended: no polling delay
            left -= 1
            continue
        if cancel.is_set():
            for thread in threads:
                thread.join(0.5)  # a plugin that noticed the cancel ends by itself
            running = [t.name for t in threads if t.is_alive()]
            if running:
                raise Interrupted(f"interrupted while {running[0]}")
            break
    for ok, value in (box[0] for box in boxes):
        if not ok:
            raise value
    return [box[0][1] for box in boxes]


def recover_orphans(
    state: State, job_id: str, sink: Sink, cancel: threading.Event, *, keep_resumable: bool = True
) -> list[tuple[str, dict[str, str]]]:
    """Hand the sink the journal entries of workers that are gone; end those it cleaned up.

    Uploads left mid-file with a resume point (when the sink can continue them) are not handed
    over but returned, for the worker that exports their artifact next (``keep_resumable=False``:
    those too are cleaned up, at the end of the job's transfers)."""
    from .resuming import can_resume, resume_point_of

    pending = state.journal_orphans(job_id)
    kept: list[tuple[str, dict[str, str]]] = []
    if keep_resumable and pending and can_resume(sink):
        kept = [(k, d) for k, d in pending if resume_point_of(d) is not None]
        pending = [(k, d) for k, d in pending if resume_point_of(d) is None]
    if kept:
        log.info("%d uploads a stopped worker left mid-file are kept, to be continued", len(kept))
    if not pending:
        return kept
    log.info("cleaning up %d operations a stopped worker of this job left unfinished", len(pending))
    try:
        cancellable(lambda: sink.recover(pending), cancel, "cleaning up after a stopped worker")
    except Interrupted:
        raise
    except Exception as e:  # noqa: BLE001 - kept for the next try; the export goes on
        log.warning("cleaning up after a stopped worker failed (%s); will retry", sanitize_message(str(e)))
        return kept
    remaining = {k for k, _ in state.journal_orphans(job_id)}
    for key, _ in pending:
        if key in remaining:
            state.journal_end(job_id, key)
    return kept
