"""The manifest format (``portshift-manifest.txt``): render the header, parse it back.

GNU ``sha256sum`` format: ``<64 hex>  <path>`` per file, paths relative to the manifest, plus
``#`` header lines that GNU ``sha256sum -c`` skips. See docs/manifest.md, which is a promise.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .api import JobInfo

FORMAT_VERSION = 2  #: 2: the inventory lines (listed, exported, skipped... and the listed ids digest)
MANIFEST_NAME = "portshift-manifest.txt"
INDEX_NAME = "portshift-manifest.json"
SIGNATURE_SUFFIX = ".sig"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def listed_ids_sha256(ids: Iterable[str]) -> tuple[int, str]:
    """How many ids, and the SHA-256 of each listed recording id followed by a newline, in code-point
    order (``sort -u ids | LC_ALL=C sort | sha256sum`` gives it from a later listing)."""
    h = hashlib.sha256()
    n = 0
    for rid in ids:
        h.update(rid.encode("utf-8", "surrogateescape") + b"\n")
        n += 1
    return n, h.hexdigest()


def build_inventory(counts: dict[str, dict[str, int]], ids: Iterable[str]) -> dict[str, object]:
    """The source's inventory of a job's window, from the state's outcome counts and listed ids."""
    listed, digest = listed_ids_sha256(ids)

    def total(status: str) -> int:
        return sum(counts.get(status, {}).values())

    return {
        "listed": listed,
        "exported": total("done"),
        "exported_earlier": total("exported_earlier"),
        "skipped": dict(sorted(counts.get("skipped", {}).items())),
        "pending": dict(sorted(counts.get("pending", {}).items())),
        "failed": total("failed"),
        "missing_files": dict(sorted(counts.get("missing", {}).items())),
        "listed_ids_sha256": digest,
    }


def _by_reason(per_reason: object) -> str:
    reasons = per_reason if isinstance(per_reason, dict) else {}
    n = sum(reasons.values())
    detail = ", ".join(f"{reason or 'unknown'} {count}" for reason, count in reasons.items())
    return f"{n} ({detail})" if detail else str(n)


def inventory_lines(inventory: dict[str, object]) -> list[str]:
    return [
        f"# listed: {inventory.get('listed', 0)}",
        f"# exported: {inventory.get('exported', 0)}",
        f"# exported earlier: {inventory.get('exported_earlier', 0)}",
        f"# skipped: {_by_reason(inventory.get('skipped'))}",
        f"# pending: {_by_reason(inventory.get('pending'))}",
        f"# missing files: {_by_reason(inventory.get('missing_files'))}",
        f"# listed ids sha256: {inventory.get('listed_ids_sha256', '')}",
    ]


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
        *inventory_lines(job.inventory),
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
