"""docs/byok.md says what the code does: the key policy, the encryption context, the sealed
columns, the key file recipe."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from portshift.key_providers import LocalKeyFile
from portshift.state.sealed import JOB_SEALED

DOC = (Path(__file__).resolve().parents[1] / "docs" / "byok.md").read_text()


def test_the_key_policy_grants_exactly_the_two_actions_with_the_context_portshift_sends() -> None:
    kms = pytest.importorskip("portshift_sink_s3.kms")
    [policy] = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOC, re.S)]
    [portshift] = [s for s in policy["Statement"] if s["Sid"] == "PortshiftSealsJobMetadata"]
    assert portshift["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"]
    assert portshift["Condition"] == {"Null": {f"kms:EncryptionContext:{kms.CONTEXT_KEY}": "false"}}
    assert f'{{"{kms.CONTEXT_KEY}": "<job id>"}}' in DOC


def test_the_table_names_every_sealed_job_column() -> None:
    row = next(line for line in DOC.splitlines() if line.startswith("| `jobs` |"))
    sealed = row.split("|")[2]
    assert sorted(re.findall(r"`(\w+)`", sealed)) == sorted(JOB_SEALED)


def test_the_key_file_recipe_makes_a_key_portshift_accepts(tmp_path: Path) -> None:
    assert "openssl rand -base64 32 > /etc/portshift/state.key && chmod 600 /etc/portshift/state.key" in DOC
    path = tmp_path / "state.key"
    with path.open("wb") as out:
        subprocess.run(["openssl", "rand", "-base64", "32"], stdout=out, check=True)
    path.chmod(0o600)
    provider = LocalKeyFile(str(path))
    key, wrapped = provider.new_data_key("job")
    assert provider.unwrap(wrapped, "job") == key
