"""Options are checked before anything is built or sent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from portshift_sink_s3 import S3Options, S3Sink

from portshift.errors import ConfigError

MiB = 1024 * 1024


def test_the_plugin_registers_the_s3_sink() -> None:
    from portshift.plugins import sinks

    assert sinks().get("s3") is S3Sink


@pytest.mark.parametrize(
    ("given", "expected"),
    [("8MiB", 8 * MiB), ("5 MiB", 5 * MiB), ("16M", 16 * MiB), ("10MB", 10_000_000), (6 * MiB, 6 * MiB), ("1GiB", 1024 * MiB)],
)
def test_part_size_accepts_sizes(make_options: Callable[..., Any], given: Any, expected: int) -> None:
    assert make_options(part_size=given).part_size == expected


def test_part_size_default_is_8_mib(make_options: Callable[..., Any]) -> None:
    opts = make_options()
    assert S3Options.model_fields["part_size"].default == 8 * MiB and opts.part_size == 5 * MiB


@pytest.mark.parametrize("given", [5 * MiB - 1, "4MiB", "6GiB", "eight", "8 parsecs", True])
def test_part_size_outside_s3_limits_is_refused(make_options: Callable[..., Any], given: Any) -> None:
    with pytest.raises(ConfigError, match="part_size"):
        make_options(part_size=given)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"bucket": "Bad_Bucket"}, "bucket"),
        ({"bucket": "a..b"}, "bucket"),
        ({"region": "EU Central"}, "region"),
        ({"prefix": "a/../b"}, "prefix"),
        ({"storage_class": "standard ia"}, "storage_class"),
        ({"kms_key_id": "alias/x"}, "kms_key_id"),
        ({"sse": "AES256", "kms_key_id": "alias/x"}, "kms_key_id"),
        ({"expected_bucket_owner": "12345"}, "expected_bucket_owner"),
        ({"allowed_regions": []}, "allowed_regions"),
        ({"endpoint_url": "ftp://127.0.0.1/"}, "https://"),
        ({"endpoint_url": "https://user:pw@127.0.0.1/"}, "user name"),
    ],
)
def test_bad_options_are_config_errors(make_options: Callable[..., Any], overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        make_options(**overrides)


def test_prefix_slashes_are_trimmed(make_options: Callable[..., Any]) -> None:
    assert make_options(prefix="/a/b/").prefix == "a/b"


def test_allowed_regions_refuse_before_anything_is_sent(make_options: Callable[..., Any], tls_proxy: Any) -> None:
    with pytest.raises(ConfigError) as e:
        make_options(endpoint_url=tls_proxy.url, region="us-east-1", allowed_regions=["eu-*", "eu-central-?"])
    assert "not in allowed_regions" in str(e.value) and "nothing was sent" in str(e.value)
    assert tls_proxy.connections == 0


def test_allowed_regions_match_globs(make_options: Callable[..., Any]) -> None:
    assert make_options(region="eu-central-1", allowed_regions=["us-*", "eu-central-*"]).region == "eu-central-1"


def test_the_sink_itself_rechecks_allowed_regions(make_options: Callable[..., Any], tls_proxy: Any) -> None:
    opts = make_options(endpoint_url=tls_proxy.url, allowed_regions=["us-*"])
    opts.allowed_regions = ["eu-*"]  # changed after validation (no validate_assignment)
    with pytest.raises(ConfigError):
        S3Sink(opts)
    assert tls_proxy.connections == 0


def test_credentials_from_the_job_file_are_refused(make_options: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="never read from the job file"):
        make_options(secret_access_key="CANARY-in-the-job-file")


def test_no_credentials_at_all_is_a_config_error(make_options: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PORTSHIFT_AWS_ACCESS_KEY_ID", "PORTSHIFT_AWS_SECRET_ACCESS_KEY", "PORTSHIFT_AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASTANDARDNAME")  # only used with credential_chain = true
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "standard-name-secret")
    with pytest.raises(ConfigError, match="no S3 credentials") as e:
        make_options()
    assert "credential_chain" in str(e.value)
    assert make_options(credential_chain=True).credential_chain is True


def test_half_a_key_pair_is_a_config_error(make_options: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTSHIFT_AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="secret_access_key"):
        make_options()


def test_static_keys_and_the_chain_together_are_ambiguous(make_options: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="one or the other"):
        make_options(credential_chain=True)


def test_credentials_from_secret_files(
    make_options: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, read_obj: Callable[[str], bytes | None]
) -> None:
    from portshift.hashing import HashingStream

    for name in ("PORTSHIFT_AWS_ACCESS_KEY_ID", "PORTSHIFT_AWS_SECRET_ACCESS_KEY", "PORTSHIFT_AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    (tmp_path / "ak").write_text("AKIAFROMSECRETFILE01\n")
    (tmp_path / "sk").write_text("CANARYfromsecretfile\n")
    opts = make_options(access_key_id_file=str(tmp_path / "ak"), secret_access_key_file=str(tmp_path / "sk"))
    assert opts.access_key_id.reveal() == "AKIAFROMSECRETFILE01" and opts.session_token is None
    sink = S3Sink(opts)
    sink.put("from-files.bin", HashingStream(iter([b"ok"])), 2)
    assert read_obj("from-files.bin") == b"ok"


def test_credential_chain_with_nothing_to_find_is_an_auth_error(
    make_options: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from portshift.errors import AuthError

    for name in (
        "PORTSHIFT_AWS_ACCESS_KEY_ID",
        "PORTSHIFT_AWS_SECRET_ACCESS_KEY",
        "PORTSHIFT_AWS_SESSION_TOKEN",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AuthError, match="found no credentials"):
        S3Sink(make_options(credential_chain=True))


def test_the_schema_documents_every_option() -> None:
    schema = S3Options.model_json_schema()
    for name, prop in schema["properties"].items():
        assert prop.get("description") or name.endswith("_file"), f"{name} has no description"
    assert (
        schema["properties"]["secret_access_key"].get("writeOnly") is True or "anyOf" in schema["properties"]["secret_access_key"]
    )
