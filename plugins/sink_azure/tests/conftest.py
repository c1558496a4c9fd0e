"""Fixtures: Azurite (npm, pinned) over HTTPS on loopback with a throw-away trustme CA.

Azurite is installed by ../setup.sh into <repo>/.tools/azurite (run here if missing), started
once per session on a free 127.0.0.1 port with --inMemoryPersistence, and stopped by its PID.
The sink gets a container SAS (create+write, https only) generated with Azurite's public dev
account key; the tests read back with the account key.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trustme
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from portshift_sink_azure import AzureOptions, AzureSink

from portshift.secrets import Secret

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent
REPO = PLUGIN.parents[1]
ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "exports"
OTHER_CONTAINER = "elsewhere"
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def azurite_entry() -> Path:
    tools = Path(os.environ.get("PORTSHIFT_TOOLS_DIR", REPO / ".tools"))
    link = tools / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if not link.exists():
        subprocess.run(["bash", str(PLUGIN / "setup.sh")], check=True, timeout=600)
    return link.resolve()


@dataclass
class Azurite:
    url: str  #: account URL, https://127.0.0.1:<port>/devstoreaccount1
    port: int
    ca: Path  #: the trustme CA that signed the server certificate
    certdir: Path
    ca_obj: trustme.CA = field(repr=False)

    def admin(self, **kwargs: Any) -> BlobServiceClient:
        return BlobServiceClient(
            self.url,
            credential={"account_name": ACCOUNT, "account_key": KEY},
            connection_verify=str(self.ca),
            retry_total=1,
            initial_backoff=1,
            **kwargs,
        )

    def sas(
        self,
        container: str = CONTAINER,
        *,
        permission: str = "cw",
        https_only: bool = True,
        expiry: timedelta = timedelta(hours=2),
    ) -> str:
        return generate_container_sas(
            ACCOUNT,
            container,
            account_key=KEY,
            permission=ContainerSasPermissions.from_string(permission),
            expiry=datetime.now(timezone.utc) + expiry,
            protocol="https" if https_only else None,
        )


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(d / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    return ca, d


@pytest.fixture(scope="session")
def azurite(certs: tuple[trustme.CA, Path]) -> Iterator[Azurite]:
    ca, d = certs
    entry = azurite_entry()
    port = free_port()
    log = open(d / "azurite.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            "node",
            str(entry),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--cert",
            str(d / "server.pem"),
            "--key",
            str(d / "server.key"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with {proc.returncode}: {(d / 'azurite.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("Azurite did not start within 60 s") from None
                time.sleep(0.1)
        server = Azurite(url=f"https://127.0.0.1:{port}/{ACCOUNT}", port=port, ca=d / "ca.pem", certdir=d, ca_obj=ca)
        admin = server.admin()
        admin.create_container(CONTAINER)
        admin.create_container(OTHER_CONTAINER)
        admin.close()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def admin(azurite: Azurite) -> Iterator[BlobServiceClient]:
    client = azurite.admin()
    yield client
    client.close()


def make_options(azurite: Azurite, **overrides: Any) -> AzureOptions:
    data: dict[str, Any] = {
        "account_url": azurite.url,
        "container": CONTAINER,
        "prefix": "tests",
        "block_size": MiB,
        "ca_bundle": str(azurite.ca),
        "request_retries": 0,
        "sas": Secret(azurite.sas(), "sas"),
    }
    data.update(overrides)
    return AzureOptions.model_validate(data)


@pytest.fixture
def make_sink(azurite: Azurite) -> Iterator[Callable[..., AzureSink]]:
    made: list[AzureSink] = []

    def factory(**overrides: Any) -> AzureSink:
        sink = AzureSink(make_options(azurite, **overrides))
        made.append(sink)
        return sink

    yield factory
    for s in made:
        s.close()


@pytest.fixture
def sink(make_sink: Callable[..., AzureSink]) -> AzureSink:
    return make_sink()


def download(admin: BlobServiceClient, name: str, container: str = CONTAINER) -> bytes | None:
    try:
        return admin.get_blob_client(container, name).download_blob().readall()
    except ResourceNotFoundError:
        return None


@pytest.fixture
def read_back(admin: BlobServiceClient, sink: AzureSink) -> Callable[[str], bytes | None]:
    return lambda key: download(admin, sink.blob_name(key))


def unique(name: str = "blob") -> str:
    return f"{uuid.uuid4().hex[:10]}/{name}"


def md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


class Recorder:
    """Wraps the sink's azure-core transport to see each request as it goes on the wire."""

    def __init__(self, sink: AzureSink, on_send: Callable[[Sent], None] | None = None) -> None:
        self.sent: list[Sent] = []
        transport = sink._transport
        original = transport.send
        lock = threading.Lock()

        def send(request: Any, **kwargs: Any) -> Any:
            body = request.data if isinstance(request.data, (bytes, bytearray)) else None
            item = Sent(
                request.method,
                request.url,
                {k.lower(): v for k, v in request.headers.items()},
                bytes(body) if body is not None else None,
            )
            with lock:
                self.sent.append(item)
            if on_send:
                on_send(item)
            return original(request, **kwargs)

        transport.send = send  # type: ignore[method-assign]

    def ops(self, comp: str | None) -> list[Sent]:
        out = []
        for s in self.sent:
            query = s.url.split("?", 1)[1] if "?" in s.url else ""
            has = f"comp={comp}" in query.split("&") if comp else "comp=" not in query
            if s.method == "PUT" and has:
                out.append(s)
        return out


# --- small loopback servers for negative TLS tests --------------------------------------------


class PlainListener:
    """A plain TCP listener that counts connections (and closes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


@pytest.fixture
def plain_listener() -> Iterator[PlainListener]:
    listener = PlainListener()
    yield listener
    listener.close()


class TLSServer:
    """A minimal TLS server on loopback: ``respond(request_bytes) -> response bytes``."""

    def __init__(self, context: ssl.SSLContext, respond: Callable[[bytes], bytes]) -> None:
        self.context = context
        self.respond = respond
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.handshakes = 0
        self.failed_handshakes = 0
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(5)
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                self.failed_handshakes += 1
                conn.close()
                continue
            self.handshakes += 1
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = tls.recv(65536)
                    if not piece:
                        break
                    data += piece
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(rest) < length:
                    piece = tls.recv(65536)
                    if not piece:
                        break
                    rest += piece
                if not head:
                    continue
                self.requests.append(head)
                tls.sendall(self.respond(head))
            except (ssl.SSLError, OSError):
                pass
            finally:
                tls.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


def server_context(ca: trustme.CA, *hosts: str, tls11_only: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if tls11_only:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    ca.issue_cert(*(hosts or ("127.0.0.1", "localhost"))).configure_cert(ctx)
    return ctx
