"""The data keys of sealed jobs, for :class:`~portshift.state.State` (docs/byok.md).

A job is sealed when the state has a row for it in ``job_keys``: its data key wrapped by the
customer's key, and the key's name (``kms:arn:…``, ``file:/…``). :class:`Seals` makes the data key
of a new job, and unwraps the key of an existing one on first use; the unwrapped keys live only in
this object (this process's memory) and are dropped by :meth:`Seals.forget` (when the state is
closed). Nothing unwraps at all for a state without sealed jobs.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..key_providers import KeyProvider, key_provider
from ..sealing import KeyUnavailableError, Sealer
from ..settings import read_settings

if TYPE_CHECKING:
    from . import State

#: the columns of ``jobs`` that name the customer's data (sealed); the others stay clear
JOB_SEALED = ("config_path", "source_location", "sink_location", "export_root", "error", "manifest_key", "manifest_sha256")
#: seconds a key that could not be used at all is not asked again (see Seals.of)
FAILURE_MEMORY = 30.0
#: what ``portshift jobs`` shows for a job whose key cannot be used
UNAVAILABLE = "sealed: the customer's key is not available"


class KeyedIds:
    """The recording ids a job has done, as keyed hashes: ``rec.id in done`` hashes ``rec.id``
    with the job's lookup key; no row is decrypted."""

    def __init__(self, sealer: Sealer, tags: Iterable[str]) -> None:
        self._sealer = sealer
        self._tags = frozenset(tags)

    def __contains__(self, recording_id: object) -> bool:
        return isinstance(recording_id, str) and self._sealer.lookup("recording_id", recording_id) in self._tags

    def __len__(self) -> int:
        return len(self._tags)

    def __bool__(self) -> bool:
        return bool(self._tags)


class Seals:
    """The key for new jobs (``[state] key``), and the data keys of the jobs read so far."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.provider: KeyProvider | None = None
        settings = read_settings()  # for commands run without a job file (portshift jobs)
        self.endpoint_url: str | None = settings.state_key_endpoint_url
        self.ca_bundle: Path | None = Path(settings.state_key_ca_bundle) if settings.state_key_ca_bundle else None
        self._sealers: dict[str, Sealer | None] = {}
        self._providers: dict[str, KeyProvider] = {}
        self._failed: dict[str, tuple[float, KeyUnavailableError]] = {}  #: key name -> (when, why)
        self._lock = threading.Lock()
        #: False in a process that must never unwrap a customer's key (the service reading its
        #: sandboxed workers' progress): a sealed job then reads as "sealed", with its clear fields
        self.unwrap = True

    def use(self, provider: KeyProvider) -> None:
        """Seal new jobs with ``provider``'s key; its endpoint and CA reach the jobs' keys too."""
        self.provider = provider
        self.endpoint_url, self.ca_bundle = provider.endpoint_url or self.endpoint_url, provider.ca_bundle or self.ca_bundle
        self._providers[provider.label] = provider

    def forget(self) -> None:
        """Drop every unwrapped data key (the job ended, the state is closed)."""
        with self._lock:
            self._sealers.clear()

    def provider_named(self, name: str) -> KeyProvider:
        """The provider of a stored key name: the configured one, else one built from the name."""
        with self._lock:
            found = self._providers.get(name)
        if found is None:
            found = key_provider(name, endpoint_url=self.endpoint_url, ca_bundle=self.ca_bundle)
            with self._lock:
                self._providers[name] = found
        return found

    def for_new_job(self, job_id: str) -> Sealer | None:
        """A fresh data key for a new job, stored wrapped (and checked to unwrap) before the job is."""
        if self.provider is None:
            return None
        data_key, wrapped = self.provider.new_data_key(job_id)
        if self.provider.unwrap(wrapped, job_id) != data_key:
            raise KeyUnavailableError(f"the key {self.provider.label} did not give back the data key it wrapped")
        self.state._write(
            "record the job's wrapped data key",
            "insert into job_keys (job_id, key_label, wrapped, created_at) values (?, ?, ?, ?)",
            [job_id, self.provider.label, base64.b64encode(wrapped).decode("ascii"), _now()],
        )
        sealer = Sealer(job_id, data_key)
        with self._lock:
            self._sealers[job_id] = sealer
        return sealer

    def of(self, job_id: str) -> Sealer | None:
        """The job's sealer (None: the job is not sealed); :class:`KeyUnavailableError` naming the
        key when it cannot be unwrapped. A key that could not be used at all (disabled, unreachable)
        is not asked again for FAILURE_MEMORY seconds (``portshift jobs`` lists 50 jobs: one wait, not
        50); after that an enabled key works again, in the same process."""
        with self._lock:
            if job_id in self._sealers:
                return self._sealers[job_id]
        rows = self.state._rows("read the job's key", "select key_label, wrapped from job_keys where job_id = ?", [job_id])
        sealer = None
        if rows:
            name, wrapped = rows[0]
            if not self.unwrap:
                raise KeyUnavailableError(f"the key {name} is used only by the job's own worker")
            with self._lock:
                failed = self._failed.get(name)
            if failed is not None and time.monotonic() - failed[0] < FAILURE_MEMORY:
                raise KeyUnavailableError(failed[1].message, hint=failed[1].hint)
            try:
                sealer = Sealer(job_id, self.provider_named(name).unwrap(base64.b64decode(wrapped), job_id))
            except KeyUnavailableError as e:
                if e.whole_key:
                    with self._lock:
                        self._failed[name] = (time.monotonic(), e)
                raise
        with self._lock:
            self._sealers[job_id] = sealer
        return sealer

    def job_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A ``jobs`` row with its sealed columns opened, or, when the key is not available, with
        them empty and ``sealed`` saying so."""
        try:
            sealer = self.of(row["id"])
        except (KeyUnavailableError, ConfigError) as e:  # ConfigError: e.g. the key's provider is not installed
            return {**{k: v for k, v in row.items() if k not in JOB_SEALED}, "sealed": f"{UNAVAILABLE} ({e.message})"}
        if sealer is None:
            return row
        return {**row, **{c: sealer.open("jobs", c, row.get(c)) for c in JOB_SEALED if c in row}}

    def rewrap(self, new: KeyProvider, progress: Callable[[str], None] = lambda _: None) -> int:
        """Wrap every job's data key with ``new`` instead (rotation); the sealed rows stay as they are."""
        rows = self.state._rows("read the jobs' keys", "select job_id, key_label, wrapped from job_keys order by job_id", [])
        done = 0
        for job_id, name, wrapped in rows:
            if name == new.label:
                continue
            rewrapped = self.provider_named(name).rewrap(base64.b64decode(wrapped), job_id, new)
            self.state._write(
                "re-wrap a job's data key",
                "update job_keys set key_label = ?, wrapped = ?, rewrapped_at = ? where job_id = ? and key_label = ?",
                [new.label, base64.b64encode(rewrapped).decode("ascii"), _now(), job_id, name],
            )
            progress(job_id)
            done += 1
        return done


def _now() -> str:
    from . import now_iso

    return now_iso()
