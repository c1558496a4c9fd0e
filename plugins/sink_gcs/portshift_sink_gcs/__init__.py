"""portshift-sink-gcs: store exports in Google Cloud Storage.

Each file becomes one object: a single multipart request when it fits in one chunk, otherwise
a resumable upload fed chunk by chunk as the artifact arrives. GCS checks the CRC32C and MD5
computed in the same pass as the manifest's SHA-256, and the sink compares what GCS reports.
Credentials: a service-account key from ``PORTSHIFT_GCS_KEY`` or ``key_file`` (parsed in
memory, never written), or Application Default Credentials (workload identity).
"""

from __future__ import annotations

from typing import Any

from portshift import hookimpl, lazy_attributes

__all__ = ["GcsOptions", "GcsReader", "GcsSink"]


#: the SDK is imported only when a job uses this plugin (registered by reference below);
#: ``from <package> import <Class>`` still works and imports it then
__getattr__ = lazy_attributes(__name__, {"GcsOptions": "options", "GcsReader": "reader", "GcsSink": "sink"})


@hookimpl
def register_sinks(register: Any) -> None:
    register("gcs", "portshift_sink_gcs.sink:GcsSink")


@hookimpl
def register_readers(register: Any) -> None:
    register("gcs", "portshift_sink_gcs.reader:GcsReader")
