"""docs/chorus.md and the plugin README keep up with the code: every option in the options
tables with its default, every `portshift chorus simulate` flag in the simulator table, every
reason code the source can give in the outcomes table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from portshift_source_chorus import ChorusOptions
from portshift_source_chorus.cli import simulate

HERE = Path(__file__).resolve().parent
DOC = (HERE.parents[2] / "docs" / "chorus.md").read_text()
README = (HERE.parent / "README.md").read_text()


def table_rows(text: str) -> dict[str, str]:
    """First cell -> the rest of the row, for every Markdown table row."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = " | ".join(cells[1:])
    return rows


@pytest.mark.parametrize("text", [DOC, README], ids=["docs/chorus.md", "README.md"])
def test_every_option_is_documented_with_its_default(text: str) -> None:
    rows = table_rows(text)
    documented = {name.strip("`") for cell in rows for name in re.findall(r"`(\w+)`", cell)}
    for name, field in ChorusOptions.model_fields.items():
        if name in ("token",):
            continue
        assert name in documented, f"option {name} is not in the options table"
        default = field.default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            key, row = next((k, v) for k, v in rows.items() if f"`{name}`" in k)
            names = re.findall(r"`(\w+)`", key)  # "`a`, `b` | `1`, `2`": a row for several options
            shown = re.findall(r"`([0-9.]+)`", row)
            assert len(shown) > names.index(name), (name, row)
            assert float(shown[names.index(name)]) == float(default), (name, default, row)
        elif isinstance(default, str) and default:  # e.g. requests_per_second = "auto"
            row = next(v for k, v in rows.items() if f"`{name}`" in k)
            assert f'`"{default}"`' in row or f"`{default}`" in row, (name, default, row)


def test_every_simulator_flag_is_documented() -> None:
    flags = {opt for p in simulate.params for opt in getattr(p, "opts", []) if opt.startswith("--")}
    rows = table_rows(DOC[DOC.index("## The simulator") :])
    documented = {flag for cell in rows for flag in re.findall(r"--[a-z0-9-]+", cell)}
    assert flags - {"--help"} <= documented | {"--ca-out", "--job-out", "--export-to", "--info-out", "--token-out"}


def test_every_reason_code_is_in_the_outcomes_table() -> None:
    source = (HERE.parent / "portshift_source_chorus").rglob("*.py")
    codes: set[str] = set()
    for path in source:
        text = path.read_text()
        codes |= set(re.findall(r'(?:SkipRecording|RecordingPending|ArtifactMissing)\(\s*"([a-z_]+)"', text))
        codes |= set(re.findall(r'missing\(\s*"?\w+"?,\s*"([a-z_]+)"', text))
    codes |= {"not_found", "forbidden", "media_not_found", "media_forbidden", "email_not_found", "no_summary", "no_action_items"}
    for code in codes:
        assert f"`{code}`" in DOC, f"reason {code} is not documented"
