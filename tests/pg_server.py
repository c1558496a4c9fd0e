"""A real PostgreSQL server for the tests: Debian's binaries, ``initdb`` + ``pg_ctl``, on
127.0.0.1, ``ssl=on`` with a certificate from a test CA (trustme), TLS 1.2 minimum,
``scram-sha-256`` over ``hostssl`` only, ``log_statement=all`` into a log the tests read.

Run as root, the server runs as the ``postgres`` user (it refuses root). Roles get pre-hashed
SCRAM verifiers, so no password ever reaches the server's log. Missing binaries are a loud
failure naming the fix (``make setup`` installs them), never a skip.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trustme

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def pg_bin(name: str) -> str:
    for d in PG_BIN_DIRS:
        if (d / name).is_file():
            return str(d / name)
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"PostgreSQL's {name} is not installed: run `make setup` (it installs Debian's postgresql)")


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` (RFC 5802/7677), as PostgreSQL stores it."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    root: Path
    ca: trustme.CA
    ca_pem: Path
    port: int = 0
    admin_password: str = field(default_factory=lambda: "admin-" + secrets.token_hex(12))
    user: str = "portshift_test"
    password: str = field(default_factory=lambda: "CANARYPGPASS-" + secrets.token_hex(8))
    settings: dict[str, str] = field(default_factory=dict)
    _count: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _as_owner(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120, **kw)  # type: ignore[call-overload]

    def init(
        self,
        *,
        ssl_on: bool = True,
        tls11_only: bool = False,
        socket: bool = False,
        cert_hosts: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pw"
        pwfile.write_text(self.admin_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        r = self._as_owner(
            [pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
        )  # fmt: skip
        pwfile.unlink()
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stderr[-2000:]}")
        leaf = self.ca.issue_cert(*cert_hosts)
        (self.data / "server.crt").write_bytes(leaf.cert_chain_pems[0].bytes())
        key = self.data / "server.key"
        key.write_bytes(leaf.private_key_pem.bytes())
        key.chmod(0o600)
        if os.geteuid() == 0:
            for p in (key, self.data / "server.crt"):
                shutil.chown(p, "postgres", "postgres")
        hba = ("hostssl" if ssl_on else "host") + " all all 127.0.0.1/32 scram-sha-256\n"
        if socket:  # the documented exception: a Unix socket on the same machine
            hba += "local all all scram-sha-256\n"
        (self.data / "pg_hba.conf").write_text(hba)
        self.port = self.port or _free_port()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'" if socket else "''",
            "ssl": "on" if ssl_on else "off",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
            "ssl_min_protocol_version": "'TLSv1'" if tls11_only else "'TLSv1.2'",
            "log_statement": "'all'",
            "log_connections": "on",
            "log_disconnections": "on",
            "fsync": "off",  # the tests kill portshift, not the machine; commits stay synchronous
            "full_page_writes": "off",
            "max_connections": "60",
            "shared_buffers": "16MB",
        }
        if tls11_only:
            conf["ssl_max_protocol_version"] = "'TLSv1.1'"
            conf["ssl_ciphers"] = "'ALL:@SECLEVEL=0'"
        conf.update(self.settings)
        with (self.data / "postgresql.conf").open("a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def start(self) -> None:
        r = self._as_owner([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start"])
        if r.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stdout[-1000:]} {r.stderr[-1000:]} {log}")

    def stop(self, mode: str = "fast") -> None:
        self._as_owner([pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # --- connections ---------------------------------------------------------------------------
    def url(self, dbname: str = "postgres", user: str | None = None, **query: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in {"sslrootcert": str(self.ca_pem), **query}.items())
        return f"postgresql://{user or self.user}@127.0.0.1:{self.port}/{dbname}?{q}"

    def admin(self, dbname: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, dbname=dbname, user="postgres", password=self.admin_password,
            sslmode="verify-full", sslrootcert=str(self.ca_pem), autocommit=True,
        )  # fmt: skip

    def create_role(self) -> None:
        with self.admin() as c:
            c.execute(f"create role {self.user} login password '{scram_verifier(self.password)}'")

    def new_database(self) -> str:
        """A fresh database owned by the test role (one per test)."""
        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with self.admin() as c:
            c.execute(f"create database {name} owner {self.user}")
        return name

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(ca: trustme.CA, ca_pem: Path, settings: dict[str, str] | None = None, **init: object) -> PgServer:
    """A started server (``settings``: postgresql.conf values over the tests' defaults)."""
    root = Path(tempfile.mkdtemp(prefix="portshift-pg-"))
    root.chmod(0o755)
    server = PgServer(root=root, ca=ca, ca_pem=ca_pem, settings=dict(settings or {}))
    try:
        server.init(**init)  # type: ignore[arg-type]
        server.start()
        if init.get("ssl_on", True) and not init.get("tls11_only"):
            server.create_role()
    except BaseException:
        server.cleanup()
        raise
    return server
