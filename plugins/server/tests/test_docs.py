"""docs/serve.md says what the command does: every option of `portshift serve` is in its table,
the `[outbound]` example is a configuration the service accepts, and the sign-up commands shown
exist."""

from __future__ import annotations

import re
from pathlib import Path

from portshift_server.offers import load_catalogue
from portshift_server.serve_cmd import command

REPO = Path(__file__).resolve().parents[3]
DOC = (REPO / "docs" / "serve.md").read_text()


def test_every_serve_option_is_documented() -> None:
    options = {opt for p in command.params for opt in p.opts if opt.startswith("--") and opt != "--help"}
    documented = set(re.findall(r"`(--[a-z-]+)", DOC))
    assert options - documented == set(), f"undocumented: {sorted(options - documented)}"
    assert set(command.commands["signups"].commands) == {"export", "delete"}
    assert "portshift serve --data-dir DIR status" in DOC
    for sub in ("signups export --output", "signups delete"):
        assert f"portshift serve --data-dir DIR {sub}" in DOC


def test_the_outbound_example_is_accepted(tmp_path: Path) -> None:
    example = re.search(r"```toml\n(\[outbound\].*?)```", DOC, re.S)
    assert example is not None
    config = tmp_path / "service.toml"
    config.write_text(example.group(1))
    cat = load_catalogue(config, None)
    assert cat.outbound.azure_account_urls == ("https://azurite.internal:10000/devstoreaccount1",)
    cat.outbound.check_azure_account_url("https://azurite.internal:10000/devstoreaccount1")
