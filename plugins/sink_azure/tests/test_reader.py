"""The reader for `portshift verify --store`: same options as the sink under [store], a read + list
SAS, blobs streamed back in bounded, MD5-checked ranges through the hardened transport."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import portshift_sink_azure.reader as reader_module
import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ResourceTypes,
    generate_account_sas,
    generate_container_sas,
)
from portshift_sink_azure import AzureOptions, AzureReader, AzureSink

from portshift.config import build_options
from portshift.errors import AuthError, ConfigError, IntegrityError
from portshift.plugins import load_plugins, readers, sinks
from portshift.secrets import Secret
from portshift.testing import pattern_bytes

from .conftest import ACCOUNT, CONTAINER, KEY, OTHER_CONTAINER, Azurite, MiB, Recorder, unique

LOGGER = "portshift.sink.azure"
READ_CHUNK = reader_module.READ_CHUNK


def store(azurite: Azurite | None = None, sas: str | None = None, section: str = "store", **overrides: Any) -> AzureOptions:
    data: dict[str, Any] = {
        "account_url": azurite.url if azurite else "https://acct.blob.core.windows.net",
        "container": CONTAINER,
        "prefix": "readback",
        "request_retries": 0,
    }
    if azurite is not None:
        data["ca_bundle"] = str(azurite.ca)
    data["sas"] = Secret(sas if sas is not None else azurite.sas(permission="rl") if azurite else "", "sas")
    data.update(overrides)
    options = build_options(AzureOptions, data, section)
    assert isinstance(options, AzureOptions)
    return options


def container_sas(permission: str, container: str = CONTAINER, key: str = KEY) -> str:
    from azure.storage.blob import ContainerSasPermissions

    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=key,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=datetime.now(timezone.utc) + timedelta(hours=2),
        protocol="https",
    )


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def sig_of(token: str) -> str:
    return next(p for p in token.split("&") if p.startswith("sig=")).split("=", 1)[1]


@pytest.fixture
def make_reader(azurite: Azurite) -> Iterator[Callable[..., AzureReader]]:
    made: list[AzureReader] = []

    def factory(**overrides: Any) -> AzureReader:
        r = AzureReader(store(azurite, **overrides))
        made.append(r)
        return r

    yield factory
    for r in made:
        r.close()


def put_admin(admin: BlobServiceClient, name: str, data: bytes) -> None:
    admin.get_blob_client(CONTAINER, name).upload_blob(data, overwrite=True)


# --- registration and the SAS checks for reading ------------------------------------------------


def test_the_reader_is_registered_with_the_sinks_options() -> None:
    load_plugins()
    assert readers().get("azure") is AzureReader
    assert AzureReader.Options is sinks().get("azure").Options is AzureOptions


def test_read_list_sas_is_quiet_for_store_but_refused_for_sink(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = container_sas("rl")
    o = store(sas=token)
    assert o.role == "read" and warnings_of(caplog) == []
    with pytest.raises(ConfigError, match=r"\[sink\] sas: .*neither create"):
        store(sas=token, section="sink")


def test_write_sas_is_refused_for_store_naming_read_and_list() -> None:
    with pytest.raises(ConfigError, match=r"\[store\] sas: verification needs read \(r\), list \(l\)") as e:
        store(sas=container_sas("cw"))
    assert e.value.hint and "--permissions rl" in e.value.hint
    with pytest.raises(ConfigError, match=r"needs list \(l\).*unnoticed"):
        store(sas=container_sas("r"))
    with pytest.raises(ConfigError, match=r"needs read \(r\): it cannot read"):
        store(sas=container_sas("l"))


def test_store_sas_with_write_or_delete_warns_naming_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = container_sas("racwdl")
    store(sas=token)
    (msg,) = warnings_of(caplog)
    assert msg.startswith("[store] sas: the SAS can change the export it is meant to verify")
    for name in ("add (a)", "create (c)", "write (w)", "delete (d)"):
        assert name in msg
    assert "read (r)" not in msg and "list (l)" not in msg
    assert sig_of(token) not in caplog.text


def test_store_sas_other_checks() -> None:
    base = "sv=2025-11-05&se=2999-01-01T00:00:00Z&spr=https&sig=abcdefgh"
    with pytest.raises(ConfigError, match=r"\[store\] sas: this SAS is for a single blob.*verification"):
        store(sas=f"sr=b&sp=rl&{base}")
    # List Blobs is a container-level operation: an account SAS needs srt=c as well as o
    with pytest.raises(ConfigError, match=r"does not cover containers"):
        store(sas=f"ss=b&srt=o&sp=rl&{base}")
    store(sas=f"ss=b&srt=co&sp=rl&{base}")
    with pytest.raises(ConfigError, match=r"\[store\] sas: the SAS expired"):
        store(sas="sr=c&sp=rl&se=2001-01-01T00:00:00Z&spr=https&sig=abcdefgh")
    # a write-only binding (ses) does not matter to a reader; for the sink it must match
    store(sas=f"sr=c&sp=rl&ses=custkeys01&{base}")
    with pytest.raises(ConfigError, match="encryption scope"):
        store(sas=f"sr=c&sp=cw&ses=custkeys01&{base}", section="sink")


def test_account_sas_for_store(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True),
        datetime.now(timezone.utc) + timedelta(hours=2),
        protocol="https",
    )
    store(sas=token)
    (msg,) = warnings_of(caplog)
    assert "resource types verification never uses: service" in msg


def test_reader_from_sink_options_checks_and_warns_for_reading(azurite: Azurite, caplog: pytest.LogCaptureFixture) -> None:
    """Options built for [sink] (checked for writing) are checked again for reading by the reader."""
    caplog.set_level(logging.DEBUG)
    o = store(azurite, sas=azurite.sas(permission="rwl"), section="sink")
    caplog.clear()
    AzureReader(o).close()
    assert any("can change the export" in m and "write (w)" in m for m in warnings_of(caplog))
    with pytest.raises(ConfigError, match="verification needs read"):
        AzureReader(store(azurite, sas=azurite.sas(permission="cw"), section="sink"))


# --- against Azurite ------------------------------------------------------------------------------


def test_open_streams_bounded_md5_checked_ranges_lazily(
    make_reader: Callable[..., AzureReader], admin: BlobServiceClient
) -> None:
    reader = make_reader()
    key = unique("big.bin")
    data = pattern_bytes(2 * READ_CHUNK + 3 * MiB + 5, seed=11)
    put_admin(admin, f"readback/{key}", data)
    rec = Recorder(reader)  # type: ignore[arg-type]
    gets = lambda: [s for s in rec.sent if s.method == "GET"]  # noqa: E731

    it = reader.open(key)
    assert len(gets()) == 1, "open() makes the first request (a missing blob fails there)"
    first = next(it)
    assert len(first) == READ_CHUNK and len(gets()) == 1, "the next range is fetched only when needed"
    sizes = [len(first)]
    h = hashlib.sha256(first)
    for block in it:
        sizes.append(len(block))
        h.update(block)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert max(sizes) <= READ_CHUNK and sum(sizes) == len(data)
    assert len(gets()) == 3
    for g in gets():
        assert g.headers.get("x-ms-range-get-content-md5") == "true", "each range asks for its MD5"
        first_byte, last_byte = (int(x) for x in g.headers["x-ms-range"].split("=")[1].split("-"))
        assert last_byte - first_byte + 1 <= READ_CHUNK
    # the ranges after the first are bound to the first response's ETag
    assert all(g.headers.get("if-match") for g in gets()[1:])
    assert all("sig=" in g.url for g in gets())  # the credential policy signs each request ...
    assert "sig=" not in reader.location() and "sig=" not in reader._container.url  # ... never our URLs


def test_open_small_empty_and_missing(make_reader: Callable[..., AzureReader], admin: BlobServiceClient) -> None:
    reader = make_reader()
    small, empty = unique("small.json"), unique("empty.bin")
    put_admin(admin, f"readback/{small}", b'{"a": 1}')
    put_admin(admin, f"readback/{empty}", b"")
    assert b"".join(reader.open(small)) == b'{"a": 1}'
    assert b"".join(reader.open(empty)) == b""
    with pytest.raises(FileNotFoundError) as e:
        reader.open(unique("nothing.bin"))  # at once, not on the first next()
    assert "sig=" not in str(e.value)
    with pytest.raises(Exception, match="not blob name parts"):
        reader.open("a/../b")


def test_list_is_relative_to_the_prefix_paged_and_shows_committed_blobs_only(
    make_reader: Callable[..., AzureReader], admin: BlobServiceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "LIST_PAGE", 2)
    root = unique("root")
    names = [f"{root}/a.bin", f"{root}/x/y/b.json", f"{root}/c", f"{root}/d/e/f", f"{root}/g"]
    for n in names:
        put_admin(admin, f"readback/{n}", b"x")
    put_admin(admin, f"readback/{root}-sibling/h", b"x")  # same string prefix, other folder
    put_admin(admin, f"elsewhere/{root}/i", b"x")  # outside the configured prefix
    # staged but never committed: invisible, as a failed upload's blocks are
    admin.get_blob_client(CONTAINER, f"readback/{root}/uncommitted").stage_block("blk-000001", b"zz")
    reader = make_reader()
    rec = Recorder(reader)  # type: ignore[arg-type]
    assert sorted(reader.list(f"{root}/")) == sorted(names)
    assert len([s for s in rec.sent if "comp=list" in s.url]) == 3, "5 blobs at 2 per page"
    assert set(reader.list("")) >= set(names) | {f"{root}-sibling/h"}
    assert not any(k.startswith("elsewhere/") or k.startswith("readback/") for k in reader.list(""))


def test_prefixless_reader(make_reader: Callable[..., AzureReader], admin: BlobServiceClient) -> None:
    reader = make_reader(prefix="")
    key = unique("top.bin")
    put_admin(admin, key, b"top")
    assert reader.location() == reader.options.account_url + f"/{CONTAINER}"
    assert b"".join(reader.open(key)) == b"top"
    assert list(reader.list(key.split("/")[0] + "/")) == [key]


def test_sas_for_another_container_is_an_auth_error_without_the_token(
    make_reader: Callable[..., AzureReader], admin: BlobServiceClient, azurite: Azurite
) -> None:
    key = unique("secret.bin")
    put_admin(admin, f"readback/{key}", b"data")
    token = container_sas("rl", container=OTHER_CONTAINER)
    reader = make_reader(sas=token)
    for call in (lambda: reader.open(key), lambda: list(reader.list(""))):
        with pytest.raises(AuthError) as e:
            call()
        text = f"{e.value} {e.value!r} {e.value.hint}"
        assert e.value.status == 403
        assert sig_of(token) not in text and "sig=" not in text
        assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_range_damaged_in_transit_fails_loudly(make_reader: Callable[..., AzureReader], admin: BlobServiceClient) -> None:
    """The MD5 the service sends for each range is checked: damaged bytes are an error, not a 'differ'."""
    reader = make_reader()
    key = unique("damaged.bin")
    data = pattern_bytes(READ_CHUNK + 100, seed=5)
    put_admin(admin, f"readback/{key}", data)
    transport = reader._transport
    original = transport.send
    seen_md5: list[str] = []

    def send(request: Any, **kwargs: Any) -> Any:
        response = original(request, **kwargs)
        if request.method == "GET" and "bytes=4194304-" in request.headers.get("x-ms-range", ""):
            seen_md5.append(response.headers.get("Content-MD5", ""))
            raw = response.internal_response
            body = bytearray(raw.content)
            body[10] ^= 0x01
            raw._content = bytes(body)
        return response

    transport.send = send  # type: ignore[method-assign]
    it = reader.open(key)
    assert len(next(it)) == READ_CHUNK
    with pytest.raises(IntegrityError, match="MD5 of a range differs") as e:
        next(it)
    assert seen_md5 and seen_md5[0], "Azurite sent a Content-MD5 for the range"
    assert "sig=" not in str(e.value)


def test_check_probe_and_failed_uploads_leave_nothing_to_list(make_reader: Callable[..., AzureReader], azurite: Azurite) -> None:
    """`portshift check` stages an uncommitted probe block: a verifier never sees it as extra."""
    sink = AzureSink(store(azurite, sas=azurite.sas(), section="sink"))
    try:
        sink.check()
    finally:
        sink.close()
    reader = make_reader()
    assert not [k for k in reader.list("") if k.startswith(".portshift-check")]
