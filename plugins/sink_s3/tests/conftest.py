"""Real servers for the S3 sink's tests, all on 127.0.0.1, all over TLS with a throw-away CA.

- ``moto``: moto in server mode over HTTPS (``-c/-k`` with a trustme certificate), one per session.
- ``tls_proxy``: a small TLS-terminating proxy in front of moto whose ``rule`` can see, count,
  alter or answer each HTTP request (used where moto cannot show a behaviour: it never verifies
  checksums and never answers with a region redirect).
- ``plain_listener``: a plain TCP listener that counts connections (must stay at 0).

Nothing here reads SSL_CERT_FILE, REQUESTS_CA_BUNDLE or AWS_CA_BUNDLE: the CA is always passed
explicitly, and the tests that set those variables set them to hostile values on purpose.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import trustme
from botocore.config import Config

from portshift.testing import LocalCA, PlainListener, clean_env, free_port, stop_process

ACCESS_KEY = "AKIACANARYAK0000001"
SECRET_KEY = "CANARYSECRETKEY/abc123+xyz"
SESSION_TOKEN = "CANARYSESSIONTOKEN999"
PART = 5 * 1024 * 1024

#: the types of the fixtures below, for the tests' signatures
MakeSink = Callable[..., Any]
ReadObj = Callable[[str], bytes | None]
Pending = Callable[[], list[Any]]
Canaries = tuple[str, str, str]


@dataclass
class Certs:
    dir: Path
    ca: trustme.CA
    ca_pem: Path
    server_pem: Path
    server_key: Path
    other_ca_pem: Path  # a second, unrelated CA ("hostile" trust)

    def server_context(self, **kwargs: Any) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_pem, self.server_key)
        for k, v in kwargs.items():
            setattr(ctx, k, v)
        return ctx


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    local = LocalCA.create(tmp_path_factory.mktemp("certs"))
    return Certs(local.dir, local.ca, local.ca_pem, local.cert_pem, local.key_pem, local.other_ca_pem())


@dataclass
class Moto:
    url: str
    port: int
    proc: subprocess.Popen[bytes]


def _wait_https(port: int, ca: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto exited with {proc.returncode}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
            ):
                s.sendall(b"GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1."):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto did not start in time")


@pytest.fixture(scope="session")
def moto(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from moto.server import main; main()",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            str(certs.server_pem),
            "-k",
            str(certs.server_key),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        _wait_https(port, certs.ca_pem, proc)
        yield Moto(f"https://127.0.0.1:{port}", port, proc)
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def admin(moto: Moto, certs: Certs) -> Any:
    """A plain boto3 client for the tests themselves (they may list, head and get)."""
    return boto3.client(
        "s3",
        endpoint_url=moto.url,
        region_name="us-east-1",
        verify=str(certs.ca_pem),
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def bucket(admin: Any) -> str:
    """A fresh, empty bucket per test (so "no pending multipart upload" means this test's)."""
    name = f"pt-{uuid.uuid4().hex[:16]}"
    admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def creds_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTSHIFT_AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("PORTSHIFT_AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("PORTSHIFT_AWS_SESSION_TOKEN", SESSION_TOKEN)


@pytest.fixture
def make_options(moto: Moto, certs: Certs, bucket: str, creds_env: None) -> Callable[..., Any]:
    from portshift_sink_s3 import S3Options

    from portshift.config import build_options

    def make(**overrides: Any) -> Any:
        """Options validated the way the core reads a job file's [sink] section."""
        values: dict[str, Any] = {
            "bucket": bucket,
            "region": "us-east-1",
            "endpoint_url": moto.url,
            "ca_bundle": str(certs.ca_pem),
            "addressing_style": "path",
            "part_size": PART,
        }
        values.update(overrides)
        return build_options(S3Options, {k: v for k, v in values.items() if v is not None}, "sink")

    return make


@pytest.fixture
def make_sink(make_options: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    from portshift_sink_s3 import S3Sink

    made: list[Any] = []

    def make(**overrides: Any) -> Any:
        sink = S3Sink(make_options(**overrides))
        made.append(sink)
        return sink

    yield make
    for s in made:
        s.close()


def read_object(admin: Any, bucket: str, key: str) -> bytes | None:
    try:
        return admin.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
    except admin.exceptions.NoSuchKey:
        return None


def pending_uploads(admin: Any, bucket: str) -> list[dict[str, Any]]:
    return admin.list_multipart_uploads(Bucket=bucket).get("Uploads", [])  # type: ignore[no-any-return]


# --- a TLS-terminating proxy that can see, alter or answer requests ---------------------------------


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: dict[str, str]
    body_len: int = 0


@dataclass
class Action:
    """What the proxy does with one request (defaults: forward it unchanged)."""

    drop_headers: tuple[str, ...] = ()
    set_headers: dict[str, str] = field(default_factory=dict)
    flip_body_byte: int | None = None  # XOR 0x01 into this offset of the body
    respond: bytes | None = None  # answer with these raw bytes instead of forwarding, then close
    close: bool = False  # drop the client connection instead of forwarding


def s3_error_response(status: int, reason: str, code: str, extra_xml: str = "", headers: dict[str, str] | None = None) -> bytes:
    """Raw bytes of an S3-style XML error response (for TLSProxy's ``respond``)."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code} from the test'
        f"</Message>{extra_xml}<RequestId>T1</RequestId></Error>"
    ).encode()
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return (head + "Connection: close\r\n\r\n").encode() + body


class TLSProxy:
    """127.0.0.1 TLS listener -> moto over TLS. ``rule(req) -> Action | None`` decides per request."""

    Action = Action
    error_response = staticmethod(s3_error_response)

    def __init__(self, certs: Certs, upstream_port: int) -> None:
        self.certs = certs
        self.upstream_port = upstream_port
        self.rule: Callable[[SeenRequest], Action | None] = lambda req: None
        self.seen: list[SeenRequest] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server_ctx = certs.server_context()
        self._client_ctx = ssl.create_default_context(cafile=str(certs.ca_pem))
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        # One thread per connection, strictly request -> response: an SSL socket is never read
        # and written by two threads at once.
        try:
            client = self._server_ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        up: ssl.SSLSocket | None = None
        try:
            up = self._client_ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", self.upstream_port)), server_hostname="127.0.0.1"
            )
            reader = client.makefile("rb")
            up_reader = up.makefile("rb")
            while True:
                head = self._read_head(reader)
                if head is None:
                    return
                request_line, headers = head
                method, target, _ = request_line.split(" ", 2)
                req = SeenRequest(method, target, headers)
                action = self.rule(req) or Action()
                with self._lock:
                    self.seen.append(req)
                expects = [k for k in headers if k.lower() == "expect"]
                length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
                if action.close:
                    return
                if action.respond is not None:
                    if not expects:
                        reader.read(length)  # the client sends its body without waiting: take it first
                    client.sendall(action.respond)
                    return
                if expects:  # answer "100 Continue" here and forward the request without Expect
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    for k in expects:
                        del headers[k]
                body = bytearray(reader.read(length)) if length else bytearray()
                req.body_len = len(body)
                if action.flip_body_byte is not None and action.flip_body_byte < len(body):
                    body[action.flip_body_byte] ^= 0x01
                for name in action.drop_headers:
                    for k in [k for k in headers if k.lower() == name.lower()]:
                        del headers[k]
                headers.update(action.set_headers)
                out = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                up.sendall(out.encode("latin-1") + bytes(body))
                if not self._relay_response(up_reader, client, method):
                    return
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                client.close()
            if up is not None:
                with contextlib.suppress(OSError):
                    up.close()

    def _relay_response(self, up_reader: Any, client: ssl.SSLSocket, method: str) -> bool:
        """Copy one response (skipping interim 1xx ones); False when the connection must close."""
        while True:
            head = self._read_head(up_reader)
            if head is None:
                return False
            status_line, headers = head
            status = int(status_line.split(" ", 2)[1])
            out = status_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            if 100 <= status < 200:
                continue  # our own 100 Continue went out already
            client.sendall(out.encode("latin-1"))
            lower = {k.lower(): v for k, v in headers.items()}
            if method == "HEAD" or status in (204, 304):
                pass
            elif "content-length" in lower:
                remaining = int(lower["content-length"])
                while remaining:
                    data = up_reader.read(min(remaining, 65536))
                    if not data:
                        return False
                    client.sendall(data)
                    remaining -= len(data)
            elif "chunked" in lower.get("transfer-encoding", "").lower():
                while True:
                    size_line = up_reader.readline()
                    client.sendall(size_line)
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    chunk = up_reader.read(size + 2)
                    client.sendall(chunk)
                    if size == 0:
                        break
            else:
                client.sendall(up_reader.read())
                return False
            return "close" not in lower.get("connection", "").lower()

    @staticmethod
    def _read_head(reader: Any) -> tuple[str, dict[str, str]] | None:
        line = reader.readline()
        if not line:
            return None
        first = line.decode("latin-1").rstrip("\r\n")
        headers: dict[str, str] = {}
        while True:
            h = reader.readline().decode("latin-1").rstrip("\r\n")
            if not h:
                break
            k, _, v = h.partition(":")
            headers[k.strip()] = v.strip()
        return first, headers


@pytest.fixture
def tls_proxy(certs: Certs, moto: Moto) -> Iterator[TLSProxy]:
    proxy = TLSProxy(certs, moto.port)
    yield proxy
    proxy.close()


@pytest.fixture
def plain_listener() -> Iterator[PlainListener]:
    with PlainListener() as listener:
        yield listener


@pytest.fixture
def read_obj(admin: Any, bucket: str) -> Callable[[str], bytes | None]:
    """Bytes stored under the full key in this test's bucket, or None."""
    return lambda key: read_object(admin, bucket, key)


@pytest.fixture
def pending(admin: Any, bucket: str) -> Callable[[], list[dict[str, Any]]]:
    """Multipart uploads still open in this test's bucket."""
    return lambda: pending_uploads(admin, bucket)


def run_env(canaries: tuple[str, str, str]) -> dict[str, str]:
    """The environment of a ``portshift run`` subprocess: the canary credentials, no ``AWS_*``
    variable, and only the S3 plugin loaded."""
    return clean_env(
        drop=("AWS_", "PORTSHIFT_"),
        PORTSHIFT_AWS_ACCESS_KEY_ID=canaries[0],
        PORTSHIFT_AWS_SECRET_ACCESS_KEY=canaries[1],
        PORTSHIFT_AWS_SESSION_TOKEN=canaries[2],
        PORTSHIFT_LOAD_PLUGINS="portshift-sink-s3",
    )


@pytest.fixture
def canaries() -> tuple[str, str, str]:
    return ACCESS_KEY, SECRET_KEY, SESSION_TOKEN
