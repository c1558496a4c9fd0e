"""Issue 23: what an operator sees. Listing progress names the slice and the count; a connection
that fails says why (refused, DNS, timeout, TLS) and which option to check; ``check`` on an
unreachable host answers at once; a 403 from something that is not Chorus says so."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from portshift_source_chorus import ChorusSource
from portshift_source_chorus.diagnostics import connection_failure
from portshift_source_chorus.simulator import Behaviour, ChorusSimulator, Paging

from portshift import AuthError, FatalError, SourceError

from .conftest import WINDOW, make_source, options


def test_listing_progress_names_the_slice_and_the_count(sim: ChorusSimulator) -> None:
    sim.configure(paging=Paging(page_sizes=(5,)))
    source = make_source(sim, window_days=30)
    seen: list[str] = []
    source.on_listing = seen.append
    total = 0
    for _ in source.recordings(WINDOW):
        total += 1
    assert len(seen) == sim.stats.requests["api:list"]  # one line per page
    assert seen[0] == "calls 2024-03-02 00:00 .. 2024-04-01 00:00 (meeting), page 1: 0 listed"
    counts = [int(s.rsplit(": ", 1)[1].split()[0]) for s in seen]
    assert counts == sorted(counts) and 0 < counts[-1] <= total
    assert any("(dialer)" in s for s in seen) and any("page 2" in s for s in seen)


@pytest.fixture
def refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()  # nothing listens there now
    return port


def test_check_on_a_refused_port_fails_at_once_naming_the_reason(sim: ChorusSimulator, refused_port: int) -> None:
    source = ChorusSource(options(sim, base_url=f"https://127.0.0.1:{refused_port}", retries=5, backoff_base=1))
    t0 = time.monotonic()
    with pytest.raises(FatalError) as e:  # check(): the run stops before listing, one line
        source.check()
    assert time.monotonic() - t0 < 1.0  # one attempt, no backoff
    text = str(e.value)
    assert f"connection to 127.0.0.1:{refused_port} refused" in text and "gave up after 1 attempt:" in text
    assert "base_url" in (e.value.hint or "")


def test_a_refused_connection_while_exporting_is_retried_and_named(sim: ChorusSimulator, refused_port: int) -> None:
    source = make_source(sim, base_url=f"https://127.0.0.1:{refused_port}", retries=2)
    with pytest.raises(SourceError) as e:
        source.client.list_page({"engagement_type": "meeting"})
    assert "gave up after 3 attempts: connection to" in str(e.value) and "refused" in str(e.value)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts TCP connections and never says a word (no TLS handshake): a black hole."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(srv.getsockname()[1])
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_check_on_a_silent_host_times_out_in_the_connect_timeout(sim: ChorusSimulator, silent_port: int) -> None:
    source = ChorusSource(options(sim, base_url=f"https://127.0.0.1:{silent_port}", connect_timeout=1, read_timeout=30))
    t0 = time.monotonic()
    with pytest.raises(FatalError) as e:  # check(): the run stops before listing, one line
        source.check()
    took = time.monotonic() - t0
    assert 0.9 < took < 3.0, took
    assert f"timed out connecting to 127.0.0.1:{silent_port}" in str(e.value)
    assert "base_url" in (e.value.hint or "")


def test_a_dns_failure_is_named_as_such() -> None:
    """The OS reason under httpx's exception decides the message (a real lookup would leave loopback)."""
    err = httpx.ConnectError("[Errno -2] Name or service not known")
    err.__cause__ = socket.gaierror(-2, "Name or service not known")
    reason, hint = connection_failure(err, "chorus.example:443")
    assert reason == "DNS lookup of chorus.example:443 failed (Name or service not known)"
    assert "base_url" in hint


def test_a_403_from_something_that_is_not_chorus_says_so(sim: ChorusSimulator) -> None:
    sim.configure(behaviour=Behaviour(foreign_403=True))
    source = ChorusSource(options(sim))
    with pytest.raises(FatalError) as e:  # check(): the run stops before listing, one line
        source.check()
    assert not isinstance(e.value, AuthError)
    assert "does not come from the Chorus API" in str(e.value) and "token" not in str(e.value)
    assert "base_url" in (e.value.hint or "")


def test_a_403_from_chorus_still_names_the_token(sim: ChorusSimulator) -> None:
    """The control: the same status with Chorus's own JSON body is about the token's permission."""
    sim.configure(behaviour=Behaviour(listing_forbidden=True))
    with pytest.raises(AuthError) as e:
        ChorusSource(options(sim)).check()
    assert "the token may not list engagements: API may not be called using this token." in str(e.value)
    assert "roles & permissions" in (e.value.hint or "")
