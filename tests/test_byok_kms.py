"""Bring your own key with AWS KMS (moto's server over TLS, started here), through real
`portshift` processes on both state backends: a job killed mid-way, its key disabled by the
customer: `portshift jobs` shows the clear fields and "sealed: ...", resume refuses with one line
naming the key and loses nothing; the key enabled again, resume completes and the manifest
verifies. `portshift state rewrap` moves every data key to a new key without touching a row."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("portshift_sink_s3", reason="the kms key provider comes with the S3 plugin")
pytest.importorskip("moto", reason="moto[server] is a test dependency of the S3 plugin")

from portshift.testing import LocalCA  # noqa: E402
from portshift.testing.kms_server import KmsServer, moto_kms  # noqa: E402

from .conftest import StateBackend  # noqa: E402
from .support import PORTSHIFT, sha256sum_check  # noqa: E402
from .test_byok import assert_absent, dump_of  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsServer]:
    folder = tmp_path_factory.mktemp("kms")
    with moto_kms(LocalCA.create(folder / "ca"), folder / "moto.log") as server:
        yield server


@pytest.fixture(scope="module")
def fault_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The crash plugin of tests/test_crash_resume.py, as an installed distribution."""
    site = tmp_path_factory.mktemp("site")
    (site / "portshift_faults.py").write_text((HERE / "fault_plugins" / "portshift_faults.py").read_text())
    info = site / "portshift_faults-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: portshift-faults\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[portshift]\nfaults = portshift_faults\n")
    return site


def _key_id(arn: str) -> str:
    return arn.rsplit("/", 1)[1]  # moto's DisableKey/EnableKey want the id


class Cli:
    def __init__(self, backend: StateBackend, kms: KmsServer, site: Path) -> None:
        self.backend, self.kms, self.site = backend, kms, site

    def env(self, kill: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTSHIFT_", "AWS_", "PG"))}
        env.update(
            PYTHONPATH=str(self.site),
            PORTSHIFT_LOAD_PLUGINS="portshift-faults,portshift-sink-s3",
            PORTSHIFT_AWS_ACCESS_KEY_ID="AKIAKMSTEST0000001",
            PORTSHIFT_AWS_SECRET_ACCESS_KEY="kms-test-secret",  # noqa: S106 - moto accepts any
            PORTSHIFT_STATE_KEY_ENDPOINT_URL=self.kms.url,
            PORTSHIFT_STATE_KEY_CA_BUNDLE=str(self.kms.ca_pem),
            **self.backend.env(),
        )
        if kill:
            env["PORTSHIFT_TEST_KILL"] = kill
        return env

    def __call__(self, *args: str, kill: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PORTSHIFT, *args, "--state", self.backend.target], env=self.env(kill), capture_output=True, text=True, timeout=300
        )


def _job(tmp_path: Path, arn: str, kms: KmsServer) -> tuple[Path, Path]:
    out = tmp_path / "ZQXACMECORPORATION-bucket"
    job = tmp_path / "job.toml"
    job.write_text(
        f'[job]\ntransfers = 2\n\n[source]\ntype = "faulty-example"\ncount = 12\nmedia_size = 2000\nseed = 4242\n\n'
        f'[sink]\ntype = "faulty-local"\npath = "{out}"\nfsync = false\n\n'
        f'[state]\nkey = "kms:{arn}"\nkey_endpoint_url = "{kms.url}"\nkey_ca_bundle = "{kms.ca_pem}"\n'
    )
    return job, out


def _rows(backend: StateBackend) -> dict[str, Any]:
    with backend.open() as state:
        return {t: sorted(map(repr, state._rows("read", f"select * from {t}", []))) for t in ("recordings", "files", "job_keys")}  # noqa: S608


