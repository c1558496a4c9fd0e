"""TLS only: 1.2 and 1.3 accepted, 1.1 and 1.0 refused, no plain-HTTP listener at all."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trustme

from .conftest import Certs, Server


def handshake(server: Server, ctx: ssl.SSLContext) -> str | None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()


def old_client(certs: Certs, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(certs.ca_pem))
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer old protocols at all
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = version
    return ctx


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_3_and_1_2_are_accepted(server: Server, certs: Certs) -> None:
    assert handshake(server, certs.client_context()) == "TLSv1.3"
    assert handshake(server, certs.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
    # the same permissive client that offers TLS 1.0-1.2 gets 1.2: it is the server that refuses below
    assert handshake(server, old_client(certs, ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"


def legacy_server_version(certs: Certs, client: ssl.SSLContext) -> str | None:
    """Control: a loopback TLS server that still allows TLS 1.0/1.1 (asyncio-free, one handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.load_cert_chain(str(certs.cert), str(certs.key))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                version = tls.version()
        t.join(10)
    return version


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1])
def test_tls_1_1_and_1_0_are_refused(server: Server, certs: Certs, version: ssl.TLSVersion) -> None:
    client = old_client(certs, version)
    # the control: this client does complete a TLS 1.1/1.0 handshake with a server that allows it...
    assert legacy_server_version(certs, client) == {ssl.TLSVersion.TLSv1_1: "TLSv1.1", ssl.TLSVersion.TLSv1: "TLSv1"}[version]
    # ...and portshift serve refuses it
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(server, client)


def test_plain_http_gets_no_http_answer(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not data.startswith(b"HTTP/"), data[:80]
    assert b"running_jobs" not in data


def _listening_tcp_ports(pid: int) -> list[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                ports.append(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_only_listener_is_the_tls_port_on_loopback(server: Server) -> None:
    assert _listening_tcp_ports(server.pid) == [server.port]


def test_serve_refuses_to_start_without_a_certificate_or_with_a_wrong_key(certs: Certs, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_")}
    base = [sys.executable, "-m", "portshift", "serve", "--port", "1", "--data-dir", str(tmp_path / "d")]
    missing = subprocess.run(base + ["--cert", str(certs.cert)], capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2 and "--key" in missing.stderr
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    wrong = subprocess.run(
        base + ["--cert", str(certs.cert), "--key", str(tmp_path / "other-key.pem")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert wrong.returncode == 2, wrong.stderr
    assert "not a matching PEM certificate and private key" in wrong.stderr
    assert "PRIVATE KEY" not in wrong.stderr
