"""The default manifest writer ``sha256sum``.

Writes ``portshift-manifest.json`` (a machine-readable index: every file with its recording id,
artifact, size, content type and what the provider verified) and then
``portshift-manifest.txt`` in GNU ``sha256sum`` format, which lists every exported file *and* the
JSON index. After copying the export root anywhere, ``sha256sum -c portshift-manifest.txt`` checks
everything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

from portshift import hookimpl
from portshift.api import JobInfo, ManifestEntry, ManifestWriter, StoredFile
from portshift.manifest import FORMAT_VERSION, INDEX_NAME, MANIFEST_NAME, header_lines
from portshift.options import PluginOptions


class Sha256sumOptions(PluginOptions):
    section = "manifest.sha256sum"


def _index_chunks(job: JobInfo, entries: Iterator[ManifestEntry]) -> Iterator[bytes]:
    head = {
        "format": FORMAT_VERSION,
        "job": {
            "id": job.id,
            "window": {"start": job.window_start, "end": job.window_end},
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "source": job.source,
            "file_count": job.file_count,
            "total_bytes": job.total_bytes,
            "tool": f"portshift {job.tool_version}",
        },
        # the source's inventory of the window: counts per outcome and reason, the listed ids' digest
        "inventory": job.inventory,
        # what the window held that is not in "files", each with its reason
        "not_exported": job.not_exported,
        # recordings of the window exported into an earlier job's root (--since last)
        "exported_earlier": job.exported_earlier,
    }
    text = json.dumps(head, indent=2)
    yield (text[:-2] + ',\n  "files": [').encode()
    first = True
    batch: list[str] = []
    for e in entries:
        item = {
            "path": e.path,
            "sha256": e.sha256,
            "size": e.size,
            "recording_id": e.recording_id,
            "artifact": e.artifact,
            "content_type": e.content_type,
            "recorded_at": e.recorded_at,
            "verified": e.verified,
        }
        batch.append(("\n    " if first else ",\n    ") + json.dumps(item, sort_keys=True))
        first = False
        if len(batch) >= 512:
            yield "".join(batch).encode()
            batch = []
    batch.append("\n  ]\n}\n")
    yield "".join(batch).encode()


class Sha256sumWriter(ManifestWriter):
    Options = Sha256sumOptions
    description = "portshift-manifest.txt (GNU sha256sum -c) and portshift-manifest.json"

    def write(
        self,
        job: JobInfo,
        entries: Callable[[], Iterator[ManifestEntry]],
        store: Callable[[str, Iterable[bytes]], StoredFile],
    ) -> str:
        index = store(INDEX_NAME, _index_chunks(job, entries()))

        def text() -> Iterator[bytes]:
            yield ("\n".join(header_lines(job)) + "\n").encode()
            lines = [f"{index.sha256}  {INDEX_NAME}\n"]
            for e in entries():
                lines.append(f"{e.sha256}  {e.path}\n")
                if len(lines) >= 1024:
                    yield "".join(lines).encode()
                    lines = []
            yield "".join(lines).encode()

        store(MANIFEST_NAME, text())
        return MANIFEST_NAME


@hookimpl
def register_manifest_writers(register):  # type: ignore[no-untyped-def]
    register("sha256sum", Sha256sumWriter)
