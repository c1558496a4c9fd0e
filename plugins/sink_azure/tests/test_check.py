"""check(): the container, the SAS and its write permission, proven with one uncommitted 1-byte
block (Azurite); each failure one line of the type ``portshift run`` stops on before listing."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from portshift_sink_azure import AzureSink

from portshift import AuthError, ConfigError, FatalError
from portshift.secrets import Secret

from .conftest import ACCOUNT, CONTAINER, Azurite


def test_a_missing_container_is_a_configuration_error(azurite: Azurite, make_sink: Callable[..., AzureSink]) -> None:
    sink = make_sink(container="no-such-container", sas=Secret(azurite.sas("no-such-container"), "sas"))
    with pytest.raises(ConfigError, match=r"^\[sink\] container: .*/no-such-container/tests does not exist") as e:
        sink.check()
    assert "\n" not in str(e.value) and e.value.exit_code == 2


def test_a_sas_signed_with_another_key_is_an_auth_error(make_sink: Callable[..., AzureSink]) -> None:
    forged = generate_container_sas(
        ACCOUNT,
        CONTAINER,
        account_key=base64.b64encode(b"not the account key, 64 bytes long ...........................").decode(),
        permission=ContainerSasPermissions(create=True, write=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
        protocol="https",
    )
    with pytest.raises(AuthError, match="AuthenticationFailed|AuthorizationFailure") as e:
        make_sink(sas=Secret(forged, "sas")).check()
    assert "\n" not in str(e.value) and "sig=" not in str(e.value)


def test_a_sas_for_another_container_is_an_auth_error(azurite: Azurite, make_sink: Callable[..., AzureSink]) -> None:
    with pytest.raises(AuthError) as e:
        make_sink(sas=Secret(azurite.sas("someone-elses"), "sas")).check()
    assert e.value.status == 403


def test_an_unreachable_endpoint_is_fatal(make_sink: Callable[..., AzureSink]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FatalError, match="connection to Azure failed"):
        make_sink(account_url=f"https://127.0.0.1:{port}/{ACCOUNT}").check()
