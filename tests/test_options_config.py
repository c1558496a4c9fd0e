"""The job file and plugin options: every kind of bad input is one ConfigError that names the
problem and never the secret; credentials come only from *_file, the environment or the
--secrets-from-stdin document; dates parse as documented."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from portshift import hookimpl
from portshift.api import Recording, Source, Window
from portshift.config import load_job, parse_when
from portshift.errors import ConfigError
from portshift.options import HttpsUrl, PluginOptions
from portshift.plugins import load_plugins, pm
from portshift.secrets import Secret, secret_field

from .conftest import make_canary

ENV = "PORTSHIFT_TEST_VAULT_TOKEN"
CANARY = make_canary("cfg")


class VaultOptions(PluginOptions):
    section = "source"
    token: Secret | None = secret_field(env=ENV)
    token_file: Path | None = None
    endpoint: HttpsUrl = "https://vault.example"
    count: int = 3
    labels: list[str] = []


class VaultSource(Source):
    Options = VaultOptions
    description = "a test source with a credential"

    def recordings(self, window: Window) -> Iterator[Recording]:
        return iter(())

    def artifacts(self, recording: Recording) -> Iterator:
        return iter(())


class _TestPlugin:
    @hookimpl
    def register_sources(self, register) -> None:  # type: ignore[no-untyped-def]
        register("vault", VaultSource)


@pytest.fixture(autouse=True)
def vault_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV, raising=False)
    load_plugins()
    obj = _TestPlugin()
    pm.register(obj, name="test-options-config-vault")
    try:
        yield
    finally:
        pm.unregister(obj)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(text.replace("{out}", str(tmp_path / "out")).replace("{tmp}", str(tmp_path)))
    return p


SRC = '[source]\ntype = "vault"\n'
SINK = '[sink]\ntype = "local"\npath = "{out}"\n'


def error_of(tmp_path: Path, text: str, secrets: dict | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, text), secrets=secrets)
    msg = str(e.value)
    assert CANARY not in msg and CANARY not in repr(e.value)
    assert "\n" not in msg  # one line
    return msg


# --- credentials ---------------------------------------------------------------------------------
def test_a_secret_written_in_the_job_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    msg = error_of(tmp_path, SRC + f'token = "{CANARY}"\n' + SINK)
    assert "[source] token: credentials are never read from the job file" in msg
    assert ENV in msg and "token_file" in msg
    # even when it is also set properly elsewhere
    (tmp_path / "tok").write_text("good-secret-value")
    msg = error_of(tmp_path, SRC + f'token = "{CANARY}"\ntoken_file = "{{tmp}}/tok"\n' + SINK)
    assert "never read from the job file" in msg


@pytest.mark.parametrize("value", ["123", "true", f'["{CANARY}"]', f'{{ v = "{CANARY}" }}'])
def test_a_secret_of_any_toml_type_is_refused(tmp_path: Path, value: str) -> None:
    assert "never read from the job file" in error_of(tmp_path, SRC + f"token = {value}\n" + SINK)


def test_a_missing_credential_names_the_env_var_and_the_file_option(tmp_path: Path) -> None:
    msg = error_of(tmp_path, SRC + SINK)
    assert "[source] token: the credential is missing" in msg
    assert f"set {ENV}" in msg and 'token_file = "/path/to/secret"' in msg


def test_an_empty_env_var_counts_as_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "")
    assert "the credential is missing" in error_of(tmp_path, SRC + SINK)


def test_the_credential_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text(CANARY + "\n")
    cfg = load_job(write(tmp_path, SRC + 'token_file = "{tmp}/tok"\n' + SINK))
    token = cfg.source_options.token
    assert isinstance(token, Secret) and token.reveal() == CANARY
    for text in (repr(cfg.source_options), cfg.source_options.model_dump_json(), str(cfg.source_options.model_dump())):
        assert CANARY not in text


def test_the_file_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "from-the-environment")
    (tmp_path / "tok").write_text("from-the-file")
    cfg = load_job(write(tmp_path, SRC + 'token_file = "{tmp}/tok"\n' + SINK))
    assert cfg.source_options.token.reveal() == "from-the-file"


@pytest.mark.parametrize("content, expect", [(None, "does not exist"), ("", "is empty"), ("\n", "is empty")])
def test_bad_secret_files(tmp_path: Path, content: str | None, expect: str) -> None:
    if content is not None:
        (tmp_path / "tok").write_text(content)
    msg = error_of(tmp_path, SRC + 'token_file = "{tmp}/tok"\n' + SINK)
    assert "[source] token_file" in msg and expect in msg


def test_the_credential_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, CANARY)
    cfg = load_job(write(tmp_path, SRC + SINK))
    assert cfg.source_options.token.reveal() == CANARY
    assert CANARY not in repr(cfg)


def test_the_credential_from_a_secrets_document(tmp_path: Path) -> None:
    cfg = load_job(write(tmp_path, SRC + SINK), secrets={"source": {"token": CANARY}})
    assert cfg.source_options.token.reveal() == CANARY
    assert CANARY not in repr(cfg)


@pytest.mark.parametrize(
    "secrets, expect",
    [
        ({"dest": {"token": CANARY}}, "secrets for unknown sections: dest"),
        ({"source": {"token": 12345}}, "secret source.token must be a string"),
        ({"source": ["token", CANARY]}, "must be a JSON object"),
        ({"source": {"token": "a-good-token", "tokn": CANARY}}, "unknown key 'tokn'"),
    ],
)
def test_bad_secrets_documents(tmp_path: Path, secrets: dict, expect: str) -> None:
    assert expect in error_of(tmp_path, SRC + SINK, secrets=secrets)


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_credential_in_the_secrets_document_is_refused(tmp_path: Path, value: str) -> None:
    """An empty env var counts as missing and an empty secret file is refused; the stdin document
    must not be the one way to start a job with an empty credential."""
    error_of(tmp_path, SRC + SINK, secrets={"source": {"token": value}})


# --- the job file's shape ------------------------------------------------------------------------
def test_unknown_key_lists_the_valid_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, CANARY)
    msg = error_of(tmp_path, SRC + "cuont = 3\n" + SINK)
    assert "[source] unknown key 'cuont'" in msg
    assert "valid keys: count, endpoint, labels, token, token_file" in msg
    msg = error_of(tmp_path, "[job]\ntransfer = 3\n" + SRC + SINK)
    assert "[job] unknown key 'transfer'" in msg and "transfers" in msg
    msg = error_of(tmp_path, SRC + SINK + "[extra]\na = 1\n")
    assert "unknown section or key 'extra'" in msg and "job, manifest, sink, source" in msg


@pytest.mark.parametrize(
    "text, expect",
    [
        (SRC + 'count = "many"\n' + SINK, "[source] count:"),
        (SRC + "labels = 3\n" + SINK, "[source] labels:"),
        (SRC + f'endpoint = "http://vault.example/x?t={CANARY}"\n' + SINK, "endpoint must be an https:// URL"),
        (SRC + f'endpoint = "https://user:{CANARY}@vault.example/"\n' + SINK, "endpoint must not carry a user name or password"),
        (SRC + 'endpoint = "https://"\n' + SINK, "endpoint has no host name"),
        ("[job]\ntransfers = 0\n" + SRC + SINK, "[job] transfers:"),
        ("[job]\ntransfers = 1000\n" + SRC + SINK, "[job] transfers:"),
        ("[job]\nretries = -1\n" + SRC + SINK, "[job] retries:"),
        ('[job]\nsince = "yesterday"\n' + SRC + SINK, "[job] since"),
        ("[job]\nmanifest = []\n" + SRC + SINK, "must name at least one writer"),
        ('[job]\nmanifest = "sha256sum"\n' + SRC + SINK, "[job] manifest:"),
        ("job = 3\n" + SRC + SINK, "job must be a [job] table"),
        ('source = "vault"\n' + SINK, "source must be a [source] table"),
        (SRC + '[sink]\ntype = "local"\n', "[sink] path: required, missing"),
        (SRC + '[sink]\ntype = "local"\npath = "{out}"\nfsync = "sometimes"\n', "[sink] fsync:"),
    ],
)
def test_wrong_types_and_values_name_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expect: str) -> None:
    monkeypatch.setenv(ENV, "env-token-value")
    assert expect in error_of(tmp_path, text)


def test_unknown_types_list_what_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "env-token-value")
    msg = error_of(tmp_path, '[source]\ntype = "gong"\n' + SINK)
    assert "unknown source type 'gong'" in msg and "example" in msg and "vault" in msg
    msg = error_of(tmp_path, SRC + '[sink]\ntype = "dropbox"\n')
    assert "unknown sink type 'dropbox'" in msg and "local" in msg
    msg = error_of(tmp_path, '[job]\nmanifest = ["md5sum"]\n' + SRC + SINK)
    assert "unknown manifest writer type 'md5sum'" in msg and "sha256sum" in msg and "bagit" in msg


def test_manifest_sections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "env-token-value")
    msg = error_of(tmp_path, SRC + SINK + "[manifest.bagit]\nsource_organization = 'x'\n")
    assert "[manifest.bagit] configures a writer that [job] manifest does not list" in msg
    msg = error_of(tmp_path, '[job]\nmanifest = ["bagit"]\n' + SRC + SINK + "[manifest.bagit]\nbogus = 1\n")
    assert "[manifest.bagit] unknown key 'bogus'" in msg
    text = '[job]\nmanifest = ["sha256sum", "bagit"]\n' + SRC + SINK + "[manifest.bagit]\nsource_organization = 'Acme'\n"
    cfg = load_job(write(tmp_path, text))
    assert [w[0] for w in cfg.writers] == ["sha256sum", "bagit"]
    assert cfg.writers[1][2].source_organization == "Acme"


@pytest.mark.parametrize(
    "text, expect",
    [
        ("[source]\ncount = 1\n" + SINK, "[source] type is missing"),
        (SRC + "[sink]\npath = '{out}'\n", "[sink] type is missing"),
        ("[source]\ntype = 3\n" + SINK, "[source] type is missing"),
        (SINK, "the [source] section is missing"),
        (SRC, "the [sink] section is missing"),
        ("[job]\ntransfers = 2\n", "section is missing"),
        ("# only a comment\n", "the [source] section is missing"),
    ],
)
def test_missing_sections_and_types(tmp_path: Path, text: str, expect: str) -> None:
    assert expect in error_of(tmp_path, text)


@pytest.mark.parametrize(
    "text, expect",
    [
        ("", "is empty"),
        ("   \n\n\t\n", "is empty"),
        ("[source\ntype = 'vault'", "is not valid TOML"),
        (SRC + f"token = {CANARY}\n" + SINK, "is not valid TOML"),  # an unquoted secret: not echoed
        (SRC + f'token = "{CANARY}\n' + SINK, "is not valid TOML"),  # an unterminated one neither
        (SRC + SRC + SINK, "is not valid TOML"),
    ],
)
def test_empty_and_invalid_toml(tmp_path: Path, text: str, expect: str) -> None:
    assert expect in error_of(tmp_path, text)


def test_job_file_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_job(tmp_path)
    (tmp_path / "latin1.toml").write_bytes('[source]\ntype = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_job(tmp_path / "latin1.toml")
    with pytest.raises(ConfigError, match="no job file"):
        load_job(None)


@pytest.mark.parametrize(
    "template, expect",
    [
        ("{id}/{title}", "unknown field {title}"),
        ("{artifact}", "must contain {id}"),
        ("/{id}/{artifact}", "relative"),
        ("{id}/../{artifact}", "'..'"),
        ("{id/{artifact}", "[job] key_template"),
    ],
)
def test_key_template_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str, expect: str) -> None:
    monkeypatch.setenv(ENV, "env-token-value")
    assert expect in error_of(tmp_path, f"[job]\nkey_template = '{template}'\n" + SRC + SINK)


def test_a_complete_job_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, CANARY)
    text = (
        "[job]\nname = 'nightly'\ntransfers = 8\nretries = 5\nkey_template = '{date}/{id}/{artifact}.{ext}'\n"
        "since = 2024-01-01\nuntil = 2024-02-01T12:00:00+02:00\n"
        + SRC
        + "count = 7\nendpoint = 'https://vault.example/api'\nlabels = ['a', 'b']\n"
        + SINK
        + "fsync = false\n"
    )
    cfg = load_job(write(tmp_path, text))
    assert cfg.job.transfers == 8 and cfg.job.retries == 5 and cfg.job.name == "nightly"
    assert cfg.source_type == "vault" and cfg.source_cls is VaultSource
    assert cfg.source_options.count == 7 and cfg.source_options.labels == ["a", "b"]
    assert cfg.sink_type == "local" and cfg.sink_options.path == tmp_path / "out" and cfg.sink_options.fsync is False
    assert cfg.job.since == date(2024, 1, 1)
    assert parse_when(cfg.job.until, "until") == datetime(2024, 2, 1, 10, tzinfo=timezone.utc)
    assert [w[0] for w in cfg.writers] == ["sha256sum"]
    assert cfg.signing_key is None


# --- dates ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, expect",
    [
        ("2024-01-02", datetime(2024, 1, 2, tzinfo=timezone.utc)),
        (" 2024-01-02 ", datetime(2024, 1, 2, tzinfo=timezone.utc)),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
        ("2024-01-02T03:04:05+02:00", datetime(2024, 1, 2, 1, 4, 5, tzinfo=timezone.utc)),
        ("2024-01-02T00:00:00-05:00", datetime(2024, 1, 2, 5, tzinfo=timezone.utc)),
        ("2024-01-02 03:04", datetime(2024, 1, 2, 3, 4, tzinfo=timezone.utc)),
        (date(2024, 1, 2), datetime(2024, 1, 2, tzinfo=timezone.utc)),
        (datetime(2024, 1, 2, 3), datetime(2024, 1, 2, 3, tzinfo=timezone.utc)),
        (datetime(2024, 1, 2, 3, tzinfo=timezone(timedelta(hours=1))), datetime(2024, 1, 2, 2, tzinfo=timezone.utc)),
    ],
)
def test_parse_when_formats(value: object, expect: datetime) -> None:
    got = parse_when(value, "--since")  # type: ignore[arg-type]
    assert got == expect and got.tzinfo == timezone.utc


@pytest.mark.parametrize("value", ["", "yesterday", "2024-13-45", "2024-02-30", "01/02/2024", "2024-01-02T25:00", "x" * 500])
def test_parse_when_refuses_what_is_not_a_date(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_when(value, "--since")
    msg = str(e.value)
    assert msg.startswith("--since: ") and "is not a date" in msg and "YYYY-MM-DD" in msg
    assert len(msg) < 200  # a long value is shortened, not echoed whole
