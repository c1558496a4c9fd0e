"""What a request may set: the allow-list, operator-fixed options, the job file and credentials."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from portshift_server.job_request import build_credentials, build_job, to_toml
from portshift_server.offers import RequestError, load_catalogue

from portshift.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def catalogue(tmp_path: Path, text: str = "", local: bool = True):  # type: ignore[no-untyped-def]
    cfg = None
    if text:
        cfg = tmp_path / "service.toml"
        cfg.write_text(text)
    return load_catalogue(cfg, tmp_path / "exports" if local else None)


S3 = {
    "type": "s3",
    "bucket": "my-bucket",
    "prefix": "calls",
    "region": "eu-central-1",
    "access_key_id": "AKIACANARY",
    "secret_access_key": "canary-secret/+=",
}


def test_an_s3_job_file_has_no_credential_and_the_credentials_document_has_them(tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    built = build_job(cat, {"source": {"type": "chorus", "token": "canary-token"}, "sink": S3, "since": "2024-01-01"}, "jid")
    doc = tomllib.loads(built.job_toml)
    assert doc["sink"] == {
        "type": "s3",
        "bucket": "my-bucket",
        "prefix": "calls",
        "region": "eu-central-1",
        "credential_chain": False,
    }
    assert doc["source"] == {"type": "chorus"}
    assert str(doc["job"]["since"]) == "2024-01-01"
    assert "canary" not in built.job_toml and "AKIACANARY" not in built.job_toml
    creds = json.loads(bytes(built.secrets))
    assert creds == {
        "source": {"token": "canary-token"},
        "sink": {"access_key_id": "AKIACANARY", "secret_access_key": "canary-secret/+="},
    }


def test_each_sink_takes_its_own_credentials(tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    src = {"type": "chorus", "token": "t"}
    azure = build_job(
        cat,
        {
            "source": src,
            "sink": {
                "type": "azure",
                "account_url": "https://acct.blob.core.windows.net",
                "container": "calls",
                "sas": "sv=1&sig=canary",
            },
        },
        "j",
    )
    assert json.loads(bytes(azure.secrets))["sink"] == {"sas": "sv=1&sig=canary"}
    gcs = build_job(
        cat,
        {
            "source": src,
            "sink": {
                "type": "gcs",
                "bucket": "b-1",
                "key": '{"private_key": "x", "token_uri": "https://oauth2.googleapis.com/token"}',
            },
        },
        "j",
    )
    assert tomllib.loads(gcs.job_toml)["sink"]["application_default_credentials"] is False
    with pytest.raises(RequestError, match=r"sink\.sas: the credential is missing"):
        build_job(cat, {"source": src, "sink": {"type": "azure", "account_url": "https://a", "container": "calls"}}, "j")


@pytest.mark.parametrize("field", ["ca_bundle", "endpoint_url", "credential_chain", "token_file", "path"])
def test_options_that_reach_server_files_or_identities_cannot_be_requested(tmp_path: Path, field: str) -> None:
    cat = catalogue(tmp_path)
    body = {"source": {"type": "chorus", "token": "t"}, "sink": {**S3, field: "/etc/passwd"}}
    with pytest.raises(RequestError, match=f"unknown field {field}") as err:
        build_job(cat, body, "j")
    assert "/etc/passwd" not in str(err.value)


@pytest.mark.parametrize("field", ["ca_bundle", "token_file", "endpoint_url", "credential_chain"])
def test_the_operator_cannot_offer_them_either(tmp_path: Path, field: str) -> None:
    with pytest.raises(ConfigError, match="must not be settable"):
        catalogue(tmp_path, f'[source.chorus]\nfields = {{ {field} = "string" }}\n')


def test_operator_fixed_options_and_a_third_party_source(tmp_path: Path) -> None:
    cat = catalogue(
        tmp_path,
        """
