"""The token and the media links: where they may go, and where they must never appear."""

from __future__ import annotations

import logging
import pickle
import traceback

import pytest
from portshift_source_chorus import ChorusOptions, ChorusSource
from portshift_source_chorus.simulator import ChorusSimulator, Fault, Faults, MediaConfig
from portshift_source_chorus.simulator.certs import make_certs

from portshift.errors import AuthError, ConfigError, FatalError, PortshiftError, SourceError
from portshift.secrets import Secret
from portshift.testing import PlainListener, renderings

from .conftest import CANARY, WINDOW, check_export, export_all, make_source, options

PLAIN = "http" + "://"


# --- https only, trust only what is given ---------------------------------------------------------
def test_a_plain_http_base_url_is_a_config_error_before_any_connection(plain: PlainListener) -> None:
    with pytest.raises(ConfigError) as e:
        ChorusOptions(base_url=f"{PLAIN}127.0.0.1:{plain.port}", token=Secret(CANARY, "token"))
    assert "https" in str(e.value)
    assert plain.connections == 0


@pytest.mark.parametrize("bad", ["https://", "https://user:pw@chorus.example", "https://chorus.example/?x=1"])
def test_other_bad_base_urls(bad: str) -> None:
    with pytest.raises((ConfigError, ValueError)):
        ChorusOptions(base_url=bad, token=Secret(CANARY, "token"))


def test_the_simulator_ca_is_never_trusted_implicitly(sim: ChorusSimulator, tmp_path: object) -> None:
    source = ChorusSource(options(sim, ca_bundle=None))
    with pytest.raises(SourceError) as e:
        list(source.recordings(WINDOW))
    assert "TLS certificate verification failed" in str(e.value) and not e.value.retryable
    assert sim.stats.total("api") == 0


