"""A worker's seat in a job: its id, its lock and its lease, renewed while it works.

Every process that works on a job (``portshift run``, each ``portshift worker``) takes a seat:
it holds its worker lock for its lifetime and renews its lease every quarter of it. Others treat
it as dead when the lock is free (the process is gone) or the lease ran out (its machine is gone,
or it stalled): its recordings are claimed again and its in-flight uploads cleaned up.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading

from ..settings import read_settings
from ..state import State
from ..state.claims import worker_lock

log = logging.getLogger("portshift.run")

INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")


def worker_label() -> str:
    """How logs name this worker: the engine's index when there is one (naming only)."""
    for name in INDEX_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return f"worker {value}"
    return f"worker pid {os.getpid()}"


class WorkerSeat:
    def __init__(self, state: State, job_id: str, attempt: int, *, lease: float | None = None) -> None:
        self.state = state
        self.job_id = job_id
        self.attempt = attempt
        self.lease = lease if lease is not None else read_settings().lease
        self.id = secrets.token_hex(6)
        self.label = worker_label()
        self.alive = True  #: False once the lease was found expired (others redo what it held)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> WorkerSeat:
        if not self.state.try_lock(worker_lock(self.job_id, self.id)):
            raise RuntimeError("a fresh worker id is locked")  # a random id: cannot happen
        self.state.register_worker(self.job_id, self.id, self.label, self.attempt, self.lease)
        self._thread = threading.Thread(target=self._renew, name="lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                if not self.state.renew_worker(self.job_id, self.id, self.lease):
                    self.alive = False
                    log.error("this worker's lease ran out (it stalled for over %.0fs); others redo its recordings", self.lease)
                    return
            except Exception as e:  # noqa: BLE001 - the next renewal retries; the lease has slack
                log.warning("renewing this worker's lease failed: %s", type(e).__name__)

    def leave(self) -> None:
        """Stop renewing, give back what is still claimed, release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        try:
            self.state.end_worker(self.job_id, self.id)
        finally:
            self.state.unlock(worker_lock(self.job_id, self.id))
