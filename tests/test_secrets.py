"""Secret: masked everywhere it could be rendered, never pickled, never copied out; registered
masks scrubbed in every encoded form; secret-file errors never show the content."""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import traceback
import urllib.parse
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from portshift.errors import ConfigError
from portshift.options import PluginOptions
from portshift.redact import REDACTED, redact_url, sanitize_message, scrub
from portshift.secrets import Secret, known_masks, read_secret_file, register_mask, secret_field, secret_from_env
from portshift.testing import renderings

from .conftest import make_canary

MASK = "**********"


class Model(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    token: Secret | None = secret_field(env="PORTSHIFT_TEST_TOKEN")
    name: str = "n"


def test_secret_is_masked_in_every_rendering(canary: str) -> None:
    s = Secret(canary, "token")
    renderings = [
        repr(s),
        str(s),
        f"{s}",
        f"{s!r}",
        f"{s!s}",
        f"{s:>40}",
        format(s, "s"),
        "%s %r" % (s, s),  # noqa: UP031 - the %-operator is what is tested
        "{} {!r} {:^50}".format(s, s, s),  # noqa: UP032 - str.format is what is tested
        repr([s, {"k": s}, (s,)]),
        str({"k": s}),
    ]
    for text in renderings:
        assert canary not in text, text
        assert MASK in text
    assert s.reveal() == canary
    assert bool(s) and len(s) == len(canary)
    assert not hasattr(s, "__dict__")  # no vars(s) to dump
    with pytest.raises(TypeError):
        json.dumps(s)


def test_secret_in_a_pydantic_model_is_masked_in_dumps_and_schema(canary: str) -> None:
    m = Model(token=Secret(canary, "token"))
    outputs = [
        repr(m),
        str(m),
        str(m.model_dump()),
        str(m.model_dump(mode="json")),
        m.model_dump_json(),
        m.model_dump_json(indent=2),
        json.dumps(Model.model_json_schema()),
        repr(m.model_copy()),
        repr(m.model_copy(deep=True)),
    ]
    for text in outputs:
        assert canary not in text, text
    assert m.model_dump()["token"] == MASK
    assert json.loads(m.model_dump_json())["token"] == MASK
    schema = Model.model_json_schema()["properties"]["token"]
    assert "password" in json.dumps(schema) and "writeOnly" in json.dumps(schema)
    assert m.model_copy(deep=True).token.reveal() == canary  # still usable after a copy


def test_a_plain_string_never_validates_as_a_secret(canary: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as e:
        Model(token=canary)  # type: ignore[arg-type]
    assert canary not in json.dumps(e.value.errors(include_input=False), default=str)

    class Opts(PluginOptions):
        section = "source"
        token: Secret | None = secret_field(env="PORTSHIFT_TEST_TOKEN_X")

    with pytest.raises(ConfigError) as ce:  # in a plugin's options: refused, value not shown
        Opts.model_validate({"token": canary})
    assert "never read from the job file" in str(ce.value)
    _assert_clean(ce.value, canary)


def test_pickle_refuses_a_secret_and_anything_holding_one(canary: str) -> None:
    s = Secret(canary)
    for obj in (s, [s], {"a": s}, Model(token=s)):
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError) as e:
                pickle.dumps(obj, protocol=proto)
            assert canary not in str(e.value)


def test_copy_and_deepcopy_do_not_leak_or_duplicate(canary: str) -> None:
    s = Secret(canary, "k")
    assert copy.copy(s) is s
    assert copy.deepcopy(s) is s
    assert copy.deepcopy({"x": [s]})["x"][0] is s
    assert canary not in repr(copy.deepcopy([s]))


def test_secret_refuses_non_strings() -> None:
    with pytest.raises(TypeError):
        Secret(b"bytes")  # type: ignore[arg-type]


def test_a_secret_is_masked_in_a_traceback_with_locals(canary: str) -> None:
    def boom(token: Secret) -> None:
        raise RuntimeError("failed")

    def run(secret: Secret) -> str:  # the traceback starts here: only Secret locals below
        try:
            boom(secret)
        except RuntimeError as e:
            return "".join(traceback.TracebackException.from_exception(e, capture_locals=True).format())
        raise AssertionError("unreachable")

    text = run(Secret(canary))
    assert "token = Secret(" in text and "secret = Secret(" in text
    assert canary not in text


# --- registered masks and the scrubber ---------------------------------------------------------
def _forms(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "raw": value,
        "quote(safe='')": urllib.parse.quote(value, safe=""),
        "quote_plus": urllib.parse.quote_plus(value),
        "json": json.dumps(value)[1:-1],
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


@pytest.mark.parametrize(
    "shape",
    ["plain", "with/slash+plus=eq", 'quote"back\\slash', "space and&amp", "ünïcødé", "tab\tnew\nline"],
)
def test_registered_masks_are_scrubbed_in_every_encoded_form(shape: str) -> None:
    value = make_canary() + shape
    register_mask(value)
    for name, form in _forms(value).items():
        text = f"prefix {form} suffix"
        out = scrub(text)
        assert form not in out, (name, out)
        assert REDACTED in out and out.startswith("prefix ") and out.endswith(" suffix"), (name, out)


def test_the_default_quote_form_of_a_secret_with_a_slash_is_scrubbed() -> None:
    # urllib.parse.quote's default keeps "/": the form a SAS signature or an AWS secret key takes
    # in a URL built with it (e.g. azure's url_quote), and what urllib3 then logs
    value = make_canary() + "/ab+cd=ef"
    Secret(value)
    form = urllib.parse.quote(value)
    assert form != urllib.parse.quote(value, safe="")
    assert form not in scrub(f"GET /c/b?sig={form} HTTP/1.1")


def test_secret_construction_registers_its_value_and_its_long_lines() -> None:
    pem_body = [make_canary("L1") + "A" * 20, make_canary("L2") + "B" * 20]
    value = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(pem_body) + "\n-----END PRIVATE KEY-----\n"
    Secret(value, "key")
    masks = known_masks()
    assert value in masks
    for line in pem_body:
        assert line in masks
        assert line not in scrub(f"a line of a key: {line} leaked")


def test_short_values_are_not_registered() -> None:
    before = known_masks()
    register_mask("abc")
    register_mask("")
    assert known_masks() == before
    assert scrub("abc") == "abc"


def test_scrub_prefers_the_longest_match(canary: str) -> None:
    register_mask(canary)
    register_mask(canary + "-longer")
    assert scrub(f"x {canary}-longer y") == f"x {REDACTED} y"


def test_redact_url_and_sanitize_message(canary: str) -> None:
    url = f"https://user:{canary}@host.example:8443/path/x?sig={canary}&a=b#frag{canary}"
    assert redact_url(url) == "https://host.example:8443/path/x"
    msg = sanitize_message(f"GET {url} failed\nsecond line " + "z" * 500)
    assert canary not in msg and "\n" not in msg and len(msg) <= 300
    register_mask(canary)
    assert canary not in sanitize_message(f"token {canary} rejected")


@pytest.mark.parametrize("netloc", ["host:99999", "host:abc", "[::1]:70000"])
def test_redact_url_never_raises_on_a_url_with_a_bad_port(netloc: str, canary: str) -> None:
    out = redact_url(f"https://{netloc}/p?sig={canary}")
    assert canary not in out


# --- secret files ---------------------------------------------------------------------------------
def _assert_clean(e: BaseException, content: str) -> None:
    texts = renderings(e)
    for t in texts:
        assert content not in t, t


def test_read_secret_file_returns_the_value_without_one_trailing_newline(tmp_path: Path, canary: str) -> None:
    f = tmp_path / "tok"
    f.write_text(canary + "\r\n")
    assert read_secret_file(f, "t") == canary
    f.write_text(canary + "\n\n")
    assert read_secret_file(f, "t") == canary + "\n"  # only one newline is stripped
    f.write_text(canary)
    assert read_secret_file(f, "t") == canary


def test_missing_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as e:
        read_secret_file(tmp_path / "nope", "[source] token_file")
    assert "[source] token_file" in str(e.value)


@pytest.mark.parametrize("content", ["", "\n", "   \n", "\r\n", " \t "])
def test_empty_secret_file(tmp_path: Path, content: str) -> None:
    f = tmp_path / "tok"
    f.write_text(content)
    with pytest.raises(ConfigError, match="is empty"):
        read_secret_file(f, "t")


def test_a_folder_or_a_non_utf8_file_never_shows_the_content(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        read_secret_file(tmp_path, "t")
    canary = make_canary()
    f = tmp_path / "latin1"
    f.write_bytes(canary.encode() + b"\xff\xfe" + canary.encode())
    with pytest.raises(ConfigError) as e:
        read_secret_file(f, "t")
    assert "UnicodeDecodeError" in str(e.value)
    _assert_clean(e.value, canary)


def test_an_unreadable_secret_file_names_the_problem_and_not_the_content(tmp_path: Path, canary: str) -> None:
    f = tmp_path / "tok"
    f.write_text(canary)
    f.chmod(0)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from portshift.secrets import read_secret_file\n"
        "from portshift.errors import ConfigError\n"
        "try:\n"
        "    read_secret_file(Path(sys.argv[1]), '[sink] key_file')\n"
        "except ConfigError as e:\n"
        "    import traceback; print('ERR', e); traceback.print_exc()\n"
        "else:\n"
        "    print('READ IT')\n"
    )
    cmd = [sys.executable, "-c", code, str(f)]
    if os.geteuid() == 0:
        # root reads anything: drop the capabilities that bypass permission bits
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        cmd = ["setpriv", "--inh-caps=-all", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert "ERR [sink] key_file: the secret file" in out and "not readable by this user" in out, out
    assert canary not in out


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch, canary: str) -> None:
    monkeypatch.setenv("PORTSHIFT_TEST_SECRET", canary)
    s = secret_from_env("PORTSHIFT_TEST_SECRET", "token")
    assert s is not None and s.reveal() == canary and canary not in repr(s)
    monkeypatch.setenv("PORTSHIFT_TEST_SECRET", "")
    assert secret_from_env("PORTSHIFT_TEST_SECRET", "token") is None
    monkeypatch.delenv("PORTSHIFT_TEST_SECRET")
    assert secret_from_env("PORTSHIFT_TEST_SECRET", "token") is None


def test_a_secret_logged_through_the_stdlib_stays_masked(canary: str, caplog: pytest.LogCaptureFixture) -> None:
    s = Secret(canary)
    with caplog.at_level(logging.INFO, logger="portshift.test"):
        logging.getLogger("portshift.test").info("token is %s (%r)", s, s, extra={"tok": s})
    assert canary not in caplog.text
    assert all(canary not in r.getMessage() for r in caplog.records)
