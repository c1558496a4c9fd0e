"""What the core gives every sink once: the size parser, the region allow-list, the content-type
check, logger pinning and the requests TLS adapter. Each sink's own tests show it in use."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trustme
from pydantic import BaseModel

import portshift
from portshift import (
    AllowedRegions,
    ConfigError,
    ResidencyError,
    Size,
    content_type_for,
    media_type,
    parse_size,
    pin_loggers,
    region_allowed,
    require_allowed,
)
from portshift.errors import ExitCode

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (16 * MiB, 16 * MiB),
        ("16777216", 16 * MiB),
        ("16M", 16 * MiB),
        ("16m", 16 * MiB),
        ("16MiB", 16 * MiB),
        ("16 MiB", 16 * MiB),
        ("8 MB", 8_000_000),
        ("256K", 256 * 1024),
        ("1G", 1024 * MiB),
        ("1.5MiB", 3 * MiB // 2),
        (" 4 kib ", 4096),
        (0, 0),
    ],
)
def test_every_accepted_size_form(given: Any, expected: int) -> None:
    assert parse_size(given) == expected


@pytest.mark.parametrize("bad", ["16X", "eight", "", "-1", "1.5B", "16 M B", True, 3.5, None, [16], -5])
def test_a_bad_size_is_one_config_error_line_naming_the_option(bad: Any) -> None:
    with pytest.raises(ConfigError) as e:
        parse_size(bad, "part_size")
    text = str(e.value)
    assert text.startswith("part_size: ") and "\n" not in text and '"16M"' in text
    assert e.value.exit_code == ExitCode.USAGE


def test_size_is_a_pydantic_type_raising_config_error() -> None:
    class Options(BaseModel):
        chunk: Size = 8 * MiB

    assert Options(chunk="16M").chunk == 16 * MiB and Options().chunk == 8 * MiB
    with pytest.raises(ConfigError, match=r"^chunk: '16 parsecs' is not a size"):
        Options(chunk="16 parsecs")
    schema = Options.model_json_schema()["properties"]["chunk"]
    assert {"type": "integer", "minimum": 0} in schema["anyOf"] and {"type": "string"} in schema["anyOf"]


@pytest.mark.parametrize(
    ("region", "patterns", "allowed"),
    [
        ("eu-west-1", ["eu-*"], True),
        ("EUROPE-WEST3", ["europe-*"], True),  # GCS reports upper case
        ("EU", ["eu"], True),
        ("eur4", ["EUR?"], True),
        ("us-east-1", ["eu-*", "us-west-?"], False),
        ("us-west-10", ["us-west-?"], False),
        ("westeurope", ["west[eu]*"], True),
    ],
)
def test_the_allow_list_is_case_insensitive_globs(region: str, patterns: list[str], allowed: bool) -> None:
    assert region_allowed(region, patterns) is allowed


def test_require_allowed_at_config_time_and_at_run_time() -> None:
    require_allowed("eu-west-1", None)  # no list: no restriction
    require_allowed("eu-west-1", ["eu-*"])
    with pytest.raises(ConfigError, match=r"region 'us-east-1' is not in allowed_regions \['eu-\*'\]"):
        require_allowed("us-east-1", ["eu-*"], config_time=True)
    with pytest.raises(ResidencyError) as e:
        require_allowed("US", ["eu", "europe-*"], what="the bucket's location", location="gs://b")
    assert e.value.exit_code == ExitCode.USAGE and not e.value.retryable and "nothing was sent" in str(e.value)
    assert isinstance(e.value, portshift.FatalError), "the pipeline stops the whole job on it"
    with pytest.raises(ResidencyError, match="did not say where"):
        require_allowed(None, ["eu-*"])  # a store that says nothing never passes


def test_allowed_regions_option_type() -> None:
    class Options(BaseModel):
        allowed_regions: AllowedRegions = None

    assert Options().allowed_regions is None
    assert Options(allowed_regions=[" eu-* "]).allowed_regions == ["eu-*"]
    for bad in ([], ["eu;west"], ["x" * 65]):
        with pytest.raises(ConfigError, match="allowed_regions"):
            Options(allowed_regions=bad)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("audio/mpeg", "audio/mpeg"),
        (" application/json; charset=utf-8 ", "application/json; charset=utf-8"),
        ('text/plain; name="a b"', 'text/plain; name="a b"'),
        ("text/plain\r\nX-Evil: 1", None),
        ("audio", None),
        ("a/" + "b" * 300, None),
        (None, None),
    ],
)
def test_media_type_accepts_only_rfc9110_media_types(given: str | None, expected: str | None) -> None:
    assert media_type(given) == expected


def test_content_type_falls_back_to_the_name_then_octet_stream(caplog: pytest.LogCaptureFixture) -> None:
    assert content_type_for("video/mp4", "x.json") == "video/mp4"
    assert content_type_for(None, "a/b.json") == "application/json"
    assert content_type_for("bad\nvalue", "a/b.json") == "application/json"
    assert "bad" not in caplog.text and "not a valid media type" in caplog.text
    assert content_type_for(None, "a/b.unknownext") == "application/octet-stream"


def test_pin_loggers_raises_lowered_levels_and_keeps_stricter_ones() -> None:
    names = ("pintest.sdk", "pintest.strict")
    logging.getLogger("pintest.strict").setLevel(logging.ERROR)
    child = logging.getLogger("pintree.deep.child")
    child.setLevel(logging.DEBUG)
    pin_loggers(names, trees=("pintree",))
    assert logging.getLogger("pintest.sdk").level == logging.WARNING
    assert logging.getLogger("pintest.strict").level == logging.ERROR
    assert child.level == logging.WARNING


def test_the_core_imports_requests_only_when_a_plugin_asks() -> None:
    code = "import sys, portshift; portshift.Size; portshift.pin_loggers; print('requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.fixture
def tls_server(tmp_path: Any) -> Iterator[tuple[int, trustme.CA]]:
    ca = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield port, ca
    listener.close()


def test_the_requests_session_trusts_ca_bundle_only_and_refuses_plain_http(
    tls_server: tuple[int, trustme.CA], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    from portshift import PlainHTTPRefused, https_requests_session, is_plain_http_refusal

    port, ca = tls_server
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pem))  # ignored: trust comes from ca_bundle only
    with pytest.raises(requests.exceptions.SSLError):
        https_requests_session().get(f"https://127.0.0.1:{port}/", timeout=10)
    session = https_requests_session(pem)
    assert session.get(f"https://127.0.0.1:{port}/", timeout=10).text == "ok"
    with pytest.raises(PlainHTTPRefused) as e:
        session.get("http" + f"://127.0.0.1:{port}/", timeout=10)
    assert is_plain_http_refusal(e.value) and not session.trust_env


def test_sink_plugins_import_only_the_public_surface() -> None:
    """Plugin code imports from ``portshift`` itself, never a submodule (docs/plugins.md)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = sorted(root.glob("plugins/sink_*/portshift_sink_*/*.py")) + [root / "portshift/default_plugins/local_sink.py"]
    assert len(files) > 20
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("portshift.")]
    assert offenders == []


def test_check_failure_classifies_what_a_failed_check_raises() -> None:
    from portshift import AuthError, FatalError, Interrupted, SinkError, check_failure

    config = ConfigError("[sink] bucket: gone")
    assert check_failure(config) is config
    stop = Interrupted("interrupted while waiting")
    assert check_failure(stop) is stop
    denied = check_failure(SinkError("AccessDenied", operation="check", status=403, location="s3://b", hint="grant it"))
    assert type(denied) is AuthError and str(denied) == "check: AccessDenied (HTTP 403) at s3://b (grant it)"
    down = check_failure(SinkError("could not connect", operation="check", location="s3://b", retryable=True))
    assert type(down) is FatalError and not down.retryable and str(down) == "check: could not connect at s3://b"
