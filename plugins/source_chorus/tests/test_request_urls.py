"""The client builds some request URLs itself (to spare httpx work per call): they must be byte
for byte the URLs httpx builds from ``params``, and the simulator must answer them as before."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
from portshift_source_chorus.options import DEFAULT_FIELDS
from portshift_source_chorus.simulator import ChorusSimulator

from .conftest import WINDOW, make_source


def _spy(source: Any) -> list[httpx.Request]:
    sent: list[httpx.Request] = []
    real = source.client.http.send

    def send(request: httpx.Request, **kw: Any) -> httpx.Response:
        sent.append(request)
        return real(request, **kw)

    source.client.http.send = send
    return sent


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
            assert str(sent[0].url) == str(expected)
            assert sent[0].url.raw_path == expected.raw_path
            assert sent[0].url.params == httpx.QueryParams({"fields": ",".join(fields), "skip_summary_generation": "true"})
            assert body == sim.tenant.conversation_bytes(rec.id, set(fields))
        finally:
            source.close()
