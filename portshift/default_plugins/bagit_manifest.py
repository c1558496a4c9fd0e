"""The ``bagit`` manifest writer: the export root becomes a BagIt bag (RFC 8493).

With ``manifest = ["sha256sum", "bagit"]`` (or ``["bagit"]``) every exported file goes under
``data/`` and the writer adds ``bagit.txt``, ``bag-info.txt`` (with ``Payload-Oxum``, the job id,
the export window and the source), ``manifest-sha256.txt`` and ``tagmanifest-sha256.txt``. A
downloaded export validates with the Library of Congress's ``bagit`` tool (``bagit.py --validate``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import date

from pydantic import Field

from portshift import hookimpl
from portshift.api import JobInfo, ManifestEntry, ManifestWriter, StoredFile
from portshift.options import PluginOptions


class BagitOptions(PluginOptions):
    section = "manifest.bagit"
    source_organization: str | None = Field(default=None, description="written as Source-Organization in bag-info.txt")


def _encode(path: str) -> str:
    # RFC 8493 2.1.3: CR, LF and % in file paths are percent-encoded (keys never hold CR/LF).
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


class BagitWriter(ManifestWriter):
    Options = BagitOptions
    description = "a BagIt bag (RFC 8493): payload under data/, manifest-sha256.txt, tagmanifest"
    payload_prefix = "data/"

    def write(
        self,
        job: JobInfo,
        entries: Callable[[], Iterator[ManifestEntry]],
        store: Callable[[str, Iterable[bytes]], StoredFile],
    ) -> str:
        tags = [store("bagit.txt", [b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"])]
        info = [
            f"Bagging-Date: {(job.finished_at or job.started_at or date.today().isoformat())[:10]}",  # stable on a rewrite
            f"Payload-Oxum: {job.total_bytes}.{job.file_count}",
            f"External-Identifier: {job.id}",
            f"External-Description: portshift export of {job.source}",
            f"Portshift-Window: {job.window_start} .. {job.window_end}",
            f"Bag-Software-Agent: portshift {job.tool_version}",
        ]
        if self.options.source_organization:
            info.insert(0, f"Source-Organization: {self.options.source_organization}")
        tags.append(store("bag-info.txt", [("\n".join(info) + "\n").encode()]))

        def payload() -> Iterator[bytes]:
            lines: list[str] = []
            for e in entries():
                if not e.path.startswith(self.payload_prefix):
                    continue
                lines.append(f"{e.sha256}  {_encode(e.path)}\n")
                if len(lines) >= 1024:
                    yield "".join(lines).encode()
                    lines = []
            yield "".join(lines).encode()

        tags.append(store("manifest-sha256.txt", payload()))
        tagmanifest = "".join(f"{t.sha256}  {t.path}\n" for t in tags)
        store("tagmanifest-sha256.txt", [tagmanifest.encode()])
        return "manifest-sha256.txt"


@hookimpl
def register_manifest_writers(register):  # type: ignore[no-untyped-def]
    register("bagit", BagitWriter)
