"""The client builds some request URLs itself (to spare httpx work per call): they must be byte
for byte the URLs httpx builds from ``params``, and the simulator must answer them as before."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
from portshift_source_chorus.options import DEFAULT_FIELDS
from portshift_source_chorus.simulator import ChorusSimulator

from .conftest import WINDOW, make_source


def _spy(source: Any) -> list[httpx.URL]:
    """The URLs the client sends, through httpx or its own API connections (media.py)."""
    sent: list[httpx.URL] = []
    real, real_api, real_path = source.client.http.send, source.client.api.get, source.client.api.get_path

    def send(request: httpx.Request, **kw: Any) -> httpx.Response:
        sent.append(request.url)
        return real(request, **kw)

    def get(url: httpx.URL, headers: dict[str, str]) -> Any:
        sent.append(url)
        return real_api(url, headers)

    def get_path(target: str, url: str, headers: dict[str, str]) -> Any:
        parsed = httpx.URL(url)
        assert parsed.raw_path.decode("ascii") == target  # what is sent is what httpx would send
        sent.append(parsed)
        return real_path(target, url, headers)

    source.client.http.send = send
    source.client.api.get = get
    source.client.api.get_path = get_path
    return sent


def test_a_url_the_client_built_is_sent_unparsed_only_when_httpx_would_send_it_unchanged() -> None:
    from portshift_source_chorus.client import AS_SENT

    for c in map(chr, range(32, 127)):
        target = f"/a{c}b?x{c}y"
        unchanged = c != "#" and httpx.URL("https://h" + target).raw_path.decode("ascii") == target
        assert bool(AS_SENT.fullmatch(target)) == unchanged, repr(c)
    assert not AS_SENT.fullmatch("/é") and not AS_SENT.fullmatch("/a\x7f")


def test_conversation_url_is_what_httpx_builds_from_params(sim: ChorusSimulator) -> None:
    odd = ["name", "a b", "c&d=e", "é+%41", "/?#", "recording.utterances"]
    for fields in (list(DEFAULT_FIELDS), odd):
        source = make_source(sim, conversation_fields=fields)
        try:
            rec = next(r for r in source.recordings(WINDOW) if r.skipped is None and not sim.tenant.by_id[r.id].hidden)
            sent = _spy(source)
            body, _ = source.client.conversation(rec.id)
            path = f"/api/v1/conversations/{urllib.parse.quote(rec.id, safe='')}"
            expected = source.client.http.build_request(
                "GET", sim.base_url + path, params={"fields": ",".join(fields), "skip_summary_generation": "true"}
            ).url
            assert len(sent) == 1
            assert str(sent[0]) == str(expected)
            assert sent[0].raw_path == expected.raw_path
            assert sent[0].params == httpx.QueryParams({"fields": ",".join(fields), "skip_summary_generation": "true"})
            assert body == sim.tenant.conversation_bytes(rec.id, set(fields))
        finally:
            source.close()
