"""The manifest format (``portshift-manifest.txt``): render the header, parse it back.

GNU ``sha256sum`` format: ``<64 hex>  <path>`` per file, paths relative to the manifest, plus
``#`` header lines that GNU ``sha256sum -c`` skips. See docs/manifest.md, which is a promise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .api import JobInfo

FORMAT_VERSION = 1
MANIFEST_NAME = "portshift-manifest.txt"
INDEX_NAME = "portshift-manifest.json"
SIGNATURE_SUFFIX = ".sig"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def header_lines(job: JobInfo) -> list[str]:
    return [
        f"# portshift manifest format {FORMAT_VERSION}",
        "# check with: sha256sum -c portshift-manifest.txt",
        f"# job: {job.id}",
        f"# window: {job.window_start} .. {job.window_end}",
        f"# started: {job.started_at}",
        f"# finished: {job.finished_at}",
        f"# files: {job.file_count}",
        f"# bytes: {job.total_bytes}",
        f"# source: {job.source}",
        f"# tool: portshift {job.tool_version}",
    ]


@dataclass
class ParsedManifest:
    header: dict[str, str] = field(default_factory=dict)
    entries: list[tuple[str, str]] = field(default_factory=list)  #: (sha256, path)
    bad_lines: list[int] = field(default_factory=list)


def parse(text: str) -> ParsedManifest:
    out = ParsedManifest()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if ": " in body:
                k, v = body.split(": ", 1)
                out.header.setdefault(k.strip(), v.strip())
            continue
        m = _LINE.match(line)
        if not m or m.group(2).startswith("/") or ".." in m.group(2).split("/") or "\\" in m.group(2):
            out.bad_lines.append(n)
            continue
        out.entries.append((m.group(1), m.group(2)))
    return out


def read(path: Path) -> ParsedManifest:
    return parse(path.read_text(encoding="utf-8"))
