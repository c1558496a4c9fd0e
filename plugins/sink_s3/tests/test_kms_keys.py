"""The ``kms`` key provider against moto's KMS over TLS (started by the tests, like the S3 ones)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from portshift.errors import ConfigError
from portshift.key_providers import key_provider
from portshift.sealing import KeyUnavailableError
from portshift.testing import LocalCA
from portshift.testing.kms_server import KmsServer, moto_kms

from .conftest import Certs


@pytest.fixture(scope="module")
def kms_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    folder = tmp_path_factory.mktemp("kms")
    with moto_kms(LocalCA.create(folder / "ca"), folder / "moto.log") as server:
        yield server


@pytest.fixture(scope="module")
def kms_admin(kms_server: KmsServer) -> Any:
    return kms_server.client()


@pytest.fixture
def kms_key(kms_admin: Any) -> str:
    return kms_admin.create_key(Description="portshift test")["KeyMetadata"]["Arn"]  # type: ignore[no-any-return]


@pytest.fixture
def provider(kms_server: KmsServer, creds_env: None) -> Any:
    def make(arn: str) -> Any:
        return key_provider(f"kms:{arn}", endpoint_url=kms_server.url, ca_bundle=kms_server.ca_pem)

    return make


def test_generate_data_key_and_decrypt_bound_to_the_job(provider: Any, kms_key: str) -> None:
    kms = provider(kms_key)
    assert kms.label == f"kms:{kms_key}" and kms.region == "eu-west-1"
    key, wrapped = kms.new_data_key("job-a")
    assert len(key) == 32 and key not in wrapped
    assert kms.unwrap(wrapped, "job-a") == key
    with pytest.raises(KeyUnavailableError, match="does not belong to this key and job"):
        kms.unwrap(wrapped, "job-b")  # the encryption context names the job
    kms.check()


def test_a_disabled_key_is_one_line_naming_it_and_enabling_restores(provider: Any, kms_key: str, kms_admin: Any) -> None:
    kms = provider(kms_key)
    key, wrapped = kms.new_data_key("job-a")
    kms_admin.disable_key(KeyId=kms_key.rsplit("/", 1)[1])  # moto wants the id here
    with pytest.raises(KeyUnavailableError) as e:
        kms.unwrap(wrapped, "job-a")
    assert str(e.value).startswith(f"the customer's key kms:{kms_key} is not available for job job-a: the key is disabled")
    assert "\n" not in str(e.value)
    with pytest.raises(KeyUnavailableError, match="the key is disabled"):
        kms.new_data_key("job-b")
    kms_admin.enable_key(KeyId=kms_key.rsplit("/", 1)[1])
    assert kms.unwrap(wrapped, "job-a") == key


def test_a_key_pending_deletion_is_unavailable_and_cancelling_restores(provider: Any, kms_key: str, kms_admin: Any) -> None:
    kms = provider(kms_key)
    key, wrapped = kms.new_data_key("job-a")
    key_id = kms_key.rsplit("/", 1)[1]
    kms_admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(KeyUnavailableError, match="pending deletion"):
        kms.unwrap(wrapped, "job-a")
    kms_admin.cancel_key_deletion(KeyId=key_id)
    kms_admin.enable_key(KeyId=key_id)
    assert kms.unwrap(wrapped, "job-a") == key


def test_rotation_re_encrypts_under_the_new_key(provider: Any, kms_key: str, kms_admin: Any) -> None:
    old, new = provider(kms_key), provider(kms_admin.create_key()["KeyMetadata"]["Arn"])
    key, wrapped = old.new_data_key("job-a")
    rewrapped = old.rewrap(wrapped, "job-a", new)
    assert new.unwrap(rewrapped, "job-a") == key
    assert new.unwrap(new.wrap(key, "job-b"), "job-b") == key


def test_the_key_must_be_an_arn_and_the_endpoint_https(provider: Any) -> None:
    for bad in ("alias-without-arn", "arn:aws:s3:::bucket", "1234abcd-12ab-34cd-56ef-1234567890ab"):
        with pytest.raises(ConfigError, match="is not the ARN of a KMS key"):
            provider(bad)
    with pytest.raises(ConfigError, match="https://"):
        key_provider("kms:arn:aws:kms:eu-west-1:111122223333:key/abc", endpoint_url="http://127.0.0.1:1")


def test_an_unreachable_kms_is_one_line(certs: Certs, creds_env: None) -> None:
    from portshift.testing import free_port

    kms = key_provider(
        "kms:arn:aws:kms:eu-west-1:111122223333:key/abc", endpoint_url=f"https://127.0.0.1:{free_port()}", ca_bundle=certs.ca_pem
    )
    with pytest.raises(KeyUnavailableError, match="KMS could not be reached"):
        kms.new_data_key("job-a")
