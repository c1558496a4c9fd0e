"""Fixtures: Azurite (npm, pinned) over HTTPS on loopback with a throw-away trustme CA.

Azurite is installed by ../setup.sh into <repo>/.tools/azurite (run here if missing), started
once per session on a free 127.0.0.1 port with --inMemoryPersistence, and stopped by its PID.
The CA, the small TLS server and the plain listener of the negative tests are the kit's.
The sink gets a container SAS (create+write, https only) generated with Azurite's public dev
account key; the tests read back with the account key.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from portshift_sink_azure import AzureOptions, AzureSink

from portshift.secrets import Secret
from portshift.testing import LocalCA, PlainListener, TLSServer, free_port, stop_process, wait_port

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent
REPO = PLUGIN.parents[1]
ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "exports"
OTHER_CONTAINER = "elsewhere"
MiB = 1024 * 1024


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
    ca: Path  #: the certificate of the throw-away CA that signed the server certificate
    certdir: Path

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
def certs(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA.create(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def azurite(certs: LocalCA) -> Iterator[Azurite]:
    d = certs.dir
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
            str(certs.cert_pem),
            "--key",
            str(certs.key_pem),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc, what="Azurite", log=d / "azurite.log", timeout=60)
        server = Azurite(url=f"https://127.0.0.1:{port}/{ACCOUNT}", port=port, ca=certs.ca_pem, certdir=d)
        admin = server.admin()
        admin.create_container(CONTAINER)
        admin.create_container(OTHER_CONTAINER)
        admin.close()
        yield server
    finally:
        stop_process(proc)
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


# --- small loopback servers for negative TLS tests: the kit's (portshift.testing) ------------


@pytest.fixture
def plain_listener() -> Iterator[PlainListener]:
    with PlainListener() as listener:
        yield listener


__all__ = ["PlainListener", "TLSServer"]  # imported from here by the test modules