sources = ["chorus", "acme"]
sinks = ["s3"]
[source.chorus.fixed]
ca_bundle = "/etc/portshift/ca.pem"
[source.acme]
label = "Acme"
fields = { region = "string", page_size = "integer" }
required = ["region"]
secrets = { api_key = true }
""",
    )
    assert list(cat.sinks) == ["s3"] and list(cat.sources) == ["chorus", "acme"]
    built = build_job(cat, {"source": {"type": "chorus", "token": "t"}, "sink": S3}, "j")
    assert tomllib.loads(built.job_toml)["source"] == {"type": "chorus", "ca_bundle": "/etc/portshift/ca.pem"}
    assert "/etc/portshift" not in json.dumps(cat.describe())
    acme = build_job(cat, {"source": {"type": "acme", "region": "eu", "page_size": 50, "api_key": "k"}, "sink": S3}, "j")
    assert tomllib.loads(acme.job_toml)["source"] == {"type": "acme", "region": "eu", "page_size": 50}
    with pytest.raises(RequestError, match="source.region: required"):
        build_job(cat, {"source": {"type": "acme", "api_key": "k"}, "sink": S3}, "j")
    with pytest.raises(RequestError, match="sink.type: must be one of s3"):
        build_job(cat, {"source": {"type": "acme", "region": "eu", "api_key": "k"}, "sink": {"type": "local"}}, "j")


def test_the_local_sink_is_confined_to_the_local_root(tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    src = {"type": "chorus", "token": "t"}
    own = tomllib.loads(build_job(cat, {"source": src, "sink": {"type": "local"}}, "job123").job_toml)
    assert own["sink"]["path"] == str(tmp_path / "exports" / "job123")
    dashed = tomllib.loads(build_job(cat, {"source": src, "sink": {"type": "local"}}, "-x_Y9").job_toml)  # ids are urlsafe b64
    assert dashed["sink"]["path"] == str(tmp_path / "exports" / "-x_Y9")
    named = tomllib.loads(build_job(cat, {"source": src, "sink": {"type": "local", "folder": "team/q1"}}, "j").job_toml)
    assert named["sink"]["path"] == str(tmp_path / "exports" / "team" / "q1")
    for folder in ("../x", "/etc", "a/../../b", ".hidden", "a//b", "a\\b"):
        with pytest.raises(RequestError, match="sink.folder"):
            build_job(cat, {"source": src, "sink": {"type": "local", "folder": folder}}, "j")
    assert "local" not in catalogue(tmp_path, local=False).sinks


def test_resume_takes_credentials_only(tmp_path: Path) -> None:
    cat = catalogue(tmp_path)
    creds = build_credentials(
        cat, {"source": {"token": "t2"}, "sink": {"access_key_id": "a", "secret_access_key": "s"}}, "chorus", "s3"
    )
    assert json.loads(bytes(creds)) == {"source": {"token": "t2"}, "sink": {"access_key_id": "a", "secret_access_key": "s"}}
    with pytest.raises(RequestError, match="unknown field bucket"):
        build_credentials(cat, {"source": {"token": "t"}, "sink": {"bucket": "other"}}, "chorus", "s3")
    with pytest.raises(RequestError, match="cannot change"):
        build_credentials(cat, {"source": {"type": "example"}}, "chorus", "s3")


def test_job_file_strings_survive_toml_escaping(tmp_path: Path) -> None:
    tricky = 'a "quoted" \\ back\tslash ünïcode 😀 ]]\n[sink]\ntype = "x"'
    text = to_toml({"source": {"type": "example", "label": tricky}})
    assert tomllib.loads(text) == {"source": {"type": "example", "label": tricky}}


@pytest.mark.parametrize(
    ("sink", "field"),
    [
        ({"type": "s3", "bucket": "my-bucket", "region": "evil.example/x"}, "region"),
        ({"type": "s3", "bucket": "My_Bucket", "region": "eu-central-1"}, "bucket"),
        ({"type": "gcs", "bucket": "a/b"}, "bucket"),
        ({"type": "azure", "account_url": "https://acct.blob.core.windows.net", "container": "A B"}, "container"),
    ],
)
def test_bucket_region_and_container_names_follow_the_clouds_rules(tmp_path: Path, sink: dict, field: str) -> None:
    cat = catalogue(tmp_path)
    bad = sink[field]
    with pytest.raises(RequestError, match=rf"sink\.{field}: ") as e:
        build_job(cat, {"source": {"type": "chorus", "token": "t"}, "sink": {**sink, "sas": "s", "key": "k"}}, "j")
    assert bad not in str(e.value)


def test_the_signing_key_goes_to_the_worker_with_the_credentials_never_in_its_job_file(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from portshift import Secret

    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    cat = catalogue(tmp_path)
    cat.signing_key = Secret(pem, "signing_key")
    built = build_job(cat, {"source": {"type": "chorus", "token": "canary-token"}, "sink": S3}, "jid")
    assert "signing" not in built.job_toml and "PRIVATE KEY" not in built.job_toml
    assert json.loads(bytes(built.secrets))["job"] == {"signing_key": pem}
    keys = {"access_key_id": "AKIACANARY", "secret_access_key": "canary-secret/+="}
    resumed = build_credentials(cat, {"source": {"token": "canary-token"}, "sink": keys}, "chorus", "s3")
    assert json.loads(bytes(resumed))["job"] == {"signing_key": pem}
