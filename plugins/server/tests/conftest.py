"""Fixtures: a throw-away CA and server certificate (the kit's LocalCA), a test-only plugin distribution with credentials
(the ``canary`` source and the ``canarylocal`` sink), and `portshift serve` started as a real
subprocess over HTTPS on a free loopback port."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import resource
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from portshift_source_chorus.simulator import ChorusSimulator, Tenant, TenantSpec

from portshift.testing import LocalCA, free_port

from .canary_plugin import CANARY_PLUGIN


@dataclass
class Certs:
    ca: trustme.CA
    ca_pem: Path
    cert: Path
    key: Path

    def client_context(self, **versions: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))  # cafile given: no SSL_CERT_FILE
        for attr, value in versions.items():
            setattr(ctx, attr, value)
        return ctx


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs two workers), every test of the service runs in one
    worker: the sandbox tests open the folders above the checkout to the job uids for the session
    and restore them after, which another worker's session must not undo under them."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.xdist_group("portshift-server"))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    local = LocalCA.create(tmp_path_factory.mktemp("certs"))
    return Certs(local.ca, local.ca_pem, local.cert_pem, local.key_pem)


def _traversable_for_everyone(paths: list[Path]) -> list[tuple[Path, int]]:
    """Give "others" the right to pass through (x, never r) every folder above ``paths`` that
    lacks it, so the job uids of the sandbox can reach this checkout and its venv wherever it was
    cloned (``mktemp -d`` makes 0700 folders); returns what to restore."""
    changed: list[tuple[Path, int]] = []
    seen: set[Path] = set()
    for path in paths:
        for folder in [path, *path.parents]:
            if folder in seen or not folder.is_dir():
                continue
            seen.add(folder)
            mode = folder.stat().st_mode & 0o7777
            if not mode & 0o001:
                os.chmod(folder, mode | 0o001)
                changed.append((folder, mode))
    return changed


@pytest.fixture(scope="session")
def worker_python() -> Iterator[Path]:
    """A Python every user may run, with this venv's packages: the venv's own base interpreter
    may sit in a folder other users cannot enter (/root), where a job's uid could not start it.
    The system interpreter of the same version, in a venv of its own that adds this venv's
    site-packages (editable installs included)."""
    base = Path(tempfile.mkdtemp(prefix="portshift-worker-python-"))
    os.chmod(base, 0o755)
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.fail(f"{system} is needed to run workers under other uids")
    site = base / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    site.mkdir(parents=True)
    (base / "bin").mkdir()
    (base / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    (base / "bin" / "python").symlink_to(system)
    real = next(p for p in map(Path, sys.path) if p.name == "site-packages" and str(p).startswith(sys.prefix))
    (site / "real.pth").write_text(f"import site; site.addsitedir({str(real)!r})\n")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    here = Path(__file__).resolve()
    changed = _traversable_for_everyone([Path(sys.prefix).resolve(), real.resolve(), here.parents[3], here.parent])
    try:
        yield base / "bin" / "python"
    finally:
        for folder, mode in reversed(changed):
            os.chmod(folder, mode)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real installed distribution (dist-info with an entry point) on PYTHONPATH."""
    d = tmp_path_factory.mktemp("canary-plugin")
    (d / "portshift_canary_test.py").write_text(textwrap.dedent(CANARY_PLUGIN))
    info = d / "portshift_canary_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: portshift-canary-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[portshift]\ncanary_test = portshift_canary_test\n")
    return d


SERVICE_CONFIG = """
sources = ["chorus", "canary", "example"]
sinks = ["local", "canarylocal", "s3"]

[source.chorus.fixed]
base_url = "{chorus_url}"
ca_bundle = "{chorus_ca}"
requests_per_second = 0
backoff_base = 0.01
backoff_cap = 0.1
window_days = 31

[source.canary]
label = "Canary (tests)"
fields = {{ count = "integer", media_size = "integer", delay = "number", seed = "integer" }}
secrets = {{ token = true }}

[source.example]
fields = {{ count = "integer", media_size = "integer" }}

[sink.canarylocal]
fields = {{}}
secrets = {{ key = true }}
[sink.canarylocal.fixed]
path = "{canary_out}"
"""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    certs: Certs
    data_dir: Path
    local_root: Path
    canary_out: Path
    stdout: Path
    stderr: Path
    secret: bytes
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kw: Any) -> httpx.Client:
        c = httpx.Client(base_url=self.url, verify=self.certs.client_context(), trust_env=False, timeout=30, **kw)
        self.clients.append(c)
        return c

    def workers(self) -> list[int]:
        """Process ids of this server's running workers."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.pid and b"run" in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
        return out

    def work_dir(self, job_id: str) -> Path:
        """The job's work folder: named by a keyed hash of its id (the key beside the folders)."""
        key = (self.data_dir / "jobs" / ".names.key").read_bytes()
        return self.data_dir / "jobs" / hmac.new(key, job_id.encode(), hashlib.sha256).hexdigest()[:32]

    def worker_of(self, job_id: str, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in self.workers():
                try:
                    if str(self.work_dir(job_id)).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        return pid
                except OSError:
                    continue
            time.sleep(0.05)
        raise AssertionError(f"no worker for job {job_id}")

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def signing_key(root: Path) -> Path:
    """An Ed25519 manifest signing key (PEM, mode 0600) for the service's jobs."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    path = root / "manifest-signing.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return path


def start_server(
    certs: Certs,
    plugin_path: Path,
    chorus: ChorusSimulator,
    root: Path,
    *extra: str,
    secret: bytes | None = None,
    config_text: str = SERVICE_CONFIG,
    nofile: int | None = None,
    env_extra: dict[str, str] | None = None,
    launcher: tuple[str, ...] = ("--launcher", "unisolated"),
) -> Server:
    """``nofile``: the server's file limit (soft and hard), to show what a low limit does.
    ``launcher``: the options choosing it (the sandbox's tests pass ``--launcher sandbox``)."""
    data_dir, local_root, canary_out = root / "data", root / "exports", root / "canary-exports"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "service.toml"
    config.write_text(config_text.format(canary_out=canary_out, chorus_url=chorus.base_url, chorus_ca=chorus.ca_path))
    secret = secret or secrets.token_hex(32).encode()
    secret_file = root / "server-secret"
    secret_file.write_bytes(secret)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PORTSHIFT_LOAD_PLUGINS"] = "portshift-server,portshift-canary-test,portshift-source-chorus"
    env.update(env_extra or {})

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    for _ in range(5):
        port = free_port()
        stdout, stderr = root / f"server-{port}.out", root / f"server-{port}.err"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "portshift",
                    "--log-format",
                    "json",
                    "serve",
                    "--cert",
                    str(certs.cert),
                    "--key",
                    str(certs.key),
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data_dir),
                    "--local-root",
                    str(local_root),
                    "--service-config",
                    str(config),
                    "--secret-file",
                    str(secret_file),
                    *launcher,
                    *extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                preexec_fn=limit_files if nofile is not None else None,  # noqa: PLW1509 - setrlimit only
            )
        server = Server(proc, port, certs, data_dir, local_root, canary_out, stdout, stderr, secret)
        deadline = time.monotonic() + 30
        with httpx.Client(verify=certs.client_context(), trust_env=False, timeout=2) as c:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if c.get(f"{server.url}/api/health").status_code == 200:
                        return server
                except httpx.TransportError:
                    time.sleep(0.1)
        server.stop()
        if b"address already in use" not in stderr.read_bytes().lower():
            raise AssertionError("the server did not start:\n" + stderr.read_text()[-3000:])
    raise AssertionError("no free port")


