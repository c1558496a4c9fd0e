"""allowed_regions for GCS: the bucket's location, as GCS reports it in the bucket's JSON API
metadata, must match one of the globs before anything is uploaded (fake-gcs-server, which keeps
the location a bucket was created with)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from portshift_sink_gcs import GcsSink

from portshift import ConfigError, ExitCode, ResidencyError
from portshift.testing import clean_env, pattern_bytes, put_bytes, run_portshift

from .conftest import BUCKET, Certs, Server, make_options


@pytest.fixture
def bucket_in(fakegcs: Server) -> Callable[[], str]:
    """A new bucket on fake-gcs-server. fake-gcs-server ignores the location of a create request
    and reports its own ``-location`` (default ``US-CENTRAL1``) for every bucket."""

    def create() -> str:
        name = f"res-{uuid.uuid4().hex[:12]}"
        r = fakegcs.admin.http.post(
            f"{fakegcs.endpoint}/storage/v1/b", params={"project": "test"}, json={"name": name, "location": "US"}, timeout=30
        )
        r.raise_for_status()
        return name

    return create


@pytest.fixture
def sink_for(fakegcs: Server, certs: Certs) -> Iterator[Callable[..., GcsSink]]:
    made: list[GcsSink] = []

    def make(**overrides: Any) -> GcsSink:
        sink = GcsSink(make_options(fakegcs, certs.ca_pem, **overrides))
        made.append(sink)
        return sink

    yield make
    for s in made:
        s.close()


def test_the_store_reports_a_location(fakegcs: Server, bucket_in: Callable[[], str]) -> None:
    name = bucket_in()
    doc = fakegcs.admin.http.get(f"{fakegcs.endpoint}/storage/v1/b/{name}", timeout=30).json()
    assert doc["location"] == "US-CENTRAL1"


def test_a_bucket_outside_allowed_regions_is_refused_before_any_upload(
    fakegcs: Server, bucket_in: Callable[[], str], sink_for: Callable[..., GcsSink]
) -> None:
    name = bucket_in()
    sink = sink_for(bucket=name, allowed_regions=["eu", "europe-*"])
    with pytest.raises(ResidencyError) as e:
        sink.check()
    text = str(e.value)
    assert "'US-CENTRAL1'" in text and "allowed_regions ['eu', 'europe-*']" in text and "nothing was sent" in text
    with pytest.raises(ResidencyError):
        put_bytes(sink, "a.bin", pattern_bytes(10), 10)
    assert fakegcs.admin.names("", bucket=name) == []


def test_a_bucket_inside_allowed_regions_is_written(
    fakegcs: Server, bucket_in: Callable[[], str], sink_for: Callable[..., GcsSink]
) -> None:
    name = bucket_in()
    sink = sink_for(bucket=name, allowed_regions=["eu", "us-*"], prefix="")  # globs match case-insensitively
    sink.check()
    result, _ = put_bytes(sink, "a.bin", pattern_bytes(10), 10)
    assert result.size == 10 and fakegcs.admin.download("a.bin", bucket=name) == pattern_bytes(10)


def test_an_empty_or_odd_allow_list_is_a_config_error(fakegcs: Server, certs: Certs) -> None:
    for bad in ([], ["eu west;1"]):
        with pytest.raises(ConfigError, match="allowed_regions"):
            make_options(fakegcs, certs.ca_pem, allowed_regions=bad)


def test_portshift_run_refuses_before_listing_with_one_line(tmp_path: Path, fakegcs: Server, certs: Certs) -> None:
    job = tmp_path / "job.toml"
    job.write_text(
        '[source]\ntype = "example"\ncount = 2\n\n'
        f'[sink]\ntype = "gcs"\nbucket = "{BUCKET}"\napi_endpoint = "{fakegcs.endpoint}"\nca_bundle = "{certs.ca_pem}"\n'
        'anonymous = true\nallowed_regions = ["eu", "europe-*"]\n'
    )
    state = tmp_path / "state.db"
    before = fakegcs.admin.names("")
    env = clean_env(drop=("PORTSHIFT_", "GOOGLE_"))
    r = run_portshift("run", "--config", job, "--state", state, env=env, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == ExitCode.USAGE, r.stderr
    assert len(lines) == 1 and "'US-CENTRAL1'" in lines[0] and "allowed_regions" in lines[0], r.stderr
    assert not state.exists()
    assert fakegcs.admin.names("") == before
