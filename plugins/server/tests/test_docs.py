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


def test_the_state_key_examples_are_accepted(tmp_path: Path) -> None:
    """docs/serve.md's `state_key` request and `[state_key]` configuration, and docs/byok.md's
    stdin credentials, as the service and the core take them."""
    import json

    import pytest

    pytest.importorskip("portshift_sink_s3", reason="the kms key provider comes with the S3 plugin")
    from portshift_server.job_request import build_job

    from portshift.state.choose import state_options

    config = re.search(r"```toml\n\s*(\[state_key\].*?)```", DOC, re.S)
    assert config is not None
    ca = tmp_path / "kms-ca.pem"
    ca.write_text("a CA")
    text = re.sub(r"(?m)^\s+", "", config.group(1)).replace("/etc/portshift/kms-ca.pem", str(ca))
    (tmp_path / "service.toml").write_text(text)
    cat = load_catalogue(tmp_path / "service.toml", None)
    assert cat.state_key.endpoint_url == "https://kms.internal.example:4443" and cat.state_key.ca_bundle == ca

    request = re.search(r"```json\n(\{\"source\".*?)```", DOC, re.S)
    assert request is not None
    doc = json.loads(request.group(1).replace('"..."', '"zqx-example"'))
    built = build_job(cat, doc, "folder")
    assert built.state_key == doc["state_key"]["key"] and f'key = "{built.state_key}"' in built.job_toml
    sent = json.loads(bytes(built.secrets))
    assert sent["state"] == {"key_access_key_id": "zqx-example", "key_secret_access_key": "zqx-example"}
    assert (
        'key_endpoint_url = "https://kms.internal.example:4443"' in built.job_toml
        and "zqx-example" not in built.job_toml.split("[state]")[1]
    )

    byok = (REPO / "docs" / "byok.md").read_text()
    stdin = re.search(r'`--secrets-from-stdin` with\s+`(\{"state": .*?\})`', byok, re.S)
    assert stdin is not None
    options = state_options({"key": doc["state_key"]["key"]}, json.loads(stdin.group(1).replace("\n", " ")))
    assert options.key_provider().credentials["secret_access_key"].reveal() == "..."
