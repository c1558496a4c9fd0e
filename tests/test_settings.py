"""Settings from the environment: one pydantic model (portshift/settings.py), read
fresh on every call, a bad value one clear line through the real CLI; docs/cli.md lists every
field (tests/test_docs.py keeps the table and the model in step)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from portshift.errors import ConfigError, ExitCode
from portshift.settings import Settings, env_name, read_settings
from portshift.state import default_state_path

from .support import PORTSHIFT

SETTINGS = [env_name(f) for f in Settings.model_fields]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_when_nothing_is_set(clean: pytest.MonkeyPatch) -> None:
    s = read_settings()
    assert (s.state, s.load_plugins, s.debug, s.retry_base, s.lease) == (None, None, False, 1.0, 30.0)
    assert (s.state_key_endpoint_url, s.state_key_ca_bundle) == (None, None)
    assert SETTINGS == [
        "PORTSHIFT_STATE", "PORTSHIFT_LOAD_PLUGINS", "PORTSHIFT_STATE_KEY_ENDPOINT_URL", "PORTSHIFT_STATE_KEY_CA_BUNDLE",
        "PORTSHIFT_DEBUG", "PORTSHIFT_RETRY_BASE", "PORTSHIFT_LEASE", "PORTSHIFT_RESUME_ABOVE",
    ]  # fmt: skip
    assert s.resume_above == "64MiB"


@pytest.mark.parametrize("value", ["64", "12 parsecs", "-1MiB"])
def test_a_resume_size_that_does_not_parse_is_one_line_naming_the_variable(clean: pytest.MonkeyPatch, value: str) -> None:
    from portshift.errors import ConfigError

    clean.setenv("PORTSHIFT_RESUME_ABOVE", value)
    if value == "64":  # a plain number is bytes
        assert read_settings().resume_above == "64"
        return
    with pytest.raises(ConfigError, match="PORTSHIFT_RESUME_ABOVE") as e:
        read_settings()
    assert "\n" not in str(e.value)


def test_values_are_read_fresh_on_each_call(clean: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean.setenv("PORTSHIFT_STATE", str(tmp_path / "a.db"))
    assert default_state_path() == tmp_path / "a.db"
    clean.setenv("PORTSHIFT_STATE", str(tmp_path / "b.db"))
    assert default_state_path() == tmp_path / "b.db"
    clean.setenv("PORTSHIFT_STATE", "")  # empty counts as unset
    assert default_state_path().name == "state.db" and default_state_path().parent != tmp_path
    clean.setenv("PORTSHIFT_RETRY_BASE", "0.25")
    assert read_settings().retry_base == 0.25
    clean.setenv("PORTSHIFT_RETRY_BASE", "")
    assert read_settings().retry_base == 1.0
    clean.setenv("PORTSHIFT_LEASE", "2.5")
    assert read_settings().lease == 2.5
    clean.setenv("PORTSHIFT_LEASE", "")
    assert read_settings().lease == 30.0


def test_an_empty_plugin_allow_list_is_kept_apart_from_unset(clean: pytest.MonkeyPatch) -> None:
    assert read_settings().load_plugins is None
    clean.setenv("PORTSHIFT_LOAD_PLUGINS", "")
    assert read_settings().load_plugins == ""
    clean.setenv("PORTSHIFT_LOAD_PLUGINS", "portshift-sink-s3, chorus")
    assert read_settings().load_plugins == "portshift-sink-s3, chorus"


@pytest.mark.parametrize(
    ("value", "on"), [("", False), ("0", False), ("false", False), ("No", False), ("off", False), ("1", True), ("yes", True)]
)
def test_debug_flag_words(clean: pytest.MonkeyPatch, value: str, on: bool) -> None:
    clean.setenv("PORTSHIFT_DEBUG", value)
    assert read_settings().debug is on


def test_a_variable_counts_in_any_case_and_unrelated_ones_are_ignored(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("portshift_lease", "7")  # what pydantic-settings accepted is still accepted
    clean.setenv("PORTSHIFT_NOT_A_SETTING", "x")
    clean.setenv("LEASE", "9")
    s = read_settings()
    assert s.lease == 7.0 and not hasattr(s, "not_a_setting")
    with pytest.raises(ValueError):
        s.__setattr__("lease", 1.0)  # frozen, as before


def test_a_bad_value_is_a_config_error_naming_the_variable_not_the_value(clean: pytest.MonkeyPatch) -> None:
    clean.setenv("PORTSHIFT_RETRY_BASE", "soon-ish")
    with pytest.raises(ConfigError, match=r"^environment variable PORTSHIFT_RETRY_BASE: .*number.*\(fix or unset it\)$") as e:
        read_settings()
    assert "soon-ish" not in str(e.value)


def test_the_cli_reports_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PORTSHIFT_RETRY_BASE"] = "soon-ish"
    r = subprocess.run([*PORTSHIFT, "plugins"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == ExitCode.USAGE, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "portshift: error: environment variable PORTSHIFT_RETRY_BASE: input should be a valid number, "
        "unable to parse string as a number (fix or unset it)"
    ]
    assert "Traceback" not in r.stderr and "soon-ish" not in r.stderr
