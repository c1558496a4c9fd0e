"""Options and SAS checks at config time: before any connection is made."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    ContainerSasPermissions,
    ResourceTypes,
    generate_account_sas,
    generate_blob_sas,
    generate_container_sas,
)
from portshift_sink_azure import AzureOptions, AzureSink

from portshift.config import build_options
from portshift.errors import ConfigError
from portshift.plugins import load_plugins, sinks
from portshift.secrets import Secret

from .conftest import ACCOUNT, CONTAINER, KEY, Azurite, MiB, PlainListener

LOGGER = "portshift.sink.azure"


def opts(sas: str | None = None, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "azure",
        "account_url": "https://acct.blob.core.windows.net",
        "container": "exports",
    }
    if sas is not None:
        data["sas"] = Secret(sas, "sas")
    data.update(overrides)
    return data


def build(data: dict[str, Any]) -> AzureOptions:
    data = dict(data)
    data.pop("type", None)
    options = build_options(AzureOptions, data, "sink")
    assert isinstance(options, AzureOptions)
    return options


def service_sas(permission: str = "cw", *, https_only: bool = True, expiry: timedelta = timedelta(hours=2)) -> str:
    return generate_container_sas(
        ACCOUNT,
        CONTAINER,
        account_key=KEY,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=datetime.now(timezone.utc) + expiry,
        protocol="https" if https_only else None,
    )


def sig_of(token: str) -> str:
    return next(p for p in token.split("&") if p.startswith("sig=")).split("=", 1)[1]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_the_entry_point_registers_the_sink() -> None:
    load_plugins()
    assert sinks().get("azure") is AzureSink


def test_minimal_sas_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    o = build(opts(service_sas("cw")))
    assert o.block_size == 8 * MiB and o.prefix == "" and o.access_tier is None
    assert warnings_of(caplog) == []


def test_over_permissive_sas_warns_naming_the_extras(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = service_sas("racwdl")
    build(opts(token))
    (msg,) = [m for m in warnings_of(caplog) if "more than the sink needs" in m]
    for name in ("read (r)", "add (a)", "delete (d)", "list (l)"):
        assert name in msg
    assert "create (c)" not in msg and "write (w)" not in msg
    assert sig_of(token) not in caplog.text and token not in caplog.text


def test_sas_allowing_plain_http_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = service_sas("cw", https_only=False)
    assert "spr=" not in token
    build(opts(token))
    assert any("plain HTTP" in m and "spr=https" in m for m in warnings_of(caplog))
    caplog.clear()
    build(opts(token.replace("sv=", "spr=https,http&sv=")))
    assert any("plain HTTP" in m for m in warnings_of(caplog))


def test_create_only_sas_warns_about_block_lists(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    build(opts(service_sas("c")))
    assert any("not write (w)" in m for m in warnings_of(caplog))


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("sv=2025-11-05&sr=c&sp=r&se=2999-01-01T00:00:00Z&spr=https&sig=abcdefgh", "neither create"),
        ("sv=2025-11-05&sr=b&sp=cw&se=2999-01-01T00:00:00Z&spr=https&sig=abcdefgh", "single blob"),
        ("sv=2025-11-05&sr=c&sp=cw&se=2999-01-01T00:00:00Z&spr=https", "not a SAS token"),
        ("sv=2025-11-05&ss=q&srt=o&sp=cw&se=2999-01-01&spr=https&sig=abcdefgh", "blob service"),
        ("sv=2025-11-05&ss=b&srt=c&sp=cw&se=2999-01-01&spr=https&sig=abcdefgh", "objects"),
        ("https://acct.blob.core.windows.net/exports?sv=1&sig=CANARYsigURL", "holds a URL"),
    ],
)
def test_unusable_sas_is_a_config_error(token: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        build(opts(token))
    assert "abcdefgh" not in str(e.value) and "CANARY" not in str(e.value)


def test_expired_sas_is_a_config_error_before_any_connection(plain_listener: PlainListener) -> None:
    token = service_sas("cw", expiry=timedelta(minutes=-5))
    with pytest.raises(ConfigError, match="expired") as e:
        build(opts(token, account_url=f"https://127.0.0.1:{plain_listener.port}/{ACCOUNT}"))
    assert sig_of(token) not in str(e.value) and sig_of(token) not in repr(e.value)
    assert plain_listener.connections == 0


def test_expiry_formats_and_soon(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    soon = (datetime.now(timezone.utc) + timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%S.1234567Z")
    build(opts(f"sv=2025-11-05&sr=c&sp=cw&se={soon.replace(':', '%3A')}&spr=https&sig=abcdefgh"))
    assert any("expires soon" in m for m in warnings_of(caplog))
    with pytest.raises(ConfigError, match="expired"):
        build(opts("sv=2025-11-05&sr=c&sp=cw&se=2020-01-01&spr=https&sig=abcdefgh"))
    build(opts("?sv=2025-11-05&sr=c&sp=cw&se=2999-01-01T00:00Z&spr=https&sig=abcdefgh"))


def test_account_sas_warns_about_extra_services_and_types(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = generate_account_sas(
        ACCOUNT,
        KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(create=True, write=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1, minutes=5),
    )
    build(opts(token.replace("ss=b", "ss=bq")))
    text = " | ".join(warnings_of(caplog))
    assert "queue" in text and "container, service" in text and "list (l)" in text


def test_stored_access_policy_is_reported_as_unchecked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    build(opts("sv=2025-11-05&sr=c&si=exportpolicy&spr=https&sig=abcdefgh"))
    assert any("stored access policy" in m for m in warnings_of(caplog))


def test_blob_sas_generated_by_the_sdk_is_refused() -> None:
    token = generate_blob_sas(
        ACCOUNT, CONTAINER, "one.bin", account_key=KEY, permission="cw", expiry=datetime.now(timezone.utc) + timedelta(hours=1)
    )
    with pytest.raises(ConfigError, match="single blob"):
        build(opts(token))


def test_http_account_url_is_refused_and_nothing_connects(plain_listener: PlainListener) -> None:
    with pytest.raises(ConfigError, match="https") as e:
        build(opts(service_sas(), account_url=f"http://127.0.0.1:{plain_listener.port}/{ACCOUNT}"))
    assert "sig" not in str(e.value)
    assert plain_listener.connections == 0


def test_account_url_with_a_sas_is_refused_without_echo() -> None:
    with pytest.raises(ConfigError, match="query string") as e:
        build(opts(service_sas(), account_url="https://acct.blob.core.windows.net/?sv=1&sig=CANARYsigInUrl"))
    assert "CANARY" not in str(e.value)


def test_a_sas_in_the_job_file_is_refused() -> None:
    data = opts()
    data["sas"] = "sv=1&sig=CANARYsigInJobFile"
    with pytest.raises(ConfigError, match="never read from the job file") as e:
        build(data)
    assert "CANARY" not in str(e.value)


def test_sas_from_env_and_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = service_sas()
    monkeypatch.setenv("PORTSHIFT_AZURE_SAS", token)
    o = build(opts())
    assert o.sas is not None and o.sas.reveal() == token
    monkeypatch.delenv("PORTSHIFT_AZURE_SAS")
    f = tmp_path / "sas.txt"
    f.write_text("?" + token + "\n")
    o = build(opts(sas_file=str(f)))
    assert o.sas is not None and o.sas.reveal() == "?" + token
    with pytest.raises(ConfigError, match="credential is missing"):
        build(opts())


@pytest.mark.parametrize(
    ("value", "expected"),
    [(MiB, MiB), ("2MiB", 2 * MiB), ("4 MiB", 4 * MiB), ("16777216", 16 * MiB), ("100 MB", 100_000_000), ("16M", 16 * MiB)],
)
def test_block_size_values(value: Any, expected: int) -> None:
    assert build(opts(service_sas(), block_size=value)).block_size == expected


@pytest.mark.parametrize("value", [512 * 1024, "4001MiB", "8 parsecs", True, "-1"])
def test_block_size_out_of_range(value: Any) -> None:
    with pytest.raises(ConfigError, match="block_size"):
        build(opts(service_sas(), block_size=value))


@pytest.mark.parametrize("name", ["ab", "Exports", "has_underscore", "double--hyphen", "-lead", "x" * 64])
def test_bad_container_names(name: str) -> None:
    with pytest.raises(ConfigError, match="container"):
        build(opts(service_sas(), container=name))


def test_prefix_normalized_and_checked() -> None:
    assert build(opts(service_sas(), prefix="/a/b/")).prefix == "a/b"
    for bad in ("a//b", "a/../b", "a\\b"):
        with pytest.raises(ConfigError, match="prefix"):
            build(opts(service_sas(), prefix=bad))


def test_allowed_regions_is_refused_because_a_sas_cannot_see_the_account_location() -> None:
    """portshift never claims a residency it cannot confirm: with a SAS, Azure tells nothing about
    where the account is, so an allow-list is refused (one line) rather than passing silently."""
    for given in ({"allowed_regions": ["westeurope"]}, {"allowed_regions": ["west*"], "region": "westeurope"}):
        with pytest.raises(ConfigError, match="allowed_regions cannot be enforced for Azure") as e:
            build(opts(service_sas(), **given))
        assert "Allowed locations" in str(e.value) and "\n" not in str(e.value)
    o = build(opts(service_sas(), region="West Europe"))  # a declared region alone is recorded, nothing more
    assert o.region == "westeurope" and o.allowed_regions is None


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key 'bucket'"):
        build(opts(service_sas(), bucket="b"))


def test_options_never_show_the_sas(azurite: Azurite) -> None:
    token = azurite.sas()
    o = build(opts(token))
    for text in (repr(o), str(o), o.model_dump_json(), str(o.model_dump(mode="json"))):
        assert sig_of(token) not in text and "sig=" not in text


def test_sas_bound_to_an_encryption_scope_must_match_the_option() -> None:
    token = "sv=2025-11-05&sr=c&sp=cw&se=2999-01-01&spr=https&ses=custkeys01&sig=abcdefgh"
    with pytest.raises(ConfigError, match="encryption scope 'custkeys01'"):
        build(opts(token))
    with pytest.raises(ConfigError, match="ses"):
        build(opts(token, encryption_scope="otherscope"))
    assert build(opts(token, encryption_scope="custkeys01")).encryption_scope == "custkeys01"
