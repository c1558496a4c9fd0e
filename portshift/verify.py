"""`portshift verify`: re-hash a copy of an export against its manifest, like ``rclone check``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .api import Reader
from .errors import ConfigError
from .manifest import INDEX_NAME, MANIFEST_NAME, SIGNATURE_SUFFIX, parse

BUF = 1024 * 1024


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)
    header: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not (self.differ or self.missing or self.extra or self.bad_lines)


def _walk(root: Path) -> Iterator[str]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath, name).relative_to(root).as_posix()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(BUF)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def verify_dir(root: Path, manifest_name: str = MANIFEST_NAME) -> Report:
    root = Path(root)
    manifest = root / manifest_name
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder", hint="give the export root, the folder holding portshift-manifest.txt")
    if not manifest.is_file():
        raise ConfigError(f"no {manifest_name} in {root}", hint="give the export root (a folder named after the job id)")
    try:
        parsed = parse(manifest.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{manifest} is not a text manifest") from None
    report = Report(bad_lines=parsed.bad_lines, header=parsed.header)
    listed = set()
    for digest, rel in parsed.entries:
        listed.add(rel)
        path = root / rel
        if not path.is_file():
            report.missing.append(rel)
        elif _sha256(path) != digest:
            report.differ.append(rel)
        else:
            report.ok.append(rel)
    ignore = {manifest_name, manifest_name + SIGNATURE_SUFFIX, INDEX_NAME}
    for rel in _walk(root):
        if rel not in listed and rel not in ignore:
            report.extra.append(rel)
    if INDEX_NAME not in listed and (root / INDEX_NAME).exists():
        report.extra.append(INDEX_NAME)
    return report


def verify_store(reader: Reader, root: str, manifest_name: str = MANIFEST_NAME) -> Report:
    """Check an export root in its store: stream every listed object back, re-hash it in memory
    (nothing touches the disk), and list objects the manifest does not know."""
    root = root.strip("/")
    try:
        text = b"".join(reader.open(f"{root}/{manifest_name}")).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"no {manifest_name} under {root}/ in {reader.location()}", hint="give the export root (the job id)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{root}/{manifest_name} is not a text manifest") from None
    parsed = parse(text)
    report = Report(bad_lines=parsed.bad_lines, header=parsed.header)
    listed = set()
    for digest, rel in parsed.entries:
        listed.add(rel)
        h = hashlib.sha256()
        try:
            for block in reader.open(f"{root}/{rel}"):
                h.update(block)
        except FileNotFoundError:
            report.missing.append(rel)
            continue
        (report.ok if h.hexdigest() == digest else report.differ).append(rel)
    ignore = {manifest_name, manifest_name + SIGNATURE_SUFFIX}
    for key in reader.list(root + "/"):
        rel = key[len(root) + 1 :]
        if rel not in listed and rel not in ignore:
            report.extra.append(rel)
    return report
