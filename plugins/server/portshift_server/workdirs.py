"""Where a job's files live, named so that no worker ever sees the job id.

The job id is the capability to read, cancel and resume a job: a worker must not learn it from a
file name. A job's work folder (and its default folder under the local sink's root) is named by a
keyed hash of the id; the key is made once, mode 0600, beside the work folders.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class WorkDirs:
    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self._key = _names_key(jobs_dir / ".names.key")

    def name(self, job_id: str) -> str:
        return hmac.new(self._key, job_id.encode(), hashlib.sha256).hexdigest()[:32]

    def of(self, job_id: str) -> Path:
        """The job's work folder (a folder of an older version, named by the id itself, is renamed
        on first use)."""
        work, legacy = self.jobs_dir / self.name(job_id), self.jobs_dir / job_id
        if not work.exists() and legacy.is_dir():
            legacy.rename(work)
        return work


def _names_key(path: Path) -> bytes:
    """The key of the work folders' names, made once (0600) beside them."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def local_export(job_file: Path) -> Path | None:
    """The export folder of a job that writes to the ``local`` sink, else None."""
    try:
        sink = tomllib.loads(job_file.read_text("utf-8")).get("sink", {})
    except (OSError, ValueError):
        return None
    return Path(sink["path"]) if sink.get("type") == "local" and isinstance(sink.get("path"), str) else None
