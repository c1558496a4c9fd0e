"""A real PostgreSQL server with TLS for the service's tests (the core tests' tests/pg_server.py,
loaded from the repository), and a fresh database per test owned by a role with CREATEROLE, as
docs/serve.md asks of the service's own role."""

from __future__ import annotations

import importlib.util
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from portshift.testing import LocalCA


def _pg_server_module() -> Any:
    path = Path(__file__).resolve().parents[3] / "tests" / "pg_server.py"
    spec = importlib.util.spec_from_file_location("portshift_core_tests_pg_server", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pg = _pg_server_module()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    local = LocalCA.create(tmp_path_factory.mktemp("pg-ca"))
    server = pg.start_server(local.ca, local.ca_pem)
    try:
        yield server
    finally:
        server.cleanup()


@dataclass
class ServiceDatabase:
    server: Any
    dbname: str
    role: str
    password: str

    @property
    def url(self) -> str:
        return self.server.url(self.dbname, user=self.role)

    def admin(self) -> Any:
        return self.server.admin(self.dbname)

    def options(self, tmp_path: Path) -> Any:
        from portshift_server.service_store import DatabaseOptions

        pw = tmp_path / f"{self.role}.pw"
        pw.write_text(self.password + "\n")
        pw.chmod(0o600)
        return DatabaseOptions(self.url, pw, None)


@pytest.fixture
def service_database(pg_server: Any) -> ServiceDatabase:
    """A new database owned by a new role with LOGIN CREATEROLE (the service's role)."""
    role = "svc_" + secrets.token_hex(4)
    password = "CANARYSVCPASS-" + secrets.token_hex(8)
    dbname = "sdb_" + secrets.token_hex(4)
    with pg_server.admin() as c:
        c.execute(f"create role {role} login createrole password '{pg.scram_verifier(password)}'")
        c.execute(f"create database {dbname} owner {role}")
    return ServiceDatabase(pg_server, dbname, role, password)
