"""Shared fixtures of the core tests: a throw-away CA, real TLS and plain listeners on 127.0.0.1
(the kit's, from portshift.testing), canaries, and a guard that puts the logging configuration
back after a test changes it.

Nothing here is autouse: a test asks for what it needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from portshift.testing import LocalCA, PlainListener, Request, TLSServer, http_response

from .pg_server import PgServer

if TYPE_CHECKING:
    from portshift.state import State


_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID")  #: the same in every xdist worker of one run
_made: dict[str, int] = {}


def make_canary(tag: str = "") -> str:
    """A unique, greppable secret stand-in (long enough for every mask variant). Under
    pytest-xdist the n-th canary of a tag is the same in every worker of one run (they collect the
    same test ids), and different in every run."""
    if _RUN is None:
        return f"CANARY{tag}-{secrets.token_hex(8)}"
    n = _made[tag] = _made.get(tag, 0) + 1
    return f"CANARY{tag}-{hashlib.sha256(f'{_RUN}:{tag}:{n}'.encode()).hexdigest()[:16]}"


@pytest.fixture
def canary() -> str:
    return make_canary()


# --- certificates and listeners: the kit's (portshift.testing) ----------------------------------
TLSMaterial = LocalCA  #: the name these tests knew it by


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def plain_listener() -> Iterator[PlainListener]:
    with PlainListener() as listener:
        yield listener


def _answer(request: Request) -> bytes:
    """``/redirect?to=URL`` answers 302 to URL; anything else 200 ``hello over tls``."""
    if request.path == "/redirect":
        target = urllib.parse.parse_qs(urllib.parse.urlsplit(request.target).query)["to"][0]
        return http_response(302, headers={"Location": target})
    return http_response(200, b"hello over tls")


HTTPSServer = TLSServer


@pytest.fixture
def https_server_factory(tls_material: LocalCA) -> Iterator[Callable[..., TLSServer]]:
    started: list[TLSServer] = []

    def start(*, tls11_only: bool = False) -> TLSServer:
        server = TLSServer(tls_material.server_context(tls11_only=tls11_only), _answer)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()


@pytest.fixture
def https_server(https_server_factory: Callable[..., TLSServer]) -> TLSServer:
    return https_server_factory()


# --- logging guard ----------------------------------------------------------------------------
@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo configure_logging(): root handlers and level, every named logger's level."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    raise_exc = logging.raiseExceptions
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
        logging.raiseExceptions = raise_exc
        for name, lg in list(logging.root.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))


# --- the job state on both backends ------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server(tls_material: TLSMaterial) -> Iterator[PgServer]:
    """A real PostgreSQL server for the whole session (see tests/pg_server.py)."""
    from .pg_server import start_server

    server = start_server(tls_material.ca, tls_material.ca_pem)
    try:
        yield server
    finally:
        server.cleanup()


@dataclass
class StateBackend:
    """Where a test keeps its job state: a SQLite file or a fresh PostgreSQL database."""

    kind: str  #: "sqlite" or "postgres"
    target: str  #: a path, or a URL (no password; the test CA as sslrootcert=)
    password: str | None = None
    server: PgServer | None = None
    dbname: str = ""

    def open(self, create: bool = True) -> State:
        from portshift.secrets import Secret
        from portshift.state import open_state

        return open_state(self.target, create=create, password=Secret(self.password, "password") if self.password else None)

    def env(self) -> dict[str, str]:
        """What a `portshift` subprocess needs besides `--state TARGET`."""
        return {"PORTSHIFT_STATE_PASSWORD": self.password} if self.password else {}

    def __str__(self) -> str:
        return self.target


@pytest.fixture(params=["sqlite", "postgres"])
def state_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StateBackend:
    """The same test against both backends: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return StateBackend("sqlite", str(tmp_path / "state.db"))
    server: PgServer = request.getfixturevalue("pg_server")
    db = server.new_database()
    return StateBackend("postgres", server.url(db), server.password, server, db)
