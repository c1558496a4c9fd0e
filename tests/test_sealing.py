"""Envelope encryption of job metadata: AES-256-GCM bound to job, table and column; keyed hashes
for lookups; the local key-file provider (docs/byok.md)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from portshift.errors import ConfigError
from portshift.key_providers import LocalKeyFile, key_provider
from portshift.sealing import KeyUnavailableError, SealedValueError, Sealer, is_sealed, new_data_key


def test_a_sealed_value_opens_only_with_its_job_table_and_column() -> None:
    key = new_data_key()
    a = Sealer("job-a", key)
    sealed = a.seal("recordings", "message", "call 42 in bucket acme-calls")
    assert sealed is not None and is_sealed(sealed)
    assert "acme" not in sealed and "42" not in base64.b64decode(sealed[3:]).decode("latin-1")
    assert a.open("recordings", "message", sealed) == "call 42 in bucket acme-calls"
    assert a.seal("jobs", "error", "x") != a.seal("jobs", "error", "x")  # a fresh nonce each time
    assert a.seal("jobs", "error", None) is None and a.open("jobs", "error", None) is None


@pytest.mark.parametrize(
    ("job", "table", "column"),
    [("job-b", "recordings", "message"), ("job-a", "recordings", "sealed_id"), ("job-a", "jobs", "message")],
)
def test_a_sealed_value_moved_to_another_job_or_column_fails_with_a_clear_error(job: str, table: str, column: str) -> None:
    key = new_data_key()
    sealed = Sealer("job-a", key).seal("recordings", "message", "secret text")
    with pytest.raises(SealedValueError) as e:
        Sealer(job, key).open(table, column, sealed)
    assert f"{table}.{column} of job {job}" in str(e.value) and "fails authentication" in str(e.value)
    assert "secret text" not in str(e.value)


def test_an_altered_byte_fails_authentication() -> None:
    s = Sealer("job-a", new_data_key())
    raw = bytearray(base64.b64decode(s.seal("files", "sha256", "ab" * 32)[3:]))  # type: ignore[index]
    raw[20] ^= 1
    with pytest.raises(SealedValueError, match="files.sha256 of job job-a"):
        s.open("files", "sha256", "s1:" + base64.b64encode(bytes(raw)).decode())
    with pytest.raises(SealedValueError, match="clear value"):
        s.open("files", "sha256", "ab" * 32)
    with pytest.raises(SealedValueError, match="fails authentication"):
        s.open("files", "sha256", "s1:not base64!")


def test_another_data_key_cannot_open() -> None:
    sealed = Sealer("job-a", new_data_key()).seal("jobs", "sink_location", "s3://acme")
    with pytest.raises(SealedValueError):
        Sealer("job-a", new_data_key()).open("jobs", "sink_location", sealed)


def test_lookups_are_keyed_deterministic_per_job_and_say_nothing() -> None:
    key = new_data_key()
    a = Sealer("job-a", key)
    assert a.lookup("recording_id", "rec-1") == a.lookup("recording_id", "rec-1")
    assert a.lookup("recording_id", "rec-1") != a.lookup("recording_id", "rec-2")
    assert a.lookup("recording_id", "rec-1") != a.lookup("file_key", "rec-1")
    assert a.lookup("recording_id", "rec-1") != Sealer("job-b", key).lookup("recording_id", "rec-1")
    assert a.lookup("recording_id", "rec-1") != Sealer("job-a", new_data_key()).lookup("recording_id", "rec-1")
    assert "rec" not in a.lookup("recording_id", "rec-1")
    assert repr(a) == "Sealer(job_id='job-a')"


def _key_file(tmp_path: Path, name: str = "state.key") -> Path:
    path = tmp_path / name
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    path.chmod(0o600)
    return path


def test_the_key_file_wraps_and_unwraps_per_job(tmp_path: Path) -> None:
    provider = key_provider(f"file:{_key_file(tmp_path)}")
    assert isinstance(provider, LocalKeyFile)
    key, wrapped = provider.new_data_key("job-a")
    assert len(key) == 32 and key not in wrapped
    assert provider.unwrap(wrapped, "job-a") == key
    with pytest.raises(KeyUnavailableError, match="does not unwrap the data key of job job-b"):
        provider.unwrap(wrapped, "job-b")  # bound to its job
    other = LocalKeyFile(str(_key_file(tmp_path, "other.key")))
    with pytest.raises(KeyUnavailableError, match="another key file"):
        other.unwrap(wrapped, "job-a")
    rewrapped = provider.rewrap(wrapped, "job-a", other)
    assert other.unwrap(rewrapped, "job-a") == key
    provider.check()


def test_a_bad_key_file_is_one_clear_line(tmp_path: Path) -> None:
    path = _key_file(tmp_path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        LocalKeyFile(str(path)).new_data_key("j")
    path.write_text("too short")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="openssl rand -base64 32"):
        LocalKeyFile(str(path)).new_data_key("j")
    with pytest.raises(KeyUnavailableError, match="does not exist"):
        LocalKeyFile(str(tmp_path / "gone.key")).unwrap(b"x" * 60, "j")
    for spec in ("nothing", "file:", ":x"):
        with pytest.raises(ConfigError, match="does not name a key"):
            key_provider(spec)
    with pytest.raises(ConfigError, match="unknown key provider type 'vault'"):
        key_provider("vault:x")
