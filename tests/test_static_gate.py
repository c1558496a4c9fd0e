"""The static gate: product code never weakens TLS or leaks secrets.

Scans every Python file of the core and of every plugin, outside tests, for constructs that turn
off certificate checks, allow plain HTTP, render locals or import the test CA.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from pieces so that this file does not match itself.
_H = "http" + "://"
FORBIDDEN = {
    "verify=False": re.compile(r"verify\s*=\s*False"),
    "CERT_NONE": re.compile(r"CERT_" + "NONE"),
    "check_hostname = False": re.compile(r"check_hostname\s*=\s*False"),
    "use_ssl=False": re.compile(r"use_ssl\s*=\s*False"),
    "show_locals=True": re.compile(r"show_locals\s*=\s*True"),
    "capture_locals=True": re.compile(r"capture_locals\s*=\s*True"),
    "logging_enable=True": re.compile(r"logging_enable\s*=\s*True"),
    "a plain-http URL literal": re.compile(r"""["']""" + re.escape(_H)),
    "import trustme": re.compile(r"^\s*(import|from)\s+trustme\b", re.M),
    "_create_unverified_context": re.compile(r"_create_unverified_context"),
}

#: Product code that is test/demo tooling and may create a throw-away CA (it is never trusted
#: implicitly: clients get it through the explicit ca_bundle option): the Chorus simulator, and
#: the test kit portshift.testing (its LocalCA; trustme is a test dependency, imported on use).
ALLOWED = {("import trustme", "simulator"), ("import trustme", "testing")}


def product_files() -> list[Path]:
    files = sorted((ROOT / "portshift").rglob("*.py"))
    for plugin in sorted((ROOT / "plugins").glob("*/")):
        for f in plugin.rglob("*.py"):
            rel = f.relative_to(plugin).parts
            if "tests" in rel or rel[0] in {"build", "scripts"}:
                continue
            files.append(f)
    return files


def test_there_is_product_code_to_scan() -> None:
    assert len(product_files()) > 10


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_product_code_has_no(name: str) -> None:
    pattern = FORBIDDEN[name]
    hits = []
    for f in product_files():
        text = f.read_text(encoding="utf-8")
        for m in pattern.finditer(text):
            if any(name == n and part in f.parts for n, part in ALLOWED):
                continue
            line = text.count("\n", 0, m.start()) + 1
            hits.append(f"{f.relative_to(ROOT)}:{line}")
    assert not hits, f"{name} in product code: {', '.join(hits)}"
