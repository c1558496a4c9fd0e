"""portshift-sink-gcs: store exports in Google Cloud Storage.

Each file becomes one object: a single multipart request when it fits in one chunk, otherwise
a resumable upload fed chunk by chunk as the artifact arrives. GCS checks the CRC32C and MD5
computed in the same pass as the manifest's SHA-256, and the sink compares what GCS reports.
Credentials: a service-account key from ``PORTSHIFT_GCS_KEY`` or ``key_file`` (parsed in
memory, never written), or Application Default Credentials (workload identity).
"""

from __future__ import annotations

from portshift import hookimpl

from .options import GcsOptions
from .reader import GcsReader
from .sink import GcsSink
from .transport import pin_loggers

__all__ = ["GcsOptions", "GcsReader", "GcsSink"]

pin_loggers()


@hookimpl
def register_sinks(register):  # type: ignore[no-untyped-def]
    register("gcs", GcsSink)


@hookimpl
def register_readers(register):  # type: ignore[no-untyped-def]
    register("gcs", GcsReader)
