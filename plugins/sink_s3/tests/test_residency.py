"""allowed_regions for S3: the same globs as every sink (portshift.residency), checked against the
configured region when the job file is read, and against the region S3 itself reports for the
bucket (HeadBucket's ``x-amz-bucket-region``) by ``check()``, before anything is written (moto,
which keeps the region a bucket was created in)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portshift import ConfigError, ExitCode, ResidencyError
from portshift.testing import clean_env, run_portshift

from .conftest import ACCESS_KEY, SECRET_KEY


def bucket_in(admin: Any, region: str) -> str:
    name = f"res-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})
    return name


def test_a_configured_region_outside_the_list_is_refused_when_the_job_file_is_read(make_options: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"region 'us-east-1' is not in allowed_regions \['eu-\*'\]"):
        make_options(allowed_regions=["eu-*"])


def test_a_bucket_that_s3_reports_outside_the_list_is_refused_by_check(
    admin: Any, make_sink: Callable[..., Any], tls_proxy: Any
) -> None:
    name = bucket_in(admin, "eu-west-1")
    # the job file claims us-east-1 (allowed), the bucket is in eu-west-1: S3's answer decides
    sink = make_sink(bucket=name, endpoint_url=tls_proxy.url, allowed_regions=["us-*", "US-WEST-?"])
    with pytest.raises(ResidencyError) as e:
        sink.check()
    assert "'eu-west-1'" in str(e.value) and "allowed_regions ['us-*', 'US-WEST-?']" in str(e.value)
    assert [r.method for r in tls_proxy.seen] == ["HEAD"], "nothing but the HeadBucket was sent"
    assert admin.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


def test_a_bucket_in_an_allowed_region_passes_check(admin: Any, make_sink: Callable[..., Any], tls_proxy: Any) -> None:
    name = bucket_in(admin, "eu-west-1")
    sink = make_sink(bucket=name, region="eu-west-1", endpoint_url=tls_proxy.url, allowed_regions=["EU-*"])
    sink.check()
    assert [r.method for r in tls_proxy.seen] == ["HEAD", "PUT", "DELETE"]


def test_portshift_run_refuses_before_listing_with_one_line(tmp_path: Path, admin: Any, moto: Any, certs: Any) -> None:
    name = bucket_in(admin, "eu-west-1")
    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 2\n\n'
        f'[sink]\ntype = "s3"\nbucket = "{name}"\nregion = "us-east-1"\nendpoint_url = "{moto.url}"\n'
        f'ca_bundle = "{certs.ca_pem}"\naddressing_style = "path"\nallowed_regions = ["us-*"]\n'
    )
    state = tmp_path / "state.db"
    keys = {"PORTSHIFT_AWS_ACCESS_KEY_ID": ACCESS_KEY, "PORTSHIFT_AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    env = clean_env(drop=("AWS_", "PORTSHIFT_"), **keys)
    r = run_portshift("run", "--config", job, "--state", state, env=env, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == ExitCode.USAGE, r.stderr
    assert len(lines) == 1 and "'eu-west-1'" in lines[0] and "allowed_regions" in lines[0], r.stderr
    assert not state.exists() and admin.list_objects_v2(Bucket=name).get("KeyCount") == 0