ServerStarter = Callable[..., Server]


@pytest.fixture(scope="module")
def module_server(
    certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerStarter]:
    """``module_server(name, *args, **options)`` starts a server of the module's own, as
    :func:`start_server` does, in a new folder named ``name``; each is stopped once the module's
    tests are done."""
    started: list[Server] = []

    def start(name: str, *extra: str, **options: Any) -> Server:
        started.append(start_server(certs, plugin_path, chorus, tmp_path_factory.mktemp(name), *extra, **options))
        return started[-1]

    yield start
    for s in started:
        s.stop()


CHORUS_TOKEN = "canary-chorus-" + secrets.token_hex(8) + "/+="
CHORUS_WINDOW = {"since": "2024-01-01", "until": "2024-04-01"}


@pytest.fixture(scope="session")
def chorus() -> Iterator[ChorusSimulator]:
    """The Chorus simulator (from portshift-source-chorus), HTTPS on loopback, a canary token."""
    tenant = Tenant(TenantSpec(calls=10, seed=5, media_size=(1_000, 60_000)))
    with ChorusSimulator(tenant, token=CHORUS_TOKEN) as sim:
        yield sim


@pytest.fixture(scope="session")
def server(
    certs: Certs, plugin_path: Path, chorus: ChorusSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("service")
    s = start_server(
        certs,
        plugin_path,
        chorus,
        root,
        "--signing-key-file",
        str(signing_key(root)),
        "--max-jobs",
        "6",
        "--max-jobs-per-client",
        "6",
        "--transfers",
        "2",
        "--cancel-grace",
        "10",
        "--rate-jobs",
        "1000/60",
        "--rate-signups",
        "1000/60",
    )
    yield s
    s.stop()


def canary_value(label: str) -> str:
    # characters that URL-encoding, JSON and base64 all change
    return f'canary-{label}-{secrets.token_hex(8)}/+= "x\\y'


def encoded_forms(value: str) -> set[bytes]:
    """The value as text (raw, JSON-escaped, URL-encoded) and each of those as hex and as base64
    at every alignment inside a longer text."""
    texts = set()
    for text in (value, json.dumps(value)[1:-1]):
        texts |= {
            text.encode(),
            urllib.parse.quote(text, safe="").encode(),
            urllib.parse.quote(text).encode(),
            urllib.parse.quote_plus(text).encode(),
            urllib.parse.quote_plus(text, safe="/").encode(),
        }
    forms = set(texts)
    for raw in texts:
        forms.add(binascii.hexlify(raw))
        for pad in range(3):
            for enc in (base64.b64encode, base64.urlsafe_b64encode):
                text = enc(b"\0" * pad + raw)
                first, last = (1 if pad else 0), (pad + len(raw)) // 3  # the 3-byte groups of value bytes only
                forms.add(text[4 * first : 4 * last])
    return {f for f in forms if len(f) >= 12}


def find_canary(data: bytes, values: list[str]) -> list[str]:
    hits = []
    for v in values:
        for form in encoded_forms(v):
            if form in data:
                hits.append(f"{v[:14]}… as {form[:20]!r}")
    return hits


def wait_status(client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = client.get(f"/api/jobs/{job_id}").json()
        if doc["status"] in statuses:
            return doc
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {doc.get('status')} after {timeout}s: {doc}")


def canary_job(token: str, count: int = 4, delay: float = 0.0, **source: Any) -> dict[str, Any]:
    return {
        "source": {"type": "canary", "token": token, "count": count, "media_size": 40_000, "delay": delay, **source},
        "sink": {"type": "local"},
    }


def start_job(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/api/jobs", json=body)
    assert resp.status_code == 201, (resp.status_code, resp.text)
    return resp.json()