def test_another_ca_is_refused(sim: ChorusSimulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other-ca.pem"
    other.write_bytes(make_certs().ca_pem)
    with pytest.raises(FatalError) as e:  # check(): the run stops before listing
        ChorusSource(options(sim, ca_bundle=other)).check()
    assert "TLS certificate verification failed" in str(e.value)
    assert sim.stats.total("api") == 0


def test_a_missing_ca_bundle_is_a_config_error(sim: ChorusSimulator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        ChorusSource(options(sim, ca_bundle=tmp_path / "missing.pem"))


# --- where the token goes --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["redirect", "json"])
def test_the_token_never_reaches_the_media_host(sim: ChorusSimulator, mode: str) -> None:
    sim.configure(media=MediaConfig(mode=mode))
    got = export_all(make_source(sim))
    check_export(sim, got)
    media = sim.stats.authorization["media"]
    assert len(media) == len(got.files)
    assert media == [None] * len(media)
    api = sim.stats.authorization["api"]
    assert api and all(v == CANARY for v in api)


def test_a_link_to_another_host_name_on_the_same_server_gets_no_token(sim: ChorusSimulator) -> None:
    """Same address and port as the API, another host name: another origin, so no token."""
    sim.configure(media=MediaConfig(host="localhost", rewrite_link=lambda u: u.replace(f":{sim.media_port}/", f":{sim.port}/")))
    source = make_source(sim, artifacts=["media"], retries=0)
    rec = next(r for r in source.recordings(WINDOW) if r.skipped is None and not sim.tenant.by_id[r.id].hidden)
    (media,) = source.artifacts(rec)
    with pytest.raises(SourceError) as e:
        media.open()
    assert "media host answered HTTP 404" in str(e.value)
    landed = [s for s in sim.stats.seen if s[2].startswith("/media/")]
    assert landed and all(host == f"localhost:{sim.port}" and auth is None for _, host, _, auth in landed)
    assert str(sim.port) in str(e.value) and "/media/" not in str(e.value)


def test_a_redirect_to_plain_http_is_refused(sim: ChorusSimulator, plain: PlainListener) -> None:
    def downgrade(link: str) -> str:
        return PLAIN + link.split("://", 1)[1].replace(str(sim.media_port), str(plain.port))

    sim.configure(media=MediaConfig(rewrite_link=downgrade))
    source = make_source(sim, artifacts=["media"])
    rec = next(r for r in source.recordings(WINDOW) if r.skipped is None and not sim.tenant.by_id[r.id].hidden)
    (media,) = source.artifacts(rec)
    with pytest.raises(SourceError) as e:
        media.open()
    assert "not https" in str(e.value) and not e.value.retryable
    assert plain.connections == 0


# --- canaries ------------------------------------------------------------------------------------
def _renderings(e: BaseException) -> str:
    out = renderings(e)
    # every frame's locals, below the test's own frame (which holds the links it greps for)
    tb = e.__traceback__.tb_next if e.__traceback__ else None
    out.append("".join(traceback.TracebackException(type(e), e, tb, capture_locals=True).format()))
    return "\n".join(out)


def test_no_token_or_link_in_logs_errors_or_reprs(sim: ChorusSimulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.DEBUG)
    sim.configure(
        faults=Faults(
            throttle=Fault(ratio=0.2, times=1),
            retry_after="garbage",
            server_error=Fault(ratio=0.2, times=1),
            truncate=Fault(ratio=0.2, times=1),
            expired_link=Fault(ratio=0.5, times=1, on=("media_api",)),
        )
    )
    texts: list[str] = []
    source = make_source(sim, retries=6)
    texts += [repr(source), repr(vars(source)), repr(vars(source.client)), repr(source.options), str(source.options)]
    texts += [source.options.model_dump_json(), repr(source.options.model_dump()), source.location()]
    got = export_all(source)
    check_export(sim, got)
    links = list(sim.stats.links)
    # errors of every kind, rendered every way (locals included)
    errors: list[BaseException] = []
    rec = next(iter(source.recordings(WINDOW)))
    for build in (
        lambda: ChorusSource(options(sim, token=Secret(CANARY + "-wrong", "token"))).check(),
        lambda: make_source(sim, strict=True).artifacts(
            next(r for r in source.recordings(WINDOW) if r.skipped is None and sim.tenant.by_id[r.id].hidden)
        ),
    ):
        try:
            build()
        except PortshiftError as e:
            errors.append(e)
    links += sim.stats.links
    sim.configure(faults=Faults(expired_link=Fault(ratio=1.0, times=-1, on=("media_api",))))
    try:
        make_source(sim, artifacts=["media"], link_refreshes=1).artifacts(rec)[0].open()
    except PortshiftError as e:
        errors.append(e)
    links += sim.stats.links
    sim.configure(faults=Faults(truncate=Fault(ratio=1.0, times=-1, on=("media",))))
    try:
        b"".join(make_source(sim, artifacts=["media"], retries=1).artifacts(rec)[0].open().chunks)
    except PortshiftError as e:
        errors.append(e)
    assert [type(e) for e in errors] == [AuthError, SourceError, SourceError, SourceError]
    texts += [_renderings(e) for e in errors]
    texts.append(caplog.text)
    texts += [repr(r.__dict__) for r in caplog.records]
    links += sim.stats.links
    assert len(links) > 30
    everything = "\n".join(texts)
    assert CANARY not in everything
    for link in links:
        assert link not in everything, _debug_where(everything, link)
        assert link.split("sig=")[1] not in everything
    assert "retry" in caplog.text  # the log did see the faults
    assert logging.getLogger("httpx").level == logging.WARNING  # the plugin pinned it again


def test_options_cannot_be_pickled() -> None:
    opts = ChorusOptions(token=Secret(CANARY, "token"))
    with pytest.raises(TypeError):
        pickle.dumps(opts)


def test_the_token_comes_from_the_environment_or_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PORTSHIFT_CHORUS_TOKEN", CANARY)
    assert ChorusOptions().token == Secret(CANARY)
    monkeypatch.delenv("PORTSHIFT_CHORUS_TOKEN")
    with pytest.raises(ConfigError) as e:
        ChorusOptions()
    assert "PORTSHIFT_CHORUS_TOKEN" in str(e.value)
    f = tmp_path / "token"
    f.write_text(CANARY + "\n")
    assert ChorusOptions(token_file=f).token == Secret(CANARY)
    with pytest.raises(ConfigError) as e:
        ChorusOptions(token=CANARY)  # never from the job file
    assert CANARY not in str(e.value)


def _debug_where(everything: str, link: str) -> str:  # pragma: no cover - debugging aid
    i = everything.find(link)
    return everything[max(0, i - 600) : i + 200]
