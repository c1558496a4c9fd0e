"""Object keys: whatever the source sends, a key is relative, made of safe segments, never '.'
or '..', and distinct ids give distinct keys. Bad templates are one clear ConfigError."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portshift.config import load_job
from portshift.errors import ConfigError
from portshift.keys import DEFAULT_TEMPLATE, FIELDS, assert_safe_key, build_key, check_template, safe_component

# fullmatch everywhere: "$" alone would accept a trailing newline
KEY = re.compile(r"[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*")
SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")

NASTY = [
    "",
    ".",
    "..",
    "...",
    "/",
    "//",
    "/etc/passwd",
    "../../etc/passwd",
    "a/../../b",
    "..\\..\\windows",
    "C:\\x",
    "\\\\server\\share",
    "a\rb",
    "a\nb",
    "line\r\n",
    "\x00",
    "nul\x00byte",
    "\x1b[31mred",
    "\u202egnp.exe",  # right-to-left override
    "\ud800",  # a lone surrogate (what json.loads('"\\ud800"') gives)
    "é",
    "e\u0301",  # the same letter, decomposed
    "日本語",
    "🎧",
    " ",
    "-",
    "~",
    "x" * 5000,
    "." * 300,
    "a" * 99 + "/",
    "%2e%2e%2f",
    "{id}",
    "CON",
]

any_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(exclude_categories=()), max_size=300),  # every code point, surrogates too
    st.text(alphabet="./\\\r\n\x00-_aZ9", max_size=40),
)
any_when = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.sampled_from([timezone.utc])),
)
TEMPLATES = [
    DEFAULT_TEMPLATE,
    "{id}/{artifact}",
    "{type}/{date}/{id}/{artifact}.{ext}",
    "{source}/{year}-{month}/{id}/{artifact}.{ext}",
    "exports/{date}/{id}/{artifact}-{type}.{ext}",
]


def _assert_safe(key: str) -> None:
    assert KEY.fullmatch(key), repr(key)
    for segment in key.split("/"):
        assert segment not in ("", ".", ".."), repr(key)
        assert SEGMENT.fullmatch(segment)
    assert not key.startswith("/") and "\\" not in key
    assert all(31 < ord(c) < 127 for c in key)


@settings(max_examples=300, deadline=None)
@given(rid=any_text, artifact=any_text, ext=any_text, kind=any_text, when=any_when, template=st.sampled_from(TEMPLATES))
@example(rid="..", artifact="..", ext="..", kind="..", when=None, template=DEFAULT_TEMPLATE)
@example(rid="/", artifact="\r\n", ext="\x00", kind="/", when=None, template=DEFAULT_TEMPLATE)
def test_keys_are_always_safe(rid: str, artifact: str, ext: str, kind: str, when: datetime | None, template: str) -> None:
    key = build_key(template, recording_id=rid, artifact=artifact, ext=ext, started_at=when, fields={"type": kind}, source="src")
    _assert_safe(key)
    assert len(key.encode()) < 1024  # within every object store's key limit


@settings(max_examples=300, deadline=None)
@given(value=any_text)
def test_safe_component_is_safe_bounded_and_leaves_safe_values_alone(value: str) -> None:
    out = safe_component(value)
    assert SEGMENT.fullmatch(out) and out not in (".", "..")
    assert not out.startswith(".")
    assert len(out) <= 100
    if re.fullmatch(r"[A-Za-z0-9._-]+", value) and not value.startswith(".") and len(value) <= 100:
        assert out == value  # ids that are already safe stay readable and stable


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(any_text, min_size=2, max_size=8, unique=True))
@example(ids=["a/b", "a_b", "a\\b", "a:b", "a b"])
@example(ids=[".a", "a", "a.", "..a.."])
@example(ids=["x" * 150, "x" * 151, "x" * 100])
@example(ids=["é", "e\u0301", "_"])
def test_distinct_ids_never_share_a_key(ids: list[str]) -> None:
    when = datetime(2024, 5, 6, tzinfo=timezone.utc)
    keys = [build_key(DEFAULT_TEMPLATE, recording_id=i, artifact="media", ext="mp3", started_at=when) for i in ids]
    assert len(set(keys)) == len(ids), dict(zip(ids, keys))


def test_a_sanitised_id_and_a_safe_id_that_spells_its_result_do_not_collide() -> None:
    """``a/b`` becomes ``a_b-<8 hex of sha256("a/b")>``; a source may also send that very string
    as an id (it is already safe). Two different recordings must not get the same key."""
    forged = "a_b-" + hashlib.sha256(b"a/b").hexdigest()[:8]
    assert safe_component("a/b") != safe_component(forged)


@pytest.mark.parametrize("key", ["a/b", "2024/01/01/r1/media.mp3", ".hidden/x", "a..b/c"])
def test_assert_safe_key_accepts_safe_keys(key: str) -> None:
    assert_safe_key(key)


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "../a", "a/./b", "a/..", "a b", "a\\b", "a\rb", "é"])
def test_assert_safe_key_refuses_unsafe_keys(key: str) -> None:
    with pytest.raises(ValueError):
        assert_safe_key(key)


@pytest.mark.parametrize("key", ["a\n", "a/b\n", "2024/01/01/r1/media.mp3\n"])
def test_assert_safe_key_refuses_a_trailing_newline(key: str) -> None:
    with pytest.raises(ValueError):
        assert_safe_key(key)


def test_dates_in_keys_are_utc() -> None:
    """docs/job-file.md: ``{date}`` is the recording's start date (UTC)."""
    when = datetime(2024, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 2024-01-02T04:30Z
    key = build_key("{date}/{year}/{month}/{day}/{id}/{artifact}", recording_id="r", artifact="a", ext="x", started_at=when)
    assert key.split("/")[:4] == ["2024-01-02", "2024", "01", "02"]


def test_undated_recordings_and_default_ext() -> None:
    key = build_key(DEFAULT_TEMPLATE, recording_id="r1", artifact="media", ext="", started_at=None)
    assert key == "undated/00/00/r1/media.bin"
    naive = build_key(DEFAULT_TEMPLATE, recording_id="r1", artifact="media", ext="mp3", started_at=datetime(2024, 3, 4, 5))
    assert naive == "2024/03/04/r1/media.mp3"


@pytest.mark.parametrize(
    "template, expect",
    [
        ("", "must be a relative path template"),
        ("/{id}/{artifact}", "must be a relative path template"),
        ("{id}/{title}", "unknown field {title}"),
        ("{id}/{artifact}/{participants}", "unknown field {participants}"),
        ("{id}/{artifact}/{0}", "unknown field {0}"),
        ("{id}/{artifact}/{}", "unknown field {}"),
        ("{id.__class__}/{artifact}", "unknown field"),
        ("{id[0]}/{artifact}", "unknown field"),
        ("{id!r}/{artifact}", "takes no format spec"),
        ("{id:>300}/{artifact}", "takes no format spec"),
        ("{artifact}.{ext}", "must contain {id}"),
        ("{id}.{ext}", "must contain {artifact}"),
        ("{id}/../{artifact}", "'..' path segment"),
        ("{id}/./{artifact}", "'.' or '..' path segment"),
        ("{id}//{artifact}", "empty"),
        ("{id}/{artifact}/", "empty"),
        ("{id} {artifact}", "characters outside"),
        ("{id}\\{artifact}", "characters outside"),
        ("{id}\n{artifact}", "characters outside"),
        ("~/{id}/{artifact}", "characters outside"),
        ("{id}/{{artifact}}/{artifact}", "characters outside"),
    ],
)
def test_bad_templates_are_one_clear_config_error(template: str, expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_template(template)
    assert expect in str(e.value)
    assert str(e.value).startswith("[job] key_template")
    # and through the job file, unchanged
    doc = {"job": {"key_template": template}, "source": {"type": "example"}, "sink": {"type": "local", "path": "/tmp/x"}}
    with pytest.raises(ConfigError) as e2:
        load_job(None, doc=doc)
    assert expect in str(e2.value)


@pytest.mark.parametrize("template", ["{id/{artifact}", "{id}/{artifact}}", "{id}/{artifact}{"])
def test_unbalanced_braces_are_a_config_error_through_the_job_file(template: str) -> None:
    doc = {"job": {"key_template": template}, "source": {"type": "example"}, "sink": {"type": "local", "path": "/tmp/x"}}
    with pytest.raises(ConfigError, match=r"\[job\] key_template"):
        load_job(None, doc=doc)


@pytest.mark.parametrize("template", ["{id/{artifact}", "{id}/{artifact}}", "{id}/{artifact}{"])
def test_unbalanced_braces_are_a_config_error_from_check_template(template: str) -> None:
    with pytest.raises(ConfigError, match=r"\[job\] key_template"):
        check_template(template)


@pytest.mark.parametrize("template", TEMPLATES + ["{id}/{artifact}", "a/b-c_d.e/{id}/{artifact}"])
def test_good_templates_pass(template: str) -> None:
    check_template(template)


def test_every_documented_field_is_accepted() -> None:
    check_template("/".join(f"{{{f}}}" for f in FIELDS))


@pytest.mark.parametrize("template", ["{id}{artifact}", "{id}-{artifact}.{ext}", "{id}_{artifact}", "{artifact}.{id}"])
def test_a_template_that_could_give_two_files_the_same_key_is_refused(template: str) -> None:
    """docs/job-file.md: {id} and {artifact} must be separated by a '/' "so that two files never
    share a key": joined any other way, ids like 'ab-c'+'d' and 'ab'+'c-d' would collide."""
    with pytest.raises(ConfigError, match="separate {id} and {artifact} with a '/'"):
        check_template(template)