def test_a_disabled_key_seals_the_job_until_it_is_enabled_again(
    state_backend: StateBackend, kms: KmsServer, fault_site: Path, tmp_path: Path
) -> None:
    admin = kms.client()
    arn = admin.create_key(Description="customer key")["KeyMetadata"]["Arn"]
    job, out = _job(tmp_path, arn, kms)
    cli = Cli(state_backend, kms, fault_site)

    killed = cli("run", "--config", str(job), "--no-progress", kill="recorded:6")
    assert killed.returncode == -9, killed.stderr
    [job_id] = [p.name for p in out.iterdir()]

    admin.disable_key(KeyId=_key_id(arn))  # the customer ends portshift's access
    before = _rows(state_backend)
    listed = cli("jobs")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and "running" in listed.stdout
    assert "sealed: the customer's key is not available" in listed.stdout and arn in listed.stdout
    shown = cli("jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "sealed: the customer's key is not available" in shown.stdout and str(out) not in shown.stdout

    refused = cli("run", "--config", str(job), "--no-progress")
    assert refused.returncode == 5
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"kms:{arn}" in lines[0] and "the key is disabled" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr
    assert _rows(state_backend) == before  # nothing lost, nothing written

    admin.enable_key(KeyId=_key_id(arn))
    resumed = cli("run", "--config", str(job), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert [p.name for p in out.iterdir()] == [job_id]  # the same job, resumed
    assert sha256sum_check(out / job_id).returncode == 0
    shown = cli("jobs", "show", job_id)
    assert "complete" in shown.stdout and str(out) in shown.stdout and "sealed:" not in shown.stdout

    manifest = (out / job_id / "portshift-manifest.txt").read_text().splitlines()
    digests = [line.split("  ", 1)[0] for line in manifest if line and not line.startswith("#")]
    ids = [f"ex4242{i:06d}" for i in range(12)]
    assert_absent(dump_of(state_backend), [*ids, *digests, out.name])

    # rotation: every data key re-wrapped under a new key; the old key may then go
    new = admin.create_key(Description="rotated")["KeyMetadata"]["Arn"]
    before = _rows(state_backend)
    rewrap = cli("state", "rewrap", "--to", f"kms:{new}", "--key-endpoint-url", kms.url, "--key-ca-bundle", str(kms.ca_pem))
    assert rewrap.returncode == 0, rewrap.stderr
    assert f"re-wrapped the data keys of 1 job with kms:{new}" in rewrap.stdout
    after = _rows(state_backend)
    assert after["recordings"] == before["recordings"] and after["files"] == before["files"]
    assert after["job_keys"] != before["job_keys"] and new in after["job_keys"][0]
    admin.disable_key(KeyId=_key_id(arn))
    shown = cli("jobs", "show", job_id)
    assert shown.returncode == 0 and str(out) in shown.stdout and "sealed:" not in shown.stdout


def test_a_key_disabled_mid_job_lets_that_job_finish_and_seals_it_after(
    state_backend: StateBackend, kms: KmsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The running process holds the job's data key (as S3 caches data keys); the next command
    that needs the key sees it disabled."""
    from portshift.config import load_job
    from portshift.key_providers import key_provider
    from portshift.pipeline import Runner, RunRequest
    from portshift.sealing import KeyUnavailableError

    from .support import plugin

    monkeypatch.setenv("PORTSHIFT_AWS_ACCESS_KEY_ID", "AKIAKMSTEST0000001")
    monkeypatch.setenv("PORTSHIFT_AWS_SECRET_ACCESS_KEY", "kms-test-secret")
    admin = kms.client()
    arn = admin.create_key()["KeyMetadata"]["Arn"]
    out = tmp_path / "out"
    out.mkdir()
    doc = {
        "job": {"transfers": 1},
        "source": {"type": "example", "count": 6, "media_size": 500},
        "sink": {"type": "local", "path": str(out), "fsync": False},
    }
    seen: list[str] = []

    def file_exported(job: Any, file: Any) -> None:
        seen.append(file.key)
        if len(seen) == 2:
            admin.disable_key(KeyId=_key_id(arn))

    provider = key_provider(f"kms:{arn}", endpoint_url=kms.url, ca_bundle=kms.ca_pem)
    with plugin("disable-mid-job", file_exported=file_exported), state_backend.open() as state:
        state.seals.use(provider)
        result = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(RunRequest())
    assert result.status == "complete" and len(seen) == 12  # 6 recordings x 2 files, exported after the key was disabled
    assert sha256sum_check(out / result.job_id).returncode == 0
    monkeypatch.setenv("PORTSHIFT_STATE_KEY_ENDPOINT_URL", kms.url)
    monkeypatch.setenv("PORTSHIFT_STATE_KEY_CA_BUNDLE", str(kms.ca_pem))
    with state_backend.open() as state:
        job = state.job(result.job_id)
        assert job is not None and job.status.value == "complete" and job.file_count == 12
        assert job.sealed and "the key is disabled" in job.sealed and job.manifest_sha256 is None
        with pytest.raises(KeyUnavailableError, match=f"kms:{arn}"):
            list(state.files(result.job_id))
    admin.enable_key(KeyId=_key_id(arn))
    with state_backend.open() as state:
        job = state.job(result.job_id)
        assert job is not None and job.sealed is None and job.manifest_sha256 == result.manifest_sha256
