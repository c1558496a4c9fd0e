"""allowed_regions for Azure: refused, because nothing a SAS can call tells where the storage
account is. What Azurite shows: Get Account Information answers with the SKU and the account
kind only (no location, with the account key); the sink's container SAS (create + write) is
refused it; the blob service properties and statistics carry no location either."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerClient

from portshift import ExitCode

from .conftest import CONTAINER, Azurite


def test_no_call_tells_the_account_location(azurite: Azurite, admin: BlobServiceClient) -> None:
    info = admin.get_account_information()
    print("account information (account key):", dict(info))
    assert {"sku_name", "account_kind"} <= set(info) and not any("location" in k or "region" in k for k in info)
    props = admin.get_service_properties()
    print("service properties:", sorted(props))
    assert not any("location" in k or "region" in k for k in props)
    container = ContainerClient(
        azurite.url, CONTAINER, credential=azurite.sas(), connection_verify=str(azurite.ca), retry_total=0
    )
    try:
        answer: object = dict(container.get_account_information())
    except HttpResponseError as e:
        answer = f"refused: HTTP {e.status_code} {e.error_code}"
    finally:
        container.close()
    print("account information (the sink's cw container SAS):", answer)
    assert isinstance(answer, str) or not any("location" in k for k in answer)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_allow_list_for_azure_is_refused_with_one_line(tmp_path: Path, azurite: Azurite, command: str) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 1\n\n'
        f'[sink]\ntype = "azure"\naccount_url = "{azurite.url}"\ncontainer = "{CONTAINER}"\nca_bundle = "{azurite.ca}"\n'
        'region = "westeurope"\nallowed_regions = ["westeurope", "north*"]\n'
    )
    args = [sys.executable, "-m", "portshift", command, "--config", str(job)]
    if command == "run":
        args += ["--state", str(tmp_path / "s.db")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, env={"PORTSHIFT_AZURE_SAS": azurite.sas(), "PATH": ""})
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert len(lines) == 1 and "allowed_regions cannot be enforced for Azure Blob Storage" in lines[0], r.stderr
    assert not (tmp_path / "s.db").exists()
