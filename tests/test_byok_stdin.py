"""The key provider's credentials on ``--secrets-from-stdin`` (``{"state": {"key_access_key_id": ...}}``),
as the service's workers get them (plugins/server, docs/byok.md): taken, checked in one line
that never shows a value, and given to the provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from portshift.errors import ConfigError
from portshift.state.choose import state_options

SECRET = "zqx-secret-value-that-must-not-show"


def test_the_key_credentials_reach_the_provider(tmp_path: Path) -> None:
    key = tmp_path / "state.key"
    key.write_text("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    secrets = {"state": {"password": "pw", "key_access_key_id": "AKIAEXAMPLE", "key_secret_access_key": SECRET}}
    options = state_options({"key": f"file:{key}"}, secrets)
    provider = options.key_provider()
    assert provider.credentials["secret_access_key"].reveal() == SECRET
    assert options.password is not None and options.password.reveal() == "pw"
    assert SECRET not in repr(options) and SECRET not in options.model_dump_json()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"key_access_key_id": "AKIAEXAMPLE"}, "key_access_key_id and key_secret_access_key go together"),
        ({"key_secret_access_key": SECRET}, "key_access_key_id and key_secret_access_key go together"),
        ({"key_token": SECRET}, "secrets for [state]: expected"),
        ({"key_secret_access_key": "  "}, "secret state.key_secret_access_key must be a non-empty string"),
        ({"key_access_key_id": 7, "key_secret_access_key": SECRET}, "secret state.key_access_key_id must be a non-empty string"),
    ],
)
def test_wrong_key_credentials_are_one_line_without_the_value(given: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        state_options(None, {"state": given})
    assert expected in str(e.value) and SECRET not in str(e.value) and "\n" not in str(e.value)
